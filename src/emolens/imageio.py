"""Image files and bytes: decoding with a pixel limit checked on the header first, clear errors that name the
file, and the crops every stage shares (training loaders, the live pipeline, batch and the server).

The bottom layer: it imports nothing from emolens.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

#: File extensions read as images (OpenCV decodes them all).
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DataError(ValueError):
    """Bad input (an image file, a dataset): the message names the file and what is wrong."""


class ImageTooLarge(DataError):
    """An image whose header claims more pixels than allowed; nothing was decoded."""


#: Largest image decoded by default (pixels): above it a file is refused from its header, before decoding,
#: so a small "decompression bomb" (a 1 MB PNG claiming 32000x32000) cannot take gigabytes of memory.
MAX_PIXELS = 120_000_000


def header_size(buf: bytes | np.ndarray) -> tuple[int, int] | None:
    """``(width, height)`` read from an image's header without decoding it (Pillow's lazy open), or ``None``
    when Pillow does not know the format (OpenCV then decides)."""
    import io

    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # only the header is read: size it, don't refuse
    try:
        with Image.open(io.BytesIO(bytes(buf))) as im:
            return im.size
    except Exception:  # noqa: BLE001 - unknown or broken header: leave it to the decoder
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def other_header_size(buf: bytes | np.ndarray) -> tuple[int, int] | None:
    """``(width, height)`` from the header of a format OpenCV decodes but Pillow does not size: Radiance HDR
    (``#?RADIANCE``/``#?RGBE``, a ``-Y H +X W`` line) and PFM (``PF``/``Pf``, then ``W H``); ``None`` otherwise."""
    head = bytes(buf[:4096])
    if head.startswith((b"#?RADIANCE", b"#?RGBE")):
        import re

        found = re.search(rb"\n\n([-+][YX]) (\d+) ([-+][YX]) (\d+)", head)
        if found:
            a, b = int(found.group(2)), int(found.group(4))
            return (b, a) if found.group(1).endswith(b"Y") else (a, b)
        return (2**31, 2**31)  # no size line where it belongs: treated as too large, never decoded
    if head[:2] in (b"PF", b"Pf"):
        fields = head[2:64].split()
        if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
            return int(fields[0]), int(fields[1])
    return None


def declared_size(buf: bytes | np.ndarray) -> tuple[int, int] | None:
    """``(width, height)`` an image's header declares (:func:`header_size`, else :func:`other_header_size`), read
    without decoding; ``None`` when neither knows the format."""
    return header_size(buf) or other_header_size(buf)


def decode_image(
    buf: bytes | np.ndarray, source: str, max_pixels: int = MAX_PIXELS, flags: int = -1, max_side: int | None = None
) -> np.ndarray:
    """Decode image bytes with OpenCV after checking the header's size against ``max_pixels`` (and
    ``max_side`` per side, if given).

    Raises :class:`ImageTooLarge` for an over-size image (before decoding) and :class:`DataError` for an
    empty or undecodable one, naming ``source``.
    """
    arr = np.frombuffer(buf, np.uint8) if isinstance(buf, bytes | bytearray) else buf
    if arr.size == 0:
        raise DataError(f"{source}: image file is empty")
    size = declared_size(arr)
    if size is None:  # no header we can size before decoding: refused, so no decoder runs unchecked
        raise DataError(f"{source}: not a readable image (corrupt or unsupported format)")
    if max_side is not None and max(size) > max_side:
        raise ImageTooLarge(f"image is {size[0]}x{size[1]}; the limit is {max_side} px per side")
    if size[0] * size[1] > max_pixels:
        raise ImageTooLarge(
            f"{source}: image is {size[0]}x{size[1]} px ({size[0] * size[1] / 1e6:.0f} MP), over the "
            f"{max_pixels / 1e6:.0f} MP limit"
        )
    img = cv2.imdecode(arr, cv2.IMREAD_UNCHANGED if flags == -1 else flags)
    if img is None:
        raise DataError(f"{source}: not a readable image (corrupt or unsupported format)")
    return img


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is no regular file one can read (``None`` when it is one): missing, a dangling symbolic
    link, a folder, or a special file (FIFO, socket, device), which must never be opened (a FIFO blocks)."""
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "dangling symbolic link (its target does not exist)" if os.path.islink(path) else "file not found"
    except OSError as e:
        return f"cannot read the file: {e.strerror or e}"
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return "a folder, not a file"
    kind = "FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "device"
    return f"not a regular file ({kind})"


def read_image(path: str | os.PathLike, channels: int = 1) -> np.ndarray:
    """Decode an image file to uint8 HxW (``channels=1``) or RGB HxWx3 (``channels=3``).

    Handles grey, BGR(A), palette and 16-bit files. Raises :class:`DataError` naming the file
    when it is missing, empty or cannot be decoded.
    """
    p = Path(path)
    problem = file_problem(p)
    if problem:
        raise DataError(f"{p}: {'image file not found' if problem == 'file not found' else problem}")
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as e:  # permission denied, I/O error, a file removed meanwhile: this file, not the run
        raise DataError(f"{p}: cannot read the file: {e.strerror or e}") from None
    img = decode_image(data, str(p))
    return to_uint8_channels(img, channels, source=str(p))


def to_uint8_channels(img: np.ndarray, channels: int, source: str = "<array>", bgr: bool = True) -> np.ndarray:
    """Convert any decoded image (grey/BGR/BGRA, 8 or 16 bit, float) to uint8 grey or RGB.

    ``bgr`` says whether a 3/4-channel input is in OpenCV's BGR order (True) or RGB (False).
    """
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        scale = 255.0 if img.max(initial=0) <= 1.0 else 1.0
        img = np.clip(img * scale, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DataError(f"{source}: unsupported pixel type {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return img if channels == 1 else np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise DataError(f"{source}: unsupported image shape {img.shape}")
    if img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR if bgr else cv2.COLOR_RGBA2RGB)
    if channels == 1:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if bgr else np.ascontiguousarray(img)


def crop_box(img: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """Crop ``(x, y, w, h)`` clipped to the image; ``None`` returns the image unchanged."""
    if box is None:
        return img
    x, y, w, h = (int(round(v)) for v in box)
    H, W = img.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if x1 <= x0 or y1 <= y0:
        return img
    return img[y0:y1, x0:x1]


def crop_resized(img: np.ndarray, box: tuple[int, int, int, int] | None, size: int) -> np.ndarray:
    """:func:`crop_box` resized to ``size`` x ``size`` (area-averaged when shrinking): how datasets and
    ``predict --whole-image`` turn a box into the model's input."""
    img = crop_box(img, box)
    if img.shape[0] != size or img.shape[1] != size:
        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
    return img
