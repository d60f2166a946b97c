"""Run a batch: find the files, skip finished ones, analyse the rest in-process or on Ray, merge the tables.

Work is cut into *tasks*: one video each (tracks and smoothing run over the whole file, as in
``emolens live``), or a group of up to ``images_per_task`` images. Each finished task is stored atomically
(:class:`~emolens.batch.store.ResultStore`) as soon as it comes back.

On Ray, every worker is an actor that loads the model once and then takes task after task. A worker that
dies (killed process, lost node) is restarted by Ray; its task is given to a worker again, split into
single files if it held several, and a file that has taken a worker down ``max_attempts`` times is
recorded as failed instead of being tried forever.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from ..live.settings import PipelineSettings
from ..options import BATCH, check_fields
from .inputs import MediaFile, discover
from .store import ResultStore
from .worker import FileAnalyzer, FileResult, probe_frames

log = logging.getLogger(__name__)


@dataclass
class BatchOptions:
    """How a batch runs (the ``emolens batch`` flags; values checked against :data:`emolens.options.BATCH`)."""

    out: str | Path
    settings: PipelineSettings = field(default_factory=PipelineSettings)
    ray: str = "auto"  # auto: embedded local Ray if installed, else in-process | none | a cluster ADDRESS
    workers: int = 0  # Ray workers; 0: as many as the cluster's CPUs allow
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    every: int = 1
    whole_image: bool = False
    images_per_task: int = 32
    retry_failed: bool = False
    csv: bool = False
    max_attempts: int = 3
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self, BATCH)


class WorkerLost(RuntimeError):
    """A file whose worker kept dying (crash, kill, lost node) until the retries ran out."""


@dataclass
class Task:
    files: list[MediaFile]
    attempts: int = 0


def make_tasks(files: list[MediaFile], images_per_task: int) -> list[Task]:
    """One task per video; images in groups of ``images_per_task`` (in input order)."""
    tasks: list[Task] = []
    group: list[MediaFile] = []
    for f in files:
        if f.kind == "video":
            tasks.append(Task([f]))
            continue
        group.append(f)
        if len(group) >= max(1, images_per_task):
            tasks.append(Task(group))
            group = []
    if group:
        tasks.append(Task(group))
    return tasks


# -- executors: run tasks, yield (task, results or an exception) as they finish -----------------------------
class InProcessExecutor:
    """One analyser in this process."""

    name = "in-process"

    def __init__(self, opts: BatchOptions) -> None:
        self.analyzer = FileAnalyzer(opts.settings, opts.every, opts.whole_image)
        self.classes = self.analyzer.classes
        self.workers = 1

    def run(self, tasks: deque[Task]) -> Iterator[tuple[Task, list[FileResult] | BaseException]]:
        while tasks:
            task = tasks.popleft()
            yield task, self.analyzer.analyze(task.files)

    def close(self) -> None:
        pass


class _QuietTokenNotice(logging.Filter):
    """Drops Ray's notice that token authentication is on (its default for a local cluster), nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in record.getMessage()


