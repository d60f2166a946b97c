"""Durable video jobs: state in SQLite under ``data_dir``, files under ``data_dir/jobs/<uuid>/``.

Every job's state is written to ``data_dir/jobs.db`` as it changes (SQLite in WAL mode, shared by all server
worker processes), so any worker answers for any job, and a server that is killed and restarted on the same
``--data-dir`` finds its jobs again: a job that was running is marked ``failed`` (``interrupted``) with its
partial results still downloadable, a job that was waiting runs. Finished jobs are deleted after
``keep_hours``, and the oldest first whenever the jobs take more than ``max_disk_gb``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..runtime import pid_alive

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the server stopped while this job ran; the results made until then can be downloaded"


class QueueFull(RuntimeError):
    """Too many video jobs waiting."""


class DiskFull(RuntimeError):
    """The jobs already take the disk quota."""


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
    finished: float | None = None

    def public(self) -> dict:
        d = asdict(self)
        d["progress"] = round(d["progress"], 4)
        return d


def valid_job_id(job_id: str) -> bool:
    """Only canonical UUID4 hex strings name jobs, so a job ID can never walk out of the jobs folder."""
    try:
        return uuid.UUID(hex=job_id).hex == job_id
    except ValueError:
        return False


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux ``/proc``), or ``None`` where unknown."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22, counted after the command name


def _this_process() -> str:
    """This server process as a job owner: host, PID and the process's start time (or a random token where the
    start time is unknown), so a later process that gets the same PID (a container restart, where the server is
    PID 1) is not taken for this one."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or 'u' + uuid.uuid4().hex[:12]}"


def _alive(owner: str, me: str | None = None) -> bool:
    """Whether the server process that owns a job still runs (a process on another host counts as alive)."""
    host, pid, started = ([*owner.split(":"), "", ""])[:3]  # "host:pid" alone: start time unknown
    if host != socket.gethostname():
        return True
    if me is not None and owner != me and pid == str(os.getpid()):
        return False  # our PID, another start: the process that wrote it is gone
    if not pid.isdigit() or not pid_alive(int(pid)):
        return False
    if started and not started.startswith("u"):
        return _start_time(int(pid)) in (None, started)  # a reused PID has another start time
    return True


class JobStore:
    """Job rows in SQLite; one connection per thread, WAL so readers never wait for the writer."""

    COLUMNS = ("id", "status", "progress", "frames_done", "frames_total", "error", "summary", "created", "finished")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, progress REAL,"
                " frames_done INTEGER, frames_total INTEGER, error TEXT, summary TEXT, created REAL, finished REAL,"
                " owner TEXT)"
            )

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def put(self, job: Job, owner: str) -> None:
        row = asdict(job)
        row["summary"] = json.dumps(row["summary"]) if row["summary"] is not None else None
        with self._db() as db:
            db.execute(
                f"INSERT OR REPLACE INTO jobs ({', '.join(self.COLUMNS)}, owner) VALUES ({', '.join('?' * 10)})",
                [row[c] for c in self.COLUMNS] + [owner],
            )

    def get(self, job_id: str) -> Job | None:
        r = self._db().execute(f"SELECT {', '.join(self.COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(r) if r else None

    def _job(self, r: tuple) -> Job:
        d = dict(zip(self.COLUMNS, r, strict=True))
        d["summary"] = json.loads(d["summary"]) if d["summary"] else None
        return Job(**d)

    def rows(self, where: str = "1", args: tuple = ()) -> list[tuple[Job, str]]:
        sql = f"SELECT {', '.join(self.COLUMNS)}, owner FROM jobs WHERE {where} ORDER BY created"
        return [(self._job(r[:-1]), r[-1]) for r in self._db().execute(sql, args).fetchall()]

    def claim(self, job_id: str, old_owner: str, new_owner: str) -> bool:
        """Take a job over from a dead owner; only one process wins."""
        with self._db() as db:
            cur = db.execute("UPDATE jobs SET owner = ? WHERE id = ? AND owner = ?", (new_owner, job_id, old_owner))
        return cur.rowcount == 1

    def delete(self, job_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))


