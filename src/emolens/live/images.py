"""Still images: emotions of every face in files and folders, with optional annotated copies."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..imageio import IMAGE_EXT, DataError, read_image
from .detectors import Face
from .pipeline import Pipeline
from .render import draw_faces

log = logging.getLogger(__name__)

#: ``status`` of an image record: faces found, none found, or not read/analysed (``error`` says why).
FACES, NO_FACE, ERROR = "faces", "no face found", "error"


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, plus every image under each folder (recursively, sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            # a dangling link or a FIFO named like an image gets an error row; a folder is searched, not read
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXT and not f.is_dir())
            if not found:
                raise DataError(f"{p}: folder contains no images ({', '.join(IMAGE_EXT)})")
            out += found
        elif p.exists() or p.is_symlink():  # a dangling link named directly gets its own error row
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return out


def read_bgr(path: Path) -> np.ndarray:
    """Any image file (grey, RGBA, 16-bit...) as uint8 BGR; :class:`DataError` names unreadable files."""
    rgb = read_image(path, channels=3)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def predict_images(
    pipeline: Pipeline,
    paths: Iterable[Path],
    whole_image: bool = False,
    annotate: str | Path | None = None,
    progress: bool = True,
) -> Iterator[dict]:
    """One record per image, in order: ``{"file", "status", "width", "height", "faces": [...]}`` with status
    :data:`FACES` or :data:`NO_FACE`, or ``{"file", "status": ERROR, "error", "faces": []}`` for an image that
    could not be read or analysed (``error`` says why; the file is named by ``file`` only).

    ``whole_image`` skips detection and treats each image as one face (for pre-cropped datasets).
    """
    paths = list(paths)
    out_dir = Path(annotate) if annotate else None
    taken: set[str] = set()  # annotated names given out: a/x.jpg, b/x.jpg and x.png get x, x_2, x_3
    for path in tqdm(paths, desc="predict", disable=not progress, unit="img"):
        name = display_name(path)
        try:
            frame = read_bgr(path)
        except DataError as e:
            yield {"file": name, "status": ERROR, "error": _reason(e, path), "faces": []}
            continue
        try:
            results = predict_frame(pipeline, frame, whole_image)
        except Exception as e:  # noqa: BLE001 - one odd image must not end a batch: record it and go on
            log.debug("%s", name, exc_info=True)
            yield {"file": name, "status": ERROR, "error": f"{type(e).__name__}: {_reason(e, path)}", "faces": []}
            continue
        record = {
            "file": name,
            "status": FACES if results else NO_FACE,
            "width": frame.shape[1],
            "height": frame.shape[0],
            "faces": [r.to_record(track=False) for r in results],
        }
        if out_dir is not None:
            target = out_dir / _unique_name(path.stem, taken)
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
                ok, buf = cv2.imencode(".jpg", draw_faces(frame.copy(), results, pipeline.classes))
                # written by Python, not OpenCV: any file name the OS allows (also non-UTF-8) works
                target.write_bytes(buf.tobytes())
                record["annotated"] = display_name(target)
            except Exception as e:  # noqa: BLE001 - the image was read and analysed: keep its answer
                record["annotate_error"] = f"{type(e).__name__}: {e}"
        yield record


def _unique_name(stem: str, taken: set[str]) -> str:
    """``<stem>_emolens.jpg``, or ``<stem>_<n>_emolens.jpg`` when an earlier image already took that name."""
    name, n = f"{stem}_emolens.jpg", 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}_emolens.jpg"
    taken.add(name)
    return name


def predict_frame(pipeline: Pipeline, frame: np.ndarray, whole_image: bool = False) -> list:
    """Faces of one still BGR image, independent of anything processed before or after (no tracking or
    smoothing carried over). ``whole_image`` classifies the image itself as one face crop."""
    faces = [Face(np.array([0, 0, frame.shape[1], frame.shape[0]], np.float32))] if whole_image else None
    return pipeline.process(frame, 0, faces=faces, exact=whole_image, still=True)


def _reason(e: BaseException, path: Path) -> str:
    """``e``'s message without the file name it starts with (the record names the file)."""
    text = str(e)
    for prefix in (f"{path}: ", f"{display_name(path)}: "):
        text = text.removeprefix(prefix)
    return text


def display_name(path: Path | str) -> str:
    """``path`` as printable text, one text per file: bytes that are not valid UTF-8 (``surrogateescape``) are
    written as ``\\xNN`` escapes, so ``p\\xff.jpg`` and ``p\\xfe.jpg`` stay two names (U+FFFD would merge them)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
