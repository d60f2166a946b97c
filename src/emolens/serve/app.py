"""FastAPI app: image and video prediction, a WebSocket for live browser webcams, and the web page."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import shutil
import threading
import time
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from .. import __version__
from ..live.classifier import default_threads
from ..live.pipeline import FaceResult, Pipeline
from ..live.settings import PipelineSettings
from ..options import PIPELINE, SERVE, check_fields
from .folders import default_data_dir, private_data_dir
from .guards import MULTIPART_SLACK, BodyLimit, access_problem, redact_access_log
from .jobs import DiskFull, Job, JobQueue, QueueFull
from .schemas import JobOut, ModelInfo, PredictOut
from .settings import LOOPBACK, ServeSettings, settings_env  # noqa: F401 - re-exported
from .uploads import (  # noqa: F401 - BIG_PIXELS, WORK_SLOTS re-exported
    BIG_PIXELS,
    IMAGE_TYPE_BY_EXT,
    IMAGE_TYPES,
    VIDEO_EXT,
    VIDEO_TYPES,
    WORK_SLOTS,
    WorkPool,
    _check_video,
    _decode_image,
    _media_type,
    _read_limited,
    spool_uploads_in,
)

log = logging.getLogger(__name__)


def _faces_out(results: list[FaceResult], with_track: bool) -> list[dict]:
    return [r.to_record(track=with_track) for r in results]


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """Build the app; the model loads once; requests share one detector under a lock, video jobs have their own."""
    s = settings or ServeSettings()
    check_fields(s, SERVE)  # (fields may have been changed since it was made)
    check_fields(s.pipeline, PIPELINE)
    s.data_dir = private_data_dir(s.data_dir, private=Path(s.data_dir) == default_data_dir())
    spool_uploads_in(s.data_dir / "tmp")
    redact_access_log()
    # threads 0: chosen per batch, up to the cores shared out among the worker processes (at least 1 each)
    ps = s.pipeline
    classifier = ps.classifier(max_threads=default_threads(s.workers))
    detector = ps.make_detector()
    lock = threading.Lock()
    classes = classifier.classes

    def fresh_pipeline(smooth: str = "none") -> Pipeline:
        return ps.build(classifier, detector, smooth)

    def process_video(job: Job, folder: Path) -> dict:
        video = next(folder.glob("input.*"))
        deadline = time.monotonic() + s.job_timeout_s

        saved = [0.0]

        def on_frame(done: int, total: int | None) -> None:
            job.frames_done, job.frames_total = done, total
            job.progress = min(0.99, done / total) if total else 0.0
            if time.monotonic() - saved[0] > 0.5:  # progress visible to the other worker processes
                saved[0] = time.monotonic()
                jobs.save(job)

        def past_deadline() -> str | None:
            return f"video processing passed the {s.job_timeout_s:g} s limit" if time.monotonic() > deadline else None

        # The job has a detector of its own (detectors keep state), so requests are not blocked by a long video.
        pipe = ps.build(classifier, ps.make_detector())
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

    jobs = JobQueue(
        s.data_dir, process_video, max_queued=s.max_queued_jobs, keep_hours=s.keep_hours, max_disk_gb=s.max_disk_gb
    )
    try:  # /docs and /redoc from files inside fastapi-offline, so they work offline (FastAPI's load a CDN)
        from fastapi_offline import FastAPIOffline as AppClass
    except ImportError:
        AppClass = FastAPI
    app = AppClass(
        title="emolens",
        version=__version__,
        description="Emotions from facial expressions: images, videos and live webcams.",
    )
    app.state.settings, app.state.jobs = s, jobs

    admitted = [0]  # predictions being uploaded, waiting or running
    streams = [0]  # open live WebSockets
    work = WorkPool()  # decoding and inference off the event loop, at most WORK_SLOTS images at once

    video_bytes = int(s.max_video_mb * 2**20) + MULTIPART_SLACK

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        problem = access_problem(s, request.headers, request.url.path, request.query_params.get("api_key"))
        if problem:
            return JSONResponse({"detail": problem[1]}, status_code=problem[0])
        if request.url.path == "/v1/video" and request.method == "POST":
            # the quota is reserved for the whole body before it is read (it is spooled to disk as it arrives):
            # parallel uploads cannot each pass a check made once and fill the disk together
            length = request.headers.get("content-length", "")
            need = min(int(length), video_bytes) if length.isdigit() else video_bytes
            try:
                jobs.reserve(need)
            except DiskFull as e:
                return JSONResponse({"detail": str(e)}, status_code=507, headers={"Connection": "close"})
            try:
                return await call_next(request)
            finally:
                jobs.release(need)
        if request.url.path != "/v1/predict" or request.method != "POST":
            return await call_next(request)
        # admission before the body is read: a request beyond max_pending costs no upload parsing
        if admitted[0] >= s.max_pending:
            return JSONResponse(
                {"detail": "busy: too many predictions waiting"}, status_code=503, headers={"Retry-After": "1"}
            )
        admitted[0] += 1
        try:
            return await call_next(request)
        finally:
            admitted[0] -= 1

    app.add_middleware(
        BodyLimit,
        limits={
            "/v1/predict": (s.max_image_mb, int(s.max_image_mb * 2**20) + MULTIPART_SLACK),
            "/v1/video": (s.max_video_mb, int(s.max_video_mb * 2**20) + MULTIPART_SLACK),
        },
        idle_s=s.body_timeout_s,
    )
    if s.allow_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=s.allow_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/healthz")
    async def healthz() -> dict:  # on the event loop: answers at once however busy the inference threads are
        return {"status": "ok", "pid": os.getpid()}

    @app.get("/v1/model", response_model=ModelInfo)
    def model_info() -> dict:
        return {
            "version": __version__,
            "model": classifier.model_name,
            "checkpoint": classifier.checkpoint.name,
            "classes": classes,
            "preprocess": classifier.preprocess.to_dict(),
            "detector": detector.name,
            "limits": {
                "max_image_mb": s.max_image_mb,
                "max_video_mb": s.max_video_mb,
                "image_types": sorted(IMAGE_TYPES),
                "video_types": sorted(VIDEO_TYPES),
            },
        }

    @app.post(
        "/v1/predict",
        response_model=PredictOut,
        responses={400: {}, 413: {}, 415: {}, 503: {}, 504: {}},
    )
    async def predict(file: UploadFile = File(...)) -> dict:
        """Every face in an uploaded image: box, label, confidence and all class probabilities.

        At most ``max_pending`` predictions wait at a time (503 + ``Retry-After`` beyond); one that passes the
        time limit (504) is dropped if it has not started yet.
        """
        _media_type(file, IMAGE_TYPES, IMAGE_TYPE_BY_EXT)
        data = await _read_limited(file, s.max_image_mb)
        cancelled = threading.Event()

        def decode_and_predict():
            img = _decode_image(data, s.max_image_side)
            with lock:
                if cancelled.is_set():  # its client has had a 504 already: don't spend the time
                    return None
                return img.shape, fresh_pipeline().process(img)

        try:
            (height, width, _), results = await work.run(decode_and_predict, data, s.request_timeout_s)
        except TimeoutError:
            cancelled.set()
            raise HTTPException(504, f"prediction took longer than {s.request_timeout_s:g} s") from None
        return {"width": width, "height": height, "faces": _faces_out(results, False)}

    @app.post(
        "/v1/video",
        status_code=202,
        response_model=JobOut,
        responses={400: {}, 413: {}, 415: {}, 429: {}, 507: {}},
    )
    async def submit_video(file: UploadFile = File(...)) -> dict:
        """Queue a video; poll ``GET /v1/video/{id}`` for progress, then download the results."""
        ctype = _media_type(file, VIDEO_TYPES, {ext: t for t, ext in VIDEO_EXT.items()})
        try:
            job, folder = jobs.new_job_dir()
        except DiskFull as e:
            raise HTTPException(507, str(e)) from None
        target = folder / ("input" + VIDEO_EXT[ctype])
        try:
            with open(target, "wb") as f:
                await _read_limited(file, s.max_video_mb, dest=f)
            await asyncio.to_thread(_check_video, target, s.max_video_side)  # off the event loop
            jobs.submit(job)
        except QueueFull as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise HTTPException(429, str(e)) from None
        except DiskFull as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise HTTPException(507, str(e)) from None
        except OSError as e:
            shutil.rmtree(folder, ignore_errors=True)
            if e.errno == errno.ENOSPC:
                raise HTTPException(507, "the server's disk is full; try again later") from None
            raise
        except HTTPException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return job.public()

    def _job(job_id: str) -> Job:
        try:
            return jobs.get(job_id)
        except KeyError:
            raise HTTPException(404, "no such job") from None

    @app.get("/v1/video/{job_id}", response_model=JobOut, responses={404: {}})
    def job_status(job_id: str) -> dict:
        return _job(job_id).public()

    @app.get("/v1/video/{job_id}/{name}", responses={404: {}, 409: {}})
    def job_file(job_id: str, name: str):
        """``results.csv``, ``results.json`` (summary) or ``annotated.mp4`` of a finished job."""
        job = _job(job_id)
        if name not in ("results.csv", "results.json", "annotated.mp4"):
            raise HTTPException(404, "no such result; use results.csv, results.json or annotated.mp4")
        path = jobs.folder(job_id) / name
        partial = job.status == "failed" and name != "results.json" and path.is_file()
        if job.status != "done" and not partial:  # a failed job's partial CSV/video stay downloadable
            raise HTTPException(409, f"job is {job.status}")
        if name == "results.json":
            return JSONResponse(job.summary)
        return FileResponse(path, media_type="text/csv" if name.endswith(".csv") else "video/mp4", filename=name)

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        """Send JPEG/PNG frames as binary messages; each processed frame gets a JSON reply with tracked,
        smoothed faces. A client that sends faster than the server works has frames dropped (the newest
        waiting frame wins; replies say how many were dropped), never its connection. Text or empty
        messages get an ``{"error": ...}`` reply."""
        problem = access_problem(s, ws.headers, "/v1/stream", ws.query_params.get("api_key"))
        if problem:  # refused before the handshake completes (HTTP 403 to the client)
            await ws.close(code=1008, reason=problem[1][:120])
            return
        await ws.accept()
        if streams[0] >= s.max_streams:  # admission: each stream may hold a frame waiting for a work slot
            await ws.close(code=1013, reason=f"busy: {s.max_streams} live streams already open; try again later")
            return
        streams[0] += 1
        pipe = fresh_pipeline("ema")
        send_lock = asyncio.Lock()
        latest: list[bytes] = []  # at most one waiting frame
        ready = asyncio.Event()
        state = {"closed": False, "dropped": 0}

        async def send(obj: dict) -> None:
            async with send_lock:
                await ws.send_text(json.dumps(obj))

        async def reader() -> None:
            try:
                while True:
                    msg = await ws.receive()
                    if msg["type"] == "websocket.disconnect":
                        break
                    data = msg.get("bytes")
                    if data is None:
                        await send({"error": "send frames as binary messages (JPEG or PNG bytes), not text"})
                    elif not data:
                        await send({"error": "empty frame"})
                    elif len(data) > s.max_image_mb * 2**20:
                        await send({"error": f"frame larger than the {s.max_image_mb:g} MB limit"})
                    else:
                        if latest:
                            state["dropped"] += 1
                            latest.clear()
                        latest.append(data)
                        ready.set()
            except WebSocketDisconnect:
                pass
            finally:
                state["closed"] = True
                ready.set()

        task = asyncio.create_task(reader())
        frame_no = 0
        try:
            while True:
                await ready.wait()
                ready.clear()
                if not latest:
                    if state["closed"]:
                        break
                    continue
                data = latest.pop()

                def decode_and_track(data=data, i=frame_no):
                    img = _decode_image(data, s.max_image_side)
                    with lock:
                        return img.shape, pipe.process(img, i)

                try:
                    (height, width, _), results = await work.run(decode_and_track, data)
                except HTTPException as e:
                    await send({"error": e.detail})
                    continue
                reply = {"frame": frame_no, "width": width, "height": height}
                reply.update(dropped=state["dropped"], faces=_faces_out(results, True))
                await send(reply)
                frame_no += 1
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away mid-reply
        finally:
            streams[0] -= 1
            task.cancel()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return (resources.files("emolens") / "serve" / "static" / "index.html").read_text()

    return app


def app_from_env() -> FastAPI:
    """App factory for multi-worker uvicorn (``--factory``): settings from ``$EMOLENS_SERVE_SETTINGS``."""
    d = json.loads(os.environ.get("EMOLENS_SERVE_SETTINGS") or "{}")
    pipeline = PipelineSettings(**d.pop("pipeline", {}))
    if "data_dir" in d:
        d["data_dir"] = Path(d["data_dir"])
    return create_app(ServeSettings(pipeline=pipeline, **d))
