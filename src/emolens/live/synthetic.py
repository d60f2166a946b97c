"""Synthetic test clips: real face images composited on a textured background, moving, with known boxes.

Used for the bundled sample (``--source sample``), the tracking tests and ``benchmarks/live_speed.py``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from .writers import open_video_writer


def sample_face() -> np.ndarray:
    """The bundled sample face (NASA astronaut portrait, public domain), BGR."""
    path = resources.files("emolens") / "assets" / "astronaut_face.jpg"
    img = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise RuntimeError(f"{path}: bundled sample image is unreadable (broken install?)")
    return img


def background(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A smooth colour gradient with low-contrast blobs: textured, but nothing face-like."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = np.stack([90 + 60 * xx / w, 110 + 40 * yy / h, 140 - 50 * xx / w], axis=2)
    noise = cv2.GaussianBlur(rng.normal(0, 25, (h, w, 1)).astype(np.float32), (0, 0), 9)
    return np.clip(bg + noise[:, :, None].reshape(h, w, 1), 0, 255).astype(np.uint8)


def _layout(n: int, size: tuple[int, int]) -> list[tuple[float, float, float, float]]:
    """Cells (x, y, w, h) of a grid with room for ``n`` faces."""
    w, h = size
    cols = int(np.ceil(np.sqrt(n * w / h)))
    rows = int(np.ceil(n / cols))
    cw, ch = w / cols, h / rows
    return [((k % cols) * cw, (k // cols) * ch, cw, ch) for k in range(n)]


def make_clip(
    faces: list[np.ndarray],
    path: str | Path,
    n_frames: int = 60,
    size: tuple[int, int] = (640, 480),
    fps: float = 25.0,
    seed: int = 0,
    face_px: int | None = None,
) -> list[list[tuple[int, np.ndarray]]]:
    """Write a clip of ``faces`` (BGR or grey images) each drifting inside its own grid cell.

    Returns the ground truth per frame: ``[(face_index, box x,y,w,h), ...]``.
    """
    bg = background(size, seed)
    cells = _layout(len(faces), size)
    side = face_px or int(min(min(c[2], c[3]) for c in cells) * 0.72)
    tiles = []
    for f in faces:
        f = cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) if f.ndim == 2 else f
        tiles.append(
            cv2.resize(f, (side, side), interpolation=cv2.INTER_CUBIC if f.shape[0] < side else cv2.INTER_AREA)
        )
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, (len(faces), 2))
    truth: list[list[tuple[int, np.ndarray]]] = []
    writer = open_video_writer(path, fps, size)
    try:
        for t in range(n_frames):
            frame = bg.copy()
            boxes = []
            for k, (cx, cy, cw, ch) in enumerate(cells):
                free_x, free_y = max(0.0, cw - side), max(0.0, ch - side)
                x = int(cx + free_x / 2 * (1 + np.sin(2 * np.pi * t / 90 + phase[k, 0])))
                y = int(cy + free_y / 2 * (1 + np.sin(2 * np.pi * t / 70 + phase[k, 1])))
                x, y = min(x, size[0] - side), min(y, size[1] - side)
                frame[y : y + side, x : x + side] = tiles[k]
                boxes.append((k, np.array([x, y, side, side], np.float32)))
            writer.write(frame)
            truth.append(boxes)
    finally:
        writer.release()
    return truth


#: File name of the sample clip that ``emolens live --source sample`` writes.
SAMPLE_NAME = "emolens_sample.mp4"


def sample_video(path: str | Path | None = None, n_frames: int = 75) -> Path:
    """The bundled demo clip, written to ``path`` (default: ``emolens_sample.mp4`` in the cache folder,
    ``$EMOLENS_CACHE`` or ``~/.cache/emolens``): three copies of the sample face (one mirrored) moving on a
    background."""
    if path is None:
        from ..download import default_cache_dir

        path = default_cache_dir() / SAMPLE_NAME
    path = Path(path)
    face = sample_face()
    make_clip([face, cv2.flip(face, 1), face], path, n_frames=n_frames)
    return path
