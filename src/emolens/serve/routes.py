"""The HTTP routes: health, model, image prediction, video jobs and the web page."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import threading
from importlib import resources

from fastapi import APIRouter, Depends, File, HTTPException, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from .. import __version__
from .jobs import DiskFull, Job, QueueFull
from .schemas import JobOut, ModelInfo, PredictOut
from .service import Service, service
from .uploads import (
    IMAGE_TYPE_BY_EXT,
    IMAGE_TYPES,
    VIDEO_EXT,
    VIDEO_TYPES,
    _check_video,
    _decode_image,
    _media_type,
    _read_limited,
)

router = APIRouter()


def faces_out(results: list, with_track: bool) -> list[dict]:
    return [r.to_record(track=with_track) for r in results]


@router.get("/healthz")
async def healthz() -> dict:  # on the event loop: answers at once however busy the inference threads are
    return {"status": "ok", "pid": os.getpid()}


@router.get("/v1/model", response_model=ModelInfo)
def model_info(svc: Service = Depends(service)) -> dict:
    s, classifier = svc.settings, svc.classifier
    return {
        "version": __version__,
        "model": classifier.model_name,
        "checkpoint": classifier.checkpoint.name,
        "classes": classifier.classes,
        "preprocess": classifier.preprocess.to_dict(),
        "detector": svc.detector.name,
        "limits": {
            "max_image_mb": s.max_image_mb,
            "max_video_mb": s.max_video_mb,
            "image_types": sorted(IMAGE_TYPES),
            "video_types": sorted(VIDEO_TYPES),
        },
    }


@router.post(
    "/v1/predict",
    response_model=PredictOut,
    responses={400: {}, 413: {}, 415: {}, 503: {}, 504: {}},
)
async def predict(file: UploadFile = File(...), svc: Service = Depends(service)) -> dict:
    """Every face in an uploaded image: box, label, confidence and all class probabilities.

    At most ``max_pending`` predictions wait at a time (503 + ``Retry-After`` beyond); one that passes the
    time limit (504) is dropped if it has not started yet.
    """
    s = svc.settings
    _media_type(file, IMAGE_TYPES, IMAGE_TYPE_BY_EXT)
    data = await _read_limited(file, s.max_image_mb)
    cancelled = threading.Event()

    def decode_and_predict():
        img = _decode_image(data, s.max_image_side)
        with svc.lock:
            if cancelled.is_set():  # its client has had a 504 already: don't spend the time
                return None
            return img.shape, svc.pipeline().process(img)

    try:
        (height, width, _), results = await svc.work.run(decode_and_predict, data, s.request_timeout_s)
    except TimeoutError:
        cancelled.set()
        raise HTTPException(504, f"prediction took longer than {s.request_timeout_s:g} s") from None
    return {"width": width, "height": height, "faces": faces_out(results, False)}


@router.post(
    "/v1/video",
    status_code=202,
    response_model=JobOut,
    responses={400: {}, 413: {}, 415: {}, 429: {}, 507: {}},
)
async def submit_video(file: UploadFile = File(...), svc: Service = Depends(service)) -> dict:
    """Queue a video; poll ``GET /v1/video/{id}`` for progress, then download the results."""
    s, jobs = svc.settings, svc.jobs
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


def _job(svc: Service, job_id: str) -> Job:
    try:
        return svc.jobs.get(job_id)
    except KeyError:
        raise HTTPException(404, "no such job") from None


@router.get("/v1/video/{job_id}", response_model=JobOut, responses={404: {}})
def job_status(job_id: str, svc: Service = Depends(service)) -> dict:
    return _job(svc, job_id).public()


@router.get("/v1/video/{job_id}/{name}", responses={404: {}, 409: {}})
def job_file(job_id: str, name: str, svc: Service = Depends(service)):
    """``results.csv``, ``results.json`` (summary) or ``annotated.mp4`` of a finished job."""
    job = _job(svc, job_id)
    if name not in ("results.csv", "results.json", "annotated.mp4"):
        raise HTTPException(404, "no such result; use results.csv, results.json or annotated.mp4")
    path = svc.jobs.folder(job_id) / name
    partial = job.status == "failed" and name != "results.json" and path.is_file()
    if job.status != "done" and not partial:  # a failed job's partial CSV/video stay downloadable
        raise HTTPException(409, f"job is {job.status}")
    if name == "results.json":
        return JSONResponse(job.summary)
    return FileResponse(path, media_type="text/csv" if name.endswith(".csv") else "video/mp4", filename=name)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index() -> str:
    return (resources.files("emolens") / "serve" / "static" / "index.html").read_text()
