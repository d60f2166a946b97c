"""What the pipeline answers for a face: :class:`FaceResult`, one record that every output (live rows, predict
JSON and CSV, batch tables, the HTTP API) serialises the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class FaceResult:
    """One face in one frame: box, track ID, smoothed probabilities and label.

    ``box`` is ``(x, y, w, h)`` in pixels of the frame, clipped to it. It owns its serialisation, one rounding for
    every output (box 0.1 px, detector score 4 decimals, confidence and probabilities 5): :meth:`to_row` gives the
    values of :func:`face_columns` (the CSV / JSON-lines / Parquet tables of live, batch and predict),
    :meth:`to_record` the nested dict of ``emolens predict --json`` and the HTTP API.
    """

    box: np.ndarray
    track_id: int | None
    probs: np.ndarray
    label: str
    confidence: float
    det_score: float = 1.0
    raw_probs: np.ndarray | None = field(default=None, repr=False)
    classes: tuple[str, ...] = field(default=(), repr=False)
    #: five (x, y) points (eyes, nose tip, mouth corners) where the detector gives them (YuNet), else ``None``
    landmarks: np.ndarray | None = field(default=None, repr=False)

    def to_row(self, track: bool = True) -> list:
        """The values of :func:`face_columns` (``track_id`` is ``None`` unless ``track``)."""
        return [
            int(self.track_id) if track and self.track_id is not None else None,
            *(round(float(v), 1) for v in self.box),
            round(float(self.det_score), 4),
            self.label,
            round(float(self.confidence), 5),
            *(round(float(p), 5) for p in self.probs),
        ]

    def to_record(self, track: bool = True) -> dict:
        """Plain JSON-able dict: box, track_id (``None`` unless ``track``), det_score, label, confidence, probs."""
        tid, x, y, w, h, det, label, conf, *probs = self.to_row(track)
        return {
            "box": {"x": x, "y": y, "w": w, "h": h},
            "track_id": tid,
            "det_score": det,
            "label": label,
            "confidence": conf,
            "probs": dict(zip(self.classes, probs, strict=True)),
        }

    def to_json(self, track: bool = True) -> str:
        import json

        return json.dumps(self.to_record(track))


def face_columns(classes: Sequence[str]) -> list[str]:
    """The columns of :meth:`FaceResult.to_row`, in every per-face table (live CSV/JSON lines, batch Parquet,
    predict CSV): track, box, detector score, label, confidence, then one probability per class."""
    return ["track_id", "x", "y", "w", "h", "det_score", "label", "confidence", *[f"p_{c}" for c in classes]]


def clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(x, y, w, h)`` cut to the part inside a ``width`` x ``height`` frame."""
    x, y, w, h = (float(v) for v in box)
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, x0), width), min(max(y + h, y0), height)
    return np.array([x0, y0, x1 - x0, y1 - y0], np.float32)


#: YuNet's five landmarks, in its order: right eye, left eye, nose tip, right and left mouth corners.
LANDMARKS = ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")


class Results(list):
    """The faces of one image (a list of :class:`FaceResult`), as :func:`emolens.predict` returns them, with the
    image they were found in: :meth:`to_pandas` (one row per face), :meth:`plot` (the annotated image) and
    :meth:`save` (that image, to a file)."""

    def __init__(
        self, faces: Sequence[FaceResult], image: np.ndarray, classes: Sequence[str], source: str = ""
    ) -> None:
        super().__init__(faces)
        self.image, self.classes, self.source = image, tuple(classes), source

    def columns(self) -> list[str]:
        """The columns of :meth:`to_pandas`: file, frame, the face columns, with the landmarks after the box."""
        cols = face_columns(self.classes)
        marks = [f"{n}_{a}" for n in LANDMARKS for a in "xy"]
        return ["file", "frame", *cols[:5], *marks, *cols[5:]]

    def to_rows(self) -> list[list]:
        """One list of :meth:`columns` values per face (landmarks ``None`` where the detector gives none)."""
        rows = []
        for f in self:
            tid, x, y, w, h, *rest = f.to_row(track=False)
            marks = [None] * 2 * len(LANDMARKS)
            if f.landmarks is not None:
                marks = [round(float(v), 1) for v in np.asarray(f.landmarks).reshape(-1)[: len(marks)]]
            rows.append([self.source, 0, tid, x, y, w, h, *marks, *rest])
        return rows

    def to_pandas(self):
        """A ``pandas.DataFrame``, one row per face (none for an image without faces): file, frame, track_id, box
        ``x, y, w, h``, the five landmarks, detector score, label, confidence and one ``p_<class>`` per class."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas needs pandas: pip install pandas (or emolens[pandas])") from None
        return pd.DataFrame(self.to_rows(), columns=self.columns())

    def plot(self, bars: bool = False) -> np.ndarray:
        """A copy of the image (BGR) with each face's box and label drawn, as ``emolens predict --annotate``."""
        from .render import draw_faces

        return draw_faces(self.image.copy(), self, self.classes, bars=bars)

    def save(self, path: str | Path, bars: bool = False) -> Path:
        """Write :meth:`plot`'s image to ``path`` (its extension picks the format); returns the path."""
        import cv2

        path = Path(path)
        ok, buf = cv2.imencode(path.suffix or ".jpg", self.plot(bars))
        if not ok:
            raise ValueError(f"{path}: cannot encode an image with this extension")
        path.write_bytes(buf.tobytes())
        return path
