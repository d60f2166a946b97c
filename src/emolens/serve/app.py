"""FastAPI app: image and video prediction, a WebSocket for live browser webcams, and the web page."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
from fastapi import FastAPI, File, HTTPException, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel

from .. import __version__
from ..imageio import DataError, ImageTooLarge, decode_image, header_size, other_header_size
from ..live.classifier import default_threads
from ..live.container import coded_frame_size, frame_size, sniff
from ..live.pipeline import FaceResult, Pipeline
from ..live.settings import PipelineSettings
from ..options import PIPELINE, SERVE, check_fields
from .folders import default_data_dir, private_data_dir
from .jobs import DiskFull, Job, JobQueue, QueueFull

log = logging.getLogger(__name__)

IMAGE_TYPES = {"image/jpeg", "image/png", "image/bmp", "image/webp", "image/tiff"}
VIDEO_TYPES = {"video/mp4", "video/x-msvideo", "video/avi", "video/quicktime", "video/webm", "video/x-matroska"}
VIDEO_EXT = {
    "video/mp4": ".mp4",
    "video/x-msvideo": ".avi",
    "video/avi": ".avi",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "video/x-matroska": ".mkv",
}


GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream"}
IMAGE_EXT = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
}


def _media_type(upload: UploadFile, allowed: set[str], by_ext: dict[str, str]) -> str:
    """The upload's type; a generic one (curl's default ``application/octet-stream``) is taken from the file
    name's extension. The bytes are decoded afterwards, so a wrong guess is still rejected (400)."""
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if ctype in allowed:
        return ctype
    guess = by_ext.get(Path(upload.filename or "").suffix.lower())
    if ctype in GENERIC_TYPES and guess:
        return guess
    raise HTTPException(415, f"unsupported type {upload.content_type!r}; send one of {sorted(allowed)}")


@dataclass
class ServeSettings:
    """Limits and locations. Nothing is written outside ``data_dir``. Limits are checked against
    :data:`emolens.options.SERVE` when the object is made and again by :func:`create_app`."""

    data_dir: Path = field(default_factory=default_data_dir)  # private: $TMPDIR/emolens-serve-<uid>, mode 0700
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)  # model, detector, crop, threads...
    max_image_mb: float = 10.0
    max_video_mb: float = 200.0
    max_image_side: int = 8000
    request_timeout_s: float = 20.0
    body_timeout_s: float = 10.0  # a request body that sends nothing for this long is dropped (408), as nginx's
    # client_body_timeout: a slow client cannot hold an admission slot by sending a few bytes and waiting
    job_timeout_s: float = 600.0
    max_queued_jobs: int = 4
    max_pending: int = 8  # predictions in flight (uploading, waiting, running) per worker before 503
    max_streams: int = 8  # open live WebSockets per worker; more are closed at once (1013, try again later)
    max_video_side: int = 4096  # larger video frames are refused from the container header, before FFmpeg
    keep_hours: float = 24.0  # finished jobs are deleted this long after they end
    max_disk_gb: float = 10.0  # the oldest finished jobs are deleted while the jobs take more; then 507
    workers: int = 1  # worker processes sharing this machine (for the threads default)
    allow_origins: list[str] = field(default_factory=list)  # other web origins that may call the API
    hosts: list[str] = field(default_factory=list)  # Host names besides loopback the server answers ("*": any)
    api_key: str | None = None  # required (X-API-Key header or ?api_key=) when set

    def __post_init__(self) -> None:
        check_fields(self, SERVE)


LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: Images decoded and analysed at once (per worker process). Uploads and frames waiting for a slot hold only
#: their compressed bytes; a decoded image may take ``max_image_side**2 * 3`` bytes (192 MB at 8000 px).
WORK_SLOTS = 2
#: An image whose header claims more pixels than this takes every slot: it is decoded and analysed alone.
BIG_PIXELS = 4096 * 4096


