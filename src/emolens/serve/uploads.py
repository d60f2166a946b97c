"""What the server accepts: upload types, size limits read from headers before decoding, the decode itself, and
the work pool that keeps at most a few decoded images in memory, off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from fastapi import HTTPException, UploadFile

from ..imageio import IMAGE_EXT, DataError, ImageTooLarge, declared_size, decode_image
from ..live.container import coded_frame_size, frame_size, sniff

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
#: The type of an upload sent as a generic one, from its extension: every image file emolens reads
#: (:data:`emolens.imageio.IMAGE_EXT`), each with one of :data:`IMAGE_TYPES`.
IMAGE_TYPE_BY_EXT = {
    ext: "image/jpeg" if ext in (".jpg", ".jpeg") else "image/tiff" if ext in (".tif", ".tiff") else f"image/{ext[1:]}"
    for ext in IMAGE_EXT
}
assert set(IMAGE_TYPE_BY_EXT.values()) <= IMAGE_TYPES


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


#: Images decoded and analysed at once (per worker process). Uploads and frames waiting for a slot hold only
#: their compressed bytes; a decoded image may take ``max_image_side**2 * 3`` bytes (192 MB at 8000 px).
WORK_SLOTS = 2
#: An image whose header claims more pixels than this takes every slot: it is decoded and analysed alone.
BIG_PIXELS = 4096 * 4096


def _work_weight(data: bytes) -> int:
    """Slots an upload takes: all of them for a big image (from its header, nothing decoded), else one."""
    size = declared_size(data)
    return WORK_SLOTS if size and size[0] * size[1] > BIG_PIXELS else 1


class WorkPool:
    """Decoding and inference off the event loop (which keeps answering ``/healthz`` and reading uploads), in
    :data:`WORK_SLOTS` threads; a slot is held from decoding until the work returns, so at most WORK_SLOTS
    decoded images exist however many uploads and WebSocket frames arrive (a big image takes them all)."""

    def __init__(self, slots: int = WORK_SLOTS) -> None:
        self.pool = ThreadPoolExecutor(slots, thread_name_prefix="emolens-work")
        self.slots = asyncio.Semaphore(slots)
        self.whole_pool = asyncio.Lock()  # one big image gathers its slots at a time (two halfway would deadlock)

    def _release(self, n: int) -> None:
        for _ in range(n):
            self.slots.release()

    async def _take(self, n: int) -> None:
        if n == 1:
            return await self.slots.acquire()
        async with self.whole_pool:
            taken = 0
            try:
                while taken < n:
                    await self.slots.acquire()
                    taken += 1
            except BaseException:  # timed out while gathering: give back what was taken
                self._release(taken)
                raise

    async def run(self, fn, data: bytes, timeout: float | None = None):
        """``fn()`` in the pool once its slots are free (:func:`_work_weight` of the upload ``data``);
        ``TimeoutError`` if that takes over ``timeout`` s in all. The slots stay taken until ``fn`` returns,
        even after a timeout (its memory is still in use)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        n = _work_weight(data)
        async with asyncio.timeout_at(deadline):
            await self._take(n)
        try:
            fut = loop.run_in_executor(self.pool, fn)
        except BaseException:
            self._release(n)
            raise
        fut.add_done_callback(lambda _: self._release(n))
        async with asyncio.timeout_at(deadline):
            return await asyncio.shield(fut)


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


def spool_uploads_in(folder: Path) -> None:
    """Make this process's temporary files (uploads spooled by the multipart parser) go to ``folder``, and
    remove what a killed server left there. The server writes nowhere outside its data folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        if time.time() - stale.stat().st_mtime > 3600:  # (recent ones may be another worker's upload)
            stale.unlink(missing_ok=True) if stale.is_file() else shutil.rmtree(stale, ignore_errors=True)
    tempfile.tempdir = str(folder)


@contextlib.contextmanager
def scoped_env(**values: str):
    """Environment variables set for the block, then restored: for libraries that read them themselves while the
    server loads its model (ONNX Runtime writes a session file in ``$TMPDIR`` when it is imported; the export
    cache is ``$EMOLENS_CACHE``)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