class RayExecutor:
    """A pool of Ray actors, each holding a :class:`FileAnalyzer` (model loaded once per actor)."""

    def __init__(self, opts: BatchOptions) -> None:
        import ray

        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            # EMOLENS_* settings (cache, YuNet model path...) travel to the workers
            env = {k: v for k, v in os.environ.items() if k.startswith("EMOLENS_")}
            # Ray announces its default (token authentication on a new local cluster) with a warning on every run;
            # the default stays, the notice goes (setting RAY_AUTH_MODE=token instead stops the local start here)
            notices = logging.getLogger("ray._private.authentication.authentication_token_setup")
            if not any(isinstance(f, _QuietTokenNotice) for f in notices.filters):
                notices.addFilter(_QuietTokenNotice())
            ray.init(
                address=None if opts.ray == "auto" else opts.ray,
                runtime_env={"env_vars": env} if env else None,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=True,
            )
            self.started = True
        cpus = ray.cluster_resources().get("CPU", 1)
        self.workers = opts.workers or max(1, int(cpus // max(opts.cpus_per_worker, 1e-9)))
        self.name = f"ray ({'local' if opts.ray == 'auto' else opts.ray}, {self.workers} workers)"
        s = opts.settings  # each actor: threads for its CPUs, and the GPU share it reserved
        settings = replace(
            s,
            threads=s.threads or max(1, int(opts.cpus_per_worker)),
            device="cuda" if opts.gpus_per_worker and s.device == "cpu" else s.device,
        )
        actor = ray.remote(
            num_cpus=opts.cpus_per_worker, num_gpus=opts.gpus_per_worker or None, max_restarts=-1, max_task_retries=0
        )(FileAnalyzer)
        self.actors = [actor.remote(settings, opts.every, opts.whole_image) for _ in range(self.workers)]
        infos = ray.get([a.info.remote() for a in self.actors])
        self.classes = infos[0]["classes"]
        self.nodes = sorted({i["node"] for i in infos})
        self.max_attempts = opts.max_attempts

    def run(self, tasks: deque[Task]) -> Iterator[tuple[Task, list[FileResult] | BaseException]]:
        ray = self.ray
        busy: dict = {}  # object ref -> (actor, task)
        pings: dict = {}  # object ref -> actor: a restarting actor, asked whether it is back
        idle = list(self.actors)
        while tasks or busy:
            while tasks and idle:  # one task per actor at a time: a dead actor loses at most one task
                task, actor = tasks.popleft(), idle.pop()
                task.attempts += 1
                busy[actor.analyze.remote(task.files)] = (actor, task)
            ready, _ = ray.wait([*busy, *pings], num_returns=1)
            if ready[0] in pings:
                actor = pings.pop(ready[0])
                try:
                    ray.get(ready[0])
                    idle.append(actor)  # back (restarted, model loaded)
                except ray.exceptions.RayError:
                    time.sleep(0.5)
                    pings[actor.info.remote()] = actor
                continue
            actor, task = busy.pop(ready[0])
            try:
                out = ray.get(ready[0])
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                log.warning("a worker died on %d file(s) (%s); trying them again", len(task.files), type(e).__name__)
                # Ray restarts it; it takes work again once it answers (so retries never hit a restarting actor)
                pings[actor.info.remote()] = actor
                if len(task.files) > 1:  # find the file that takes the worker down: retry them one by one
                    tasks.extend(Task([f], task.attempts) for f in task.files)
                elif task.attempts < self.max_attempts:
                    tasks.append(task)
                else:
                    yield task, WorkerLost(f"the worker died on this file {task.attempts} times ({type(e).__name__})")
                continue
            except ray.exceptions.RayError as e:  # anything else Ray reports: recorded on the task's files
                out = e
            idle.append(actor)
            yield task, out

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self.started:
            self.ray.shutdown()


class Idle:
    """The executor of a run with nothing left to do (no model is loaded, no Ray started)."""

    name, workers = "nothing to do", 0

    def run(self, tasks: deque[Task]) -> Iterator[tuple[Task, list[FileResult] | BaseException]]:
        return iter(())

    def close(self) -> None:
        pass


def run_identity(opts: BatchOptions) -> dict:
    """What decides a batch's answers: the model (by content), its classes, detector, crop and video
    settings. Threads, device and the executor do not change results."""
    from ..checkpoint import load_checkpoint, resolve_checkpoint
    from ..download import sha256_of

    s = opts.settings
    model = Path(s.onnx) if s.onnx else resolve_checkpoint(s.checkpoint)
    if s.onnx:
        from ..export import read_onnx_metadata

        classes = list(read_onnx_metadata(model)["classes"])
    else:
        classes = list(load_checkpoint(model)["classes"])
    # the detector that will run, not the name asked for: "auto" falls back to Haar when YuNet cannot load
    detector = s.make_detector()
    model_path = getattr(detector, "model_path", None)
    detector_id = f"{detector.name} {sha256_of(model_path)[:16]}" if model_path else detector.name
    return {
        "model_sha256": sha256_of(model),
        "classes": classes,
        "detector": detector_id,
        "margin": s.margin,
        "align": s.align,
        "smooth": s.smooth,
        "alpha": s.alpha,
        "window": s.window,
        "every": opts.every,
        "whole_image": opts.whole_image,
    }


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def make_executor(opts: BatchOptions):
    if opts.ray == "none":
        return InProcessExecutor(opts)
    if not ray_available():
        if opts.ray != "auto":
            raise ImportError(f"--ray {opts.ray} needs Ray: pip install 'emolens[batch]'")
        log.info("Ray is not installed: running in-process (pip install 'emolens[batch]' for Ray)")
        return InProcessExecutor(opts)
    return RayExecutor(opts)


def run_batch(
    inputs: list[str | Path], opts: BatchOptions, on_task: Callable[[Task, list[FileResult]], None] | None = None
) -> dict:
    """Analyse every image and video in ``inputs`` into ``opts.out``; return the run's summary.

    Files finished by an earlier run into the same folder are skipped (``retry_failed`` retries those that
    failed). ``on_task`` is called after each task is stored.
    """
    t0 = time.perf_counter()
    files = discover(inputs)
    store = ResultStore(opts.out, run_identity(opts))
    done = store.done(files, opts.retry_failed)
    todo = [f for f in files if f.path not in done]
    executor = make_executor(opts) if todo else Idle()
    try:
        tasks = deque(make_tasks(todo, opts.images_per_task))
        expected = {f.path: probe_frames(f) for f in todo}
        frames = faces = failed = n_done = 0
        bar = tqdm(
            total=sum(expected.values()),
            unit="frame",
            desc=f"batch ({executor.name})",
            disable=not opts.progress,
            file=sys.stderr,
        )
        t_work = time.perf_counter()
        with bar:
            for task, out in executor.run(tasks):
                if isinstance(out, BaseException):
                    out = [_lost(f, out) for f in task.files]
                store.write(out)
                for r in out:
                    frames += r.record.get("frames", 0)
                    faces += r.record.get("faces", 0)
                    failed += not r.ok
                    if not r.ok:  # named as it happens (and in the failures table)
                        bar.write(r.record["error"], file=sys.stderr)
                    bar.update(expected[r.file.path])
                n_done += len(out)
                rate = faces / max(time.perf_counter() - t_work, 1e-9)
                bar.set_postfix_str(f"files {n_done}/{len(todo)}, {rate:.0f} faces/s", refresh=False)
                if on_task is not None:
                    on_task(task, out)
        work_s = time.perf_counter() - t_work
    finally:
        executor.close()
    merged = store.merge(files, csv=opts.csv)
    return {
        "executor": executor.name,
        "workers": executor.workers,
        "nodes": getattr(executor, "nodes", None),
        "files": len(files),
        "skipped": len(done),
        "processed": len(todo),
        "failed_now": failed,
        "frames": frames,
        "faces": faces,
        "seconds": round(time.perf_counter() - t0, 3),
        "work_seconds": round(work_s, 3),
        "frames_per_s": round(frames / max(work_s, 1e-9), 2),
        "table_files": merged["files"],
        "table_with_faces": merged["with_faces"],
        "table_failed": merged["failed"],
        "table_faces": merged["faces"],
        "out": {k: str(v) for k, v in merged["paths"].items()},
    }


def _lost(file: MediaFile, error: BaseException) -> FileResult:
    rec = {
        "file": file.path,
        "kind": file.kind,
        "size": file.size,
        "mtime_ns": file.mtime_ns,
        "status": "failed",
        "error": f"{type(error).__name__}: {file.path}: {str(error)[:500]}",
    }
    return FileResult(file, rec)