def _work_weight(data: bytes) -> int:
    """Slots an upload takes: all of them for a big image (from its header, nothing decoded), else one."""
    size = header_size(data) or other_header_size(data)
    return WORK_SLOTS if size and size[0] * size[1] > BIG_PIXELS else 1


#: Bytes a multipart body may carry beyond its file (boundaries, part headers).
MULTIPART_SLACK = 64 * 1024
#: Paths served without an API key: the page itself, the docs and the liveness probe.
OPEN_PATHS = ("/", "/healthz", "/docs", "/redoc", "/openapi.json", "/static-offline-docs")


def _host_name(host_header: str) -> str:
    h = host_header.strip().lower()
    if h.startswith("["):  # [::1]:8000
        return h[1 : h.find("]")]
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def access_problem(s: ServeSettings, headers, path: str, query_key: str | None) -> tuple[int, str] | None:
    """Why a request (or WebSocket handshake) must be refused, as ``(status, reason)``, or ``None``.

    Host must be loopback or in ``s.hosts`` (DNS rebinding); a browser ``Origin`` must be this server's own or
    in ``s.allow_origins`` (cross-site requests and WebSocket hijacking; ``Origin: null`` only when listed there as
    ``null``, not by ``*``); the API key must match when set.
    """
    host = headers.get("host", "")
    if "*" not in s.hosts and _host_name(host) not in (*LOOPBACK, *(h.lower() for h in s.hosts)):
        return 400, f"Host {host!r} is not served here (emolens serve --allowed-host)"
    origin = headers.get("origin")
    if origin == "null":  # sandboxed iframes and file:// pages: any page can be one, so only if asked for
        if "null" not in s.allow_origins:
            return 403, "requests from an opaque origin ('null') refused (emolens serve --allow-origin null)"
    elif origin:
        from urllib.parse import urlsplit

        if (
            urlsplit(origin).netloc.lower() != host.lower()
            and origin not in s.allow_origins
            and "*" not in s.allow_origins
        ):
            return 403, f"cross-origin request from {origin!r} refused (emolens serve --allow-origin)"
    if s.api_key and not (path in OPEN_PATHS or path.startswith("/static-offline-docs/")):
        import hmac

        key = headers.get("x-api-key") or query_key or ""
        if not hmac.compare_digest(key.encode(), s.api_key.encode()):
            return 401, "missing or wrong API key (X-API-Key header or ?api_key=)"
    return None


class Box(BaseModel):
    x: float
    y: float
    w: float
    h: float


class FaceOut(BaseModel):
    box: Box
    track_id: int | None = None
    det_score: float
    label: str
    confidence: float
    probs: dict[str, float]


class PredictOut(BaseModel):
    width: int
    height: int
    faces: list[FaceOut]


class JobOut(BaseModel):
    id: str
    status: str
    progress: float
    frames_done: int
    frames_total: int | None = None
    error: str | None = None
    summary: dict | None = None
    created: float


class ModelInfo(BaseModel):
    version: str
    model: str
    checkpoint: str
    classes: list[str]
    preprocess: dict
    detector: str
    limits: dict


def _faces_out(results: list[FaceResult], with_track: bool) -> list[dict]:
    return [r.to_record(track=with_track) for r in results]


