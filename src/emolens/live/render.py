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


def draw_faces(frame: np.ndarray, results: Sequence, classes: Sequence[str], bars: bool = False) -> np.ndarray:
    """Annotate ``frame`` in place with every :class:`~emolens.live.pipeline.FaceResult`; returns it."""
    H, W = frame.shape[:2]
    thick = max(1, round(min(H, W) / 360))
    scale = max(0.4, min(H, W) / 900)
    for r in results:
        x, y, w, h = (int(round(v)) for v in r.box)
        colour = COLOURS.get(r.label, (180, 180, 180))
        cv2.rectangle(frame, (x, y), (x + w, y + h), colour, 2 * thick)
        text = f"#{r.track_id} {r.label} {100 * r.confidence:.0f}%"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        # above the box; at the top edge inside it (below it would cover the face underneath)
        ty = y - 4 if y - th - base - 4 > 0 else y + th + 2 * thick + 2
        tx = max(0, min(x, W - tw - 4))  # keep the label inside the frame
        cv2.rectangle(frame, (tx, ty - th - base), (tx + tw + 4, ty + base), colour, -1)
        cv2.putText(frame, text, (tx + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
        if bars:
            bx, bh = x + w + 4, max(8, round(12 * scale))
            for i, (c, p) in enumerate(zip(classes, r.probs, strict=True)):
                by = y + i * (bh + 2)
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