class JobQueue:
    """One worker thread and at most ``max_queued`` waiting jobs; ``process`` enforces its own time limit.

    ``keep_hours``: finished jobs (and their files) are deleted this long after they end. ``max_disk_gb``:
    when the job folders take more, the oldest finished jobs go first, and new jobs are refused
    (:class:`DiskFull`) while that is not enough.
    """

    def __init__(
        self,
        root: Path,
        process: Callable[[Job, Path], dict],
        max_queued: int = 4,
        keep_hours: float = 24.0,
        max_disk_gb: float = 10.0,
        cleanup_every_s: float = 300.0,
    ) -> None:
        self.root = root / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(root / "jobs.db")
        self.process = process
        self.keep_s, self.max_bytes = keep_hours * 3600, int(max_disk_gb * 2**30)
        self.owner = _this_process()
        self.jobs: dict[str, Job] = {}  # jobs of this process while queued or running
        self._q: queue.Queue[str] = queue.Queue(maxsize=max_queued)
        self._lock = threading.Lock()
        self._reserve_lock = threading.Lock()
        self.reserved = 0  # bytes promised to uploads still streaming in (see reserve)
        self.recover()
        self.cleanup()
        threading.Thread(target=self._run, daemon=True, name="emolens-jobs").start()
        threading.Thread(target=self._janitor, args=(cleanup_every_s,), daemon=True, name="emolens-jobs-gc").start()

    # -- jobs -------------------------------------------------------------------------------------------------
    def folder(self, job_id: str) -> Path:
        if not valid_job_id(job_id):
            raise KeyError(job_id)
        return self.root / job_id

    def reserve(self, nbytes: int) -> None:
        """Promise ``nbytes`` of the quota to an upload before its body is read; :class:`DiskFull` if the jobs,
        the other uploads in flight and this one would pass it. :meth:`release` it when the upload is stored."""
        with self._reserve_lock:
            if self.disk_used() + self.reserved + nbytes > self.max_bytes:
                self.cleanup()
                if self.disk_used() + self.reserved + nbytes > self.max_bytes:
                    raise DiskFull(
                        f"the jobs and the uploads in progress would pass the {self.max_bytes / 2**30:g} GB disk quota"
                    )
            self.reserved += nbytes

    def release(self, nbytes: int) -> None:
        with self._reserve_lock:
            self.reserved = max(0, self.reserved - nbytes)

    def new_job_dir(self) -> tuple[Job, Path]:
        if self.disk_used() > self.max_bytes:
            self.cleanup()
            if self.disk_used() > self.max_bytes:
                raise DiskFull(f"the jobs already take more than the {self.max_bytes / 2**30:g} GB disk quota")
        job = Job(uuid.uuid4().hex)
        d = self.root / job.id
        d.mkdir()
        return job, d

    def submit(self, job: Job) -> None:
        self.jobs[job.id] = job  # before it is queued: the worker thread may take it at once
        try:
            self.save(job)
        except sqlite3.OperationalError as e:  # "database or disk is full": refused, nothing half-recorded
            self.jobs.pop(job.id, None)
            raise DiskFull(f"cannot record the job: {e}") from None
        try:
            self._q.put_nowait(job.id)
        except queue.Full:
            self.jobs.pop(job.id, None)
            self.store.delete(job.id)
            raise QueueFull(f"{self._q.maxsize} video jobs already waiting; try again later") from None

    def save(self, job: Job) -> None:
        """Write the job's state (read by the other worker processes, and after a restart)."""
        self.store.put(job, self.owner)

    def get(self, job_id: str) -> Job:
        if not valid_job_id(job_id):
            raise KeyError(job_id)
        job = self.jobs.get(job_id) or self.store.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def _run(self) -> None:
        """The worker thread: it outlives any error of one job, saving its state included (a full disk)."""
        while True:
            job = self.jobs.get(self._q.get())
            if job is None:
                continue
            try:
                self._run_one(job)
            except Exception as e:  # noqa: BLE001 - e.g. sqlite3 "database or disk is full" while saving state
                log.error("job %s: could not record its state: %s", job.id, e)
                job.status, job.error, job.finished = "failed", f"server error: {e}", time.time()
                try:
                    self.save(job)
                except Exception:  # noqa: BLE001 - still full: the in-memory state is all there is
                    pass
            finally:
                self.jobs.pop(job.id, None)

    def _run_one(self, job: Job) -> None:
        job.status = "running"
        self.save(job)
        try:
            job.summary = self.process(job, self.root / job.id)
            job.status, job.progress = "done", 1.0
        except Exception as e:  # noqa: BLE001 - any failure is reported on the job
            log.warning("job %s failed: %s", job.id, e)
            job.status, job.error = "failed", str(e).replace(f"{self.root / job.id}{os.sep}", "")
        job.finished = time.time()
        self.save(job)

    # -- restart and retention ----------------------------------------------------------------------------
    def recover(self) -> dict[str, int]:
        """Jobs left by a server process that is gone: running ones become ``failed`` (interrupted), waiting
        ones are taken over and queued again (or failed when the queue is full)."""
        n = {"interrupted": 0, "requeued": 0}
        for job, owner in self.store.rows("status IN ('queued', 'running')"):
            if owner == self.owner or _alive(owner, self.owner) or not self.store.claim(job.id, owner, self.owner):
                continue
            if job.status == "queued" and (self.root / job.id).is_dir():
                self.jobs[job.id] = job
                try:
                    self._q.put_nowait(job.id)
                    n["requeued"] += 1
                    continue
                except queue.Full:
                    self.jobs.pop(job.id, None)
            job.status, job.error, job.finished = "failed", INTERRUPTED, time.time()
            self.save(job)
            n["interrupted"] += 1
        if any(n.values()):
            log.warning("jobs of a stopped server: %(requeued)d queued again, %(interrupted)d interrupted", n)
        return n

    def disk_used(self) -> int:
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())

    def cleanup(self, now: float | None = None) -> list[str]:
        """Delete finished jobs older than ``keep_hours``, then the oldest finished ones while over the disk
        quota, and folders that no job owns (older than ``keep_hours``). Returns the deleted job IDs."""
        now = time.time() if now is None else now
        with self._lock:
            gone = []
            finished = self.store.rows("status IN ('done', 'failed')")
            finished.sort(key=lambda r: r[0].finished or r[0].created)
            for job, _ in finished:
                if now - (job.finished or job.created) > self.keep_s:
                    self._delete(job.id)
                    gone.append(job.id)
            used = self.disk_used()
            for job, _ in finished:
                if used <= self.max_bytes:
                    break
                if job.id in gone:
                    continue
                used -= sum(f.stat().st_size for f in (self.root / job.id).rglob("*") if f.is_file())
                self._delete(job.id)
                gone.append(job.id)
            known = {j.id for j, _ in self.store.rows()}
            for d in self.root.iterdir():
                if d.name not in known and now - d.stat().st_mtime > self.keep_s:
                    shutil.rmtree(d, ignore_errors=True)
        if gone:
            log.info("deleted %d finished job(s)", len(gone))
        return gone

    def _delete(self, job_id: str) -> None:
        shutil.rmtree(self.root / job_id, ignore_errors=True)
        self.store.delete(job_id)

    def _janitor(self, every_s: float) -> None:
        while True:
            time.sleep(every_s)
            try:
                self.cleanup()
            except Exception as e:  # noqa: BLE001 - retention must never take the server down
                log.warning("job cleanup failed: %s", e)
