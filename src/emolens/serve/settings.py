"""``emolens serve``'s settings: limits and locations, checked against :data:`emolens.options.SERVE`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..live.settings import PipelineSettings
from ..options import SERVE, check_fields
from .folders import default_data_dir

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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


def settings_env(s: ServeSettings) -> dict[str, str]:
    """``s`` as the ``EMOLENS_SERVE_SETTINGS`` variable (JSON) that :func:`app_from_env` reads back."""
    d = asdict(s)
    d["data_dir"] = str(s.data_dir)
    return {"EMOLENS_SERVE_SETTINGS": json.dumps(d)}
