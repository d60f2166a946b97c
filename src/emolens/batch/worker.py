"""The work of one batch worker: a model loaded once, then whole files analysed one after another.

The same class runs in-process and as a Ray actor, so both give the same results.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..live.results import face_columns as live_face_columns
from ..live.settings import PipelineSettings
from .inputs import MediaFile


def face_columns(classes: list[str]) -> list[str]:
    """Columns of the batch faces table: file, frame, time, then the per-face columns of ``emolens live``."""
    return ["file", "frame", "time_s", *live_face_columns(classes)]


@dataclass
class FileResult:
    """What one file gave: its face rows (column -> list) and a summary record, or an error."""

    file: MediaFile
    record: dict
    rows: dict[str, list] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.record.get("status") == "ok"


class Rows:
    """Face rows of one file, collected column-wise."""

    def __init__(self, classes: list[str]) -> None:
        self.classes = classes
        self.cols: dict[str, list] = {c: [] for c in face_columns(classes)}
        self.labels: Counter = Counter()

    def add(self, file: str, frame: int, time_s: float, faces: list, track: bool) -> None:
        for f in faces:  # the live CSV's row (FaceResult.to_row), so the tables agree to the digit
            for name, v in zip(self.cols, [file, frame, round(float(time_s), 4), *f.to_row(track)], strict=True):
                self.cols[name].append(v)
            self.labels[f.label] += 1

    def __len__(self) -> int:
        return len(self.cols["file"])


class FileAnalyzer:
    """Holds one pipeline (model + detector) and analyses files with it.

    Videos run through :meth:`Pipeline.frames` (tracking and smoothing per file, exactly as ``emolens
    live``); images through the still-image step of ``emolens predict`` (no tracking, no smoothing).
    """

    def __init__(self, settings: PipelineSettings, every: int = 1, whole_image: bool = False) -> None:
        import cv2

        if settings.threads:
            cv2.setNumThreads(settings.threads)
        self.pipeline = settings.build()
        self.every, self.whole_image = every, whole_image
        self.classes = list(self.pipeline.classes)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.node = self.worker
        try:  # inside a Ray actor: the node it runs on
            import ray

            if ray.is_initialized():
                self.node = ray.get_runtime_context().get_node_id()
        except ImportError:
            pass

    def info(self) -> dict:
        """Who this worker is, and what it runs (for the run's log)."""
        return {"worker": self.worker, "node": self.node, "classes": self.classes}

    def analyze(self, files: list[MediaFile]) -> list[FileResult]:
        """One result per file, in order; a file that cannot be read gives an error record, not an exception."""
        return [self.analyze_one(f) for f in files]

    def analyze_one(self, file: MediaFile) -> FileResult:
        t0 = time.perf_counter()
        rows = Rows(self.classes)
        record: dict = {"file": file.path, "kind": file.kind, "size": file.size, "mtime_ns": file.mtime_ns}
        try:
            if file.problem:  # never opened (a FIFO would block)
                raise OSError(f"{file.path}: {file.problem}")
            if file.kind == "image":
                record.update(self._image(file, rows))
            else:
                record.update(self._video(file, rows))
        except Exception as e:  # noqa: BLE001 - one bad file is recorded and the run goes on
            msg = str(e) if file.path in str(e) else f"{file.path}: {e}"
            record.update(status="failed", error=f"{type(e).__name__}: {msg}")
            return FileResult(file, self._stamp(record, t0))
        n = len(rows)
        record.update(
            status="ok",
            faces=n,
            dominant=rows.labels.most_common(1)[0][0] if n else None,
            **{f"share_{c}": (rows.labels[c] / n if n else None) for c in self.classes},
        )
        return FileResult(file, self._stamp(record, t0), rows.cols)

    def _stamp(self, record: dict, t0: float) -> dict:
        record.update(seconds=round(time.perf_counter() - t0, 4), worker=self.worker, node=self.node)
        return record

    def _image(self, file: MediaFile, rows: Rows) -> dict:
        from ..live.images import predict_frame, read_bgr

        frame = read_bgr(Path(file.path))
        faces = predict_frame(self.pipeline, frame, self.whole_image)
        rows.add(file.path, 0, 0.0, faces, track=False)
        h, w = frame.shape[:2]
        return {"frames": 1, "frames_with_faces": int(bool(faces)), "tracks": None, "width": w, "height": h}

    def _video(self, file: MediaFile, rows: Rows) -> dict:
        from ..live.sources import FrameSource

        src = FrameSource(file.path)
        tracks: set[int] = set()
        frames = with_faces = 0
        try:
            for fr in self.pipeline.frames(src, self.every):
                rows.add(file.path, fr.index, fr.time_s, fr.faces, track=True)
                tracks.update(f.track_id for f in fr.faces)
                frames += 1
                with_faces += bool(fr.faces)
        finally:
            src.release()
        out = {
            "frames": frames,
            "frames_with_faces": with_faces,
            "tracks": len(tracks),
            "width": src.size[0],
            "height": src.size[1],
            "fps": round(float(src.fps), 3),
            "duration_s": round(frames / src.fps, 3),
        }
        if src.ended_early:
            out["warning"] = src.stop_reason
        return out


def probe_frames(file: MediaFile) -> int:
    """Frames a file is expected to give (1 for an image; a video's frame count from its header, else 1)."""
    if file.kind == "image" or file.problem:
        return 1
    import cv2

    cap = cv2.VideoCapture(file.path)
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()
    return max(n, 1)
