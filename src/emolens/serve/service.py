"""What every route of the server shares: its settings, the model (loaded once), the detector behind a lock, the
video job queue, the work pool and the admission counters."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi import Request

from ..live.classifier import default_threads
from ..live.pipeline import Pipeline
from .jobs import Job, JobQueue
from .settings import ServeSettings
from .uploads import WorkPool


class Service:
    """The server's state, built once per worker process (``app.state.service``). Requests share one detector
    under :attr:`lock`; each video job has a detector of its own (detectors keep state)."""

    def __init__(self, s: ServeSettings) -> None:
        self.settings = s
        ps = s.pipeline
        # threads 0: chosen per batch, up to the cores shared out among the worker processes (at least 1 each)
        self.classifier = ps.classifier(max_threads=default_threads(s.workers))
        self.detector = ps.make_detector()
        self.lock = threading.Lock()
        self.work = WorkPool()  # decoding and inference off the event loop, at most WORK_SLOTS images at once
        self.admitted = 0  # predictions being uploaded, waiting or running
        self.streams = 0  # open live WebSockets
        self.jobs = JobQueue(
            s.data_dir, self.process_video, max_queued=s.max_queued_jobs, keep_hours=s.keep_hours,
            max_disk_gb=s.max_disk_gb,
        )  # fmt: skip

    def pipeline(self, smooth: str = "none") -> Pipeline:
        """A pipeline on the shared model and detector (its tracker and smoother its own)."""
        return self.settings.pipeline.build(self.classifier, self.detector, smooth)

    def process_video(self, job: Job, folder: Path) -> dict:
        """Run one queued video job (in the job thread) into ``folder``; its summary, or ``TimeoutError``."""
        s = self.settings
        video = next(folder.glob("input.*"))
        deadline = time.monotonic() + s.job_timeout_s
        saved = [0.0]

        def on_frame(done: int, total: int | None) -> None:
            job.frames_done, job.frames_total = done, total
            job.progress = min(0.99, done / total) if total else 0.0
            if time.monotonic() - saved[0] > 0.5:  # progress visible to the other worker processes
                saved[0] = time.monotonic()
                self.jobs.save(job)

        def past_deadline() -> str | None:
            return f"video processing passed the {s.job_timeout_s:g} s limit" if time.monotonic() > deadline else None

        pipe = s.pipeline.build(self.classifier, s.pipeline.make_detector())  # a detector of its own
        summary = pipe.run(
            str(video),
            output=folder / "annotated.mp4",
            rows=folder / "results.csv",
            progress=False,
            on_frame=on_frame,
            stop=past_deadline,
            name=video.name,  # no server paths in results.csv, the summary or messages
        )
        if summary["stopped"]:  # files are closed and kept; the job reports why it ended
            raise TimeoutError(summary["stop_reason"])
        return summary


def service(request: Request) -> Service:
    """The app's :class:`Service` (a FastAPI dependency)."""
    return request.app.state.service
