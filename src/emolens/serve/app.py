"""FastAPI app: image and video prediction, a WebSocket for live browser webcams, and the web page.

:func:`create_app` wires the parts: :class:`~.service.Service` (the shared state), the guards (:mod:`.guards`:
access rules, admission, the body limit), and the routes (:mod:`.routes`, :mod:`.stream`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from .. import __version__
from ..live.settings import PipelineSettings
from ..options import PIPELINE, SERVE, check_fields
from . import routes, stream
from .folders import default_data_dir, private_data_dir
from .guards import MULTIPART_SLACK, BodyLimit, admission, redact_access_log
from .service import Service
from .settings import LOOPBACK, ServeSettings, settings_env  # noqa: F401 - re-exported
from .uploads import BIG_PIXELS, WORK_SLOTS, scoped_env, spool_uploads_in  # noqa: F401 - re-exported


async def _http_error(request: Request, exc: HTTPException):
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """Build the app; the model loads once; requests share one detector under a lock, video jobs have their own."""
    s = settings or ServeSettings()
    check_fields(s, SERVE)  # (fields may have been changed since it was made)
    check_fields(s.pipeline, PIPELINE)
    s.data_dir = private_data_dir(s.data_dir, private=Path(s.data_dir) == default_data_dir())
    spool_uploads_in(s.data_dir / "tmp")
    redact_access_log()
    # the model loads here: ONNX Runtime's session file and the classifier's export (--runtime auto) go inside the
    # data folder too (the export into a cache the user set, if any), and the process's own settings come back
    cache = os.environ.get("EMOLENS_CACHE") or str(s.data_dir / "cache")
    with scoped_env(TMPDIR=str(s.data_dir / "tmp"), EMOLENS_CACHE=cache):
        svc = Service(s)
    try:  # /docs and /redoc from files inside fastapi-offline, so they work offline (FastAPI's load a CDN)
        from fastapi_offline import FastAPIOffline as AppClass
    except ImportError:
        AppClass = FastAPI
    app = AppClass(
        title="emolens",
        version=__version__,
        description="Emotions from facial expressions: images, videos and live webcams.",
    )
    app.state.settings, app.state.jobs, app.state.service = s, svc.jobs, svc
    app.middleware("http")(admission)
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

        app.add_middleware(CORSMiddleware, allow_origins=s.allow_origins, allow_methods=["*"], allow_headers=["*"])
    app.add_exception_handler(HTTPException, _http_error)
    app.include_router(routes.router)
    app.include_router(stream.router)
    return app


def app_from_env() -> FastAPI:
    """App factory for multi-worker uvicorn (``--factory``): settings from ``$EMOLENS_SERVE_SETTINGS``."""
    d = json.loads(os.environ.get("EMOLENS_SERVE_SETTINGS") or "{}")
    pipeline = PipelineSettings(**d.pop("pipeline", {}))
    if "data_dir" in d:
        d["data_dir"] = Path(d["data_dir"])
    return create_app(ServeSettings(pipeline=pipeline, **d))
