"""Outputs of a live run: per-face CSV / JSON-lines rows (flushed every frame), video file, summary + timeline."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .results import face_columns

log = logging.getLogger(__name__)


class RowWriter:
    """Writes one row per face per frame to CSV (``.csv``) or JSON lines (``.jsonl``/``.json``).

    Every frame's rows are flushed to disk immediately, so a crash keeps everything written so far.
    """

    def __init__(self, path: str | Path, classes: Sequence[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.classes = list(classes)
        self.json = self.path.suffix.lower() in (".jsonl", ".json", ".ndjson")
        self._f = open(self.path, "w", newline="")
        self.columns = ["frame", "time_s", "source", *face_columns(self.classes)]
        if not self.json:
            self._csv = csv.writer(self._f)
            self._csv.writerow(self.columns)
        self.rows = 0

    def write(self, frame: int, time_s: float, results: Sequence, source: str = "") -> None:
        for r in results:
            vals = [frame, round(time_s, 4), source, *r.to_row()]
            if self.json:
                self._f.write(json.dumps(dict(zip(self.columns, vals, strict=True))) + "\n")
            else:
                self._csv.writerow(vals)
            self.rows += 1
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AVWriter:
    """Browser-playable video through PyAV (FFmpeg): H.264 in fragmented MP4 (``.mp4``/``.m4v``/``.mov``) or
    VP9 in WebM (``.webm``), yuv420p.

    Fragmented MP4 is written as it goes (a fragment per keyframe, one a second), so a killed run leaves a
    file that plays up to its last fragment; WebM (Matroska) is likewise readable up to the last cluster.
    """

    CODECS = {".mp4": "libx264", ".m4v": "libx264", ".mov": "libx264", ".webm": "libvpx-vp9"}

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        import av

        self.path = path
        ext = path.suffix.lower()
        # flush_packets: every finished fragment reaches the file at once (else FFmpeg's IO buffer holds it)
        options = {"flush_packets": "1"}
        if ext != ".webm":
            options["movflags"] = "frag_keyframe+empty_moov+default_base_moof"
        self._c = av.open(str(path), "w", options=options)
        rate = max(1, round(fps))
        self._s = self._c.add_stream(self.CODECS[ext], rate=rate)
        self._s.width, self._s.height = size[0] - size[0] % 2, size[1] - size[1] % 2  # yuv420p: even sizes
        self._s.pix_fmt = "yuv420p"
        self._s.options = (
            {"preset": "ultrafast", "tune": "zerolatency", "threads": "1", "crf": "23", "g": str(rate)}
            if ext != ".webm"
            else {"deadline": "realtime", "g": str(rate)}
        )
        self._av = av

    def write(self, frame_bgr: np.ndarray) -> None:
        frame = frame_bgr[: self._s.height, : self._s.width]
        for packet in self._s.encode(self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")):
            self._c.mux(packet)

    def release(self) -> None:
        if self._c is None:
            return
        for packet in self._s.encode():
            self._c.mux(packet)
        self._c.close()
        self._c = None


def open_video_writer(path: str | Path, fps: float, size: tuple[int, int]):
    """A video writer chosen by extension: H.264 MP4 / VP9 WebM through PyAV (plays in browsers), else
    OpenCV (MJPG ``.avi``, XVID ``.mkv``; mp4v ``.mp4`` when PyAV is missing). Raises if it cannot open."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in AVWriter.CODECS:
        try:
            return AVWriter(path, fps, size)
        except ImportError:
            log.warning(
                "PyAV is not installed (pip install av): %s is written as mp4v, which browsers do not play", path
            )
        except Exception as e:  # noqa: BLE001 - an FFmpeg build without the codec: fall back to OpenCV
            log.warning("PyAV cannot write %s (%s); falling back to OpenCV", path, e)
    fourcc = {".avi": "MJPG", ".mkv": "XVID", ".webm": "VP80"}.get(path.suffix.lower(), "mp4v")
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), max(1.0, fps), size)
    if not w.isOpened():
        raise OSError(f"{path}: cannot open video writer ({fourcc})")
    return w


class Summary:
    """Per-track label counts and a label timeline, for the end-of-run summary and plot."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        self.counts: dict[int, Counter] = defaultdict(Counter)
        self.timeline: dict[int, list[tuple[float, int]]] = defaultdict(list)
        self.frames = 0
        self.frames_with_faces = 0

    def add(self, time_s: float, results: Sequence) -> None:
        self.frames += 1
        self.frames_with_faces += bool(results)
        for r in results:
            self.counts[r.track_id][r.label] += 1
            self.timeline[r.track_id].append((time_s, self.classes.index(r.label)))

    def to_dict(self) -> dict:
        people = {}
        for tid, c in sorted(self.counts.items()):
            n = sum(c.values())
            people[str(tid)] = {
                "frames": n,
                "dominant": c.most_common(1)[0][0],
                "share": {k: round(c[k] / n, 4) for k in self.classes if c[k]},
            }
        return {"frames": self.frames, "frames_with_faces": self.frames_with_faces, "tracks": people}

    def plot(self, path: str | Path, min_frames: int = 3) -> Path | None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tracks = [t for t, v in self.timeline.items() if len(v) >= min_frames]
        if not tracks:
            return None
        fig, ax = plt.subplots(figsize=(10, 1.2 + 0.5 * len(tracks)))
        cmap = plt.get_cmap("tab10")
        for row, t in enumerate(sorted(tracks)):
            v = np.array(self.timeline[t])
            ax.scatter(v[:, 0], np.full(len(v), row), c=[cmap(int(k)) for k in v[:, 1]], s=12, marker="s")
        ax.set_yticks(range(len(tracks)), [f"#{t}" for t in sorted(tracks)])
        ax.set(xlabel="time (s)", title="Emotion timeline per person")
        handles = [plt.Line2D([], [], marker="s", ls="", color=cmap(i), label=c) for i, c in enumerate(self.classes)]
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=len(self.classes), fontsize=8)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
