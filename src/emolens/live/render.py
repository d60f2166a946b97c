"""Draw boxes, labels, confidences and optional probability bars onto BGR frames."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# BGR colour per emotion (anything else: grey).
COLOURS = {
    "neutral": (200, 200, 200),
    "happiness": (0, 215, 255),
    "sadness": (255, 120, 40),
    "surprise": (255, 0, 255),
    "fear": (130, 0, 130),
    "disgust": (0, 160, 0),
    "anger": (0, 0, 230),
    "contempt": (0, 120, 200),
}


def fit_text(text: str, width: int, scale: float, thick: int) -> tuple[float, tuple[int, int], int]:
    """The largest font scale up to ``scale`` at which ``text`` (plus a 4 px pad) fits ``width`` px, with its size
    and baseline (as ``cv2.getTextSize``); tiny images get the smallest readable scale."""
    while True:
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        if tw + 4 <= width or scale <= 0.25:
            return scale, (tw, th), base
        scale *= 0.85


def bar_panel(box: Sequence[float], n: int, W: int, H: int, scale: float) -> tuple[int, int, int, int]:
    """Where the probability bars go: ``(x, y, bar height, panel width)``, right of the box if they fit there,
    else left of it, else against the frame's right edge; moved up if they would run off the bottom."""
    x, y, w, _ = (int(round(v)) for v in box)
    bh = max(8, round(12 * scale))
    (lw, _), _ = cv2.getTextSize("surp", cv2.FONT_HERSHEY_SIMPLEX, scale * 0.7, 1)
    pw = int(122 * scale) + lw + 2
    bx = x + w + 4
    if bx + pw > W:
        bx = x - 4 - pw if x - 4 - pw >= 0 else max(0, W - pw)
    by = max(0, min(y, H - n * (bh + 2)))
    return bx, by, bh, pw


def draw_faces(frame: np.ndarray, results: Sequence, classes: Sequence[str], bars: bool = False) -> np.ndarray:
    """Annotate ``frame`` in place with every :class:`~emolens.live.pipeline.FaceResult`; returns it. Labels and
    bars stay inside the frame (smaller text on small images)."""
    H, W = frame.shape[:2]
    thick = max(1, round(min(H, W) / 360))
    for r in results:
        scale = max(0.4, min(H, W) / 900)
        x, y, w, h = (int(round(v)) for v in r.box)
        colour = COLOURS.get(r.label, (180, 180, 180))
        cv2.rectangle(frame, (x, y), (x + w, y + h), colour, 2 * thick)
        text = f"{r.label} {100 * r.confidence:.0f}%"
        scale, (tw, th), base = fit_text(f"#{r.track_id} {text}", W, scale, thick)
        if tw + 4 <= W:  # the track id only where there is room for it
            text = f"#{r.track_id} {text}"
        else:
            scale, (tw, th), base = fit_text(text, W, scale, thick)
        # above the box; at the top edge inside it (below it would cover the face underneath)
        ty = y - 4 if y - th - base - 4 > 0 else min(H - base - 1, max(th + 1, y + th + 2 * thick + 2))
        tx = max(0, min(x, W - tw - 4))  # keep the label inside the frame
        cv2.rectangle(frame, (tx, ty - th - base), (tx + tw + 4, ty + base), colour, -1)
        cv2.putText(frame, text, (tx + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
        if bars:
            bx, by0, bh, _ = bar_panel(r.box, len(classes), W, H, scale)
            for i, (c, p) in enumerate(zip(classes, r.probs, strict=True)):
                by = by0 + i * (bh + 2)
                cv2.rectangle(frame, (bx, by), (bx + int(60 * scale * 2 * p), by + bh), COLOURS.get(c, (180,) * 3), -1)
                cv2.putText(
                    frame,
                    c[:4],
                    (bx + int(122 * scale), by + bh - 1),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    scale * 0.7,
                    (255, 255, 255),
                    1,
                    cv2.LINE_AA,
                )
    return frame


def draw_fps(frame: np.ndarray, fps: float) -> np.ndarray:
    cv2.putText(frame, f"{fps:.1f} FPS", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 0), 2, cv2.LINE_AA)
    return frame
