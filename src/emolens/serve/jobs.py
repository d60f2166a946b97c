"""Bounded background queue for video jobs; every file lives under ``data_dir/jobs/<uuid>/``."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """Too many video jobs waiting."""


@dataclass
class Job:
    id: str
    status: str = "queued"  # queued | running | done | failed
    progress: float = 0.0
    frames_done: int = 0
    frames_total: int | None = None
    error: str | None = None
    summary: dict | None = field(default=None, repr=False)
    created: float = field(default_factory=time.time)

    def public(self) -> dict:
        d = asdict(self)
        d["progress"] = round(d["progress"], 4)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Job:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def valid_job_id(job_id: str) -> bool:
    """Only canonical UUID4 hex strings name jobs, so a job ID can never walk out of the jobs folder."""
    try:
        return uuid.UUID(hex=job_id).hex == job_id
    except ValueError:
        return False


class JobQueue:
    """One worker thread and at most ``max_queued`` waiting jobs; ``process`` enforces its own time limit.

    Each job's state is also written to ``<job folder>/job.json`` as it changes, so every server worker
    process (``emolens serve --workers N``) can answer for a job another one runs.
    """

    def __init__(self, root: Path, process: Callable[[Job, Path], dict], max_queued: int = 4) -> None:
        self.root = root / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = process
        self.jobs: dict[str, Job] = {}
        self._q: queue.Queue[str] = queue.Queue(maxsize=max_queued)
        self._worker = threading.Thread(target=self._run, daemon=True, name="emolens-jobs")
        self._worker.start()

    def folder(self, job_id: str) -> Path:
        if not valid_job_id(job_id):
            raise KeyError(job_id)
        return self.root / job_id

    def new_job_dir(self) -> tuple[Job, Path]:
        job = Job(uuid.uuid4().hex)
        d = self.root / job.id
        d.mkdir()
        return job, d

    def submit(self, job: Job) -> None:
        try:
            self._q.put_nowait(job.id)
        except queue.Full:
            raise QueueFull(f"{self._q.maxsize} video jobs already waiting; try again later") from None
        self.jobs[job.id] = job
        self.save(job)

    def save(self, job: Job) -> None:
        """Write the job's state to its folder atomically (read by the other worker processes)."""
        d = self.root / job.id
        if d.is_dir():
            tmp = d / f".job.json.{threading.get_ident()}"
            tmp.write_text(json.dumps(job.public()))
            tmp.replace(d / "job.json")

    def get(self, job_id: str) -> Job:
        if not valid_job_id(job_id):
            raise KeyError(job_id)
        if job_id in self.jobs:
            return self.jobs[job_id]
        state = self.root / job_id / "job.json"  # a job of another worker process
        if not state.is_file():
            raise KeyError(job_id)
        return Job.from_dict(json.loads(state.read_text()))

    def _run(self) -> None:
        while True:
            job = self.jobs.get(self._q.get())
            if job is None:
                continue
            job.status = "running"
            self.save(job)
            d = self.root / job.id
            try:
                job.summary = self.process(job, d)
                (d / "summary.json").write_text(json.dumps(job.summary, indent=1))
                job.status, job.progress = "done", 1.0
            except Exception as e:  # noqa: BLE001 - any failure is reported on the job
                log.warning("job %s failed: %s", job.id, e)
                job.status, job.error = "failed", str(e)
            self.save(job)