def _check_video(path: Path, max_side: int) -> None:
    """Refuse bytes that are no video container (400), and frames over ``max_side`` (413) or of a size the
    header does not declare (400), from the container header alone: FFmpeg never sees a refused file. Then
    the size the codec will really decode (a header can lie) from FFmpeg's parser, and the first frame through
    OpenCV, which the job reads with (400 if it cannot)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if sniff(head) is None:
        raise HTTPException(400, "the uploaded file is not a video (MP4, MOV, AVI, MKV or WebM)")
    size = frame_size(path)
    if size is None:
        raise HTTPException(400, "the video's header declares no frame size (damaged or unusual file)")
    if max(size) > max_side:
        raise HTTPException(413, f"video frames are {size[0]}x{size[1]}; the limit is {max_side} px per side")
    try:
        coded = coded_frame_size(path)
    except ValueError:
        coded = None
    if coded is None:
        raise HTTPException(400, "the uploaded file is not a readable video")
    if max(coded) > max_side:
        raise HTTPException(
            413, f"video frames are {coded[0]}x{coded[1]} (the header says {size[0]}x{size[1]}); "
            f"the limit is {max_side} px per side"
        )  # fmt: skip
    cap = cv2.VideoCapture(str(path))
    ok = cap.isOpened() and cap.read()[0]
    cap.release()
    if not ok:
        raise HTTPException(400, "the uploaded file is not a readable video")


def _decode_image(data: bytes, max_side: int) -> np.ndarray:
    """Decode an upload, refusing (413) from its header alone an image over ``max_side`` px per side."""
    try:
        img = decode_image(data, "upload", max_pixels=max_side * max_side, flags=cv2.IMREAD_COLOR, max_side=max_side)
    except ImageTooLarge as e:
        raise HTTPException(413, str(e)) from None
    except DataError:
        raise HTTPException(400, "the uploaded file is not a readable image") from None
    if max(img.shape[:2]) > max_side:
        raise HTTPException(413, f"image is {img.shape[1]}x{img.shape[0]}; the limit is {max_side} px per side")
    return img


class BodyLimit:
    """ASGI middleware: a request body over its route's limit is refused (413, JSON) while it streams in: at
    once when ``Content-Length`` says so (nothing is read), else as soon as the bytes received pass the limit.
    So no more than the limit (plus one network chunk) ever reaches the upload spool on disk.

    ``limits``: path -> (limit in MB for the message, limit in bytes); other paths get 1 MB.
    """

    def __init__(self, app, limits: dict[str, tuple[float, int]], idle_s: float = 10.0) -> None:
        self.app, self.limits, self.idle_s = app, limits, idle_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        mb, limit = self.limits.get(scope["path"], (1.0, 2**20))
        detail, status = f"upload larger than the {mb:g} MB limit", 413
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            status = 413 if length.isdigit() else 400
            response = JSONResponse({"detail": detail if status == 413 else "bad Content-Length"}, status_code=status)
            return await response(scope, receive, send)
        seen, over, answered = 0, False, False

        async def limited():
            nonlocal seen, over, status, detail
            if over:
                return {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), self.idle_s)
            except asyncio.TimeoutError:  # the client stopped sending mid-body (or trickles): drop it
                over, status = True, 408
                detail = f"the request body stalled (nothing received for {self.idle_s:g} s)"
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # stop reading: to the app, the client has gone (it stops parsing)
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def refuse() -> None:
            nonlocal answered
            if not answered:
                answered = True
                await JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})(
                    scope, receive, send
                )

        async def guarded_send(message) -> None:
            if over:  # whatever the app answers to the "disconnect", the client gets the 413
                return await refuse()
            await send(message)

        try:
            await self.app(scope, limited, guarded_send)
        except Exception:
            if not over:
                raise
        if over:
            await refuse()


async def _read_limited(upload: UploadFile, limit_mb: float, dest=None) -> bytes:
    """Read an upload in chunks, stopping with 413 as soon as it passes ``limit_mb``."""
    limit, size, chunks = int(limit_mb * 2**20), 0, []
    while chunk := await upload.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"upload larger than the {limit_mb:g} MB limit")
        if dest is not None:
            dest.write(chunk)
        else:
            chunks.append(chunk)
    if size == 0:
        raise HTTPException(400, "empty upload")
    return b"".join(chunks)


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
    # Decoding and inference run off the event loop (which keeps answering /healthz and reading uploads), in a
    # pool of WORK_SLOTS threads; a slot is held from decoding until the work returns, so at most WORK_SLOTS
    # decoded images exist however many uploads and WebSocket frames arrive.
    pool = ThreadPoolExecutor(WORK_SLOTS, thread_name_prefix="emolens-work")
    slots = asyncio.Semaphore(WORK_SLOTS)
    whole_pool = asyncio.Lock()  # one big image gathers its slots at a time (two halfway would deadlock)

    def release(n: int) -> None:
        for _ in range(n):
            slots.release()

    async def take(n: int) -> None:
        if n == 1:
            return await slots.acquire()
        async with whole_pool:
            taken = 0
            try:
                while taken < n:
                    await slots.acquire()
                    taken += 1
            except BaseException:  # timed out while gathering: give back what was taken
                release(taken)
                raise

    async def in_work_slot(fn, data: bytes, timeout: float | None = None):
        """``fn()`` in the work pool once its slots are free (:func:`_work_weight` of the upload ``data``);
        ``TimeoutError`` if that takes over ``timeout`` s in all. The slots stay taken until ``fn`` returns,
        even after a timeout (its memory is still in use)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        n = _work_weight(data)
        async with asyncio.timeout_at(deadline):
            await take(n)
        try:
            fut = loop.run_in_executor(pool, fn)
        except BaseException:
            release(n)
            raise
        fut.add_done_callback(lambda _: release(n))
        async with asyncio.timeout_at(deadline):
            return await asyncio.shield(fut)

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
        _media_type(file, IMAGE_TYPES, IMAGE_EXT)
        data = await _read_limited(file, s.max_image_mb)
        cancelled = threading.Event()

        def work():
            img = _decode_image(data, s.max_image_side)
            with lock:
                if cancelled.is_set():  # its client has had a 504 already: don't spend the time
                    return None
                return img.shape, fresh_pipeline().process(img)

        try:
            (height, width, _), results = await in_work_slot(work, data, s.request_timeout_s)
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

                def work(data=data, i=frame_no):
                    img = _decode_image(data, s.max_image_side)
                    with lock:
                        return img.shape, pipe.process(img, i)

                try:
                    (height, width, _), results = await in_work_slot(work, data)
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


def settings_env(s: ServeSettings) -> dict[str, str]:
    """``s`` as the ``EMOLENS_SERVE_SETTINGS`` variable (JSON) that :func:`app_from_env` reads back."""
    d = asdict(s)
    d["data_dir"] = str(s.data_dir)
    return {"EMOLENS_SERVE_SETTINGS": json.dumps(d)}


def app_from_env() -> FastAPI:
    """App factory for multi-worker uvicorn (``--factory``): settings from ``$EMOLENS_SERVE_SETTINGS``."""
    d = json.loads(os.environ.get("EMOLENS_SERVE_SETTINGS") or "{}")
    pipeline = PipelineSettings(**d.pop("pipeline", {}))
    if "data_dir" in d:
        d["data_dir"] = Path(d["data_dir"])
    return create_app(ServeSettings(pipeline=pipeline, **d))


class RedactKeys(logging.Filter):
    """Hide ``api_key=`` values in log lines (uvicorn's access log prints every request's query)."""

    PATTERN = re.compile(r"(api_key=)[^&\s\"]*", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.PATTERN.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1***", record.msg)
        return True


def redact_access_log() -> None:
    """Install :class:`RedactKeys` on uvicorn's access log (once)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactKeys) for f in access.filters):
        access.addFilter(RedactKeys())


def spool_uploads_in(folder: Path) -> None:
    """Make this process's temporary files (uploads spooled by the multipart parser) go to ``folder``, and
    remove what a killed server left there. The server writes nowhere outside its data folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        if time.time() - stale.stat().st_mtime > 3600:  # (recent ones may be another worker's upload)
            stale.unlink(missing_ok=True) if stale.is_file() else shutil.rmtree(stale, ignore_errors=True)
    tempfile.tempdir = str(folder)
