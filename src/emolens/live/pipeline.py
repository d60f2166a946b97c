"""The Static2Live pipeline: detect -> crop -> classify (batched) -> track -> smooth -> draw/write."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..geometry import FER_CROP_SCALE
from ..options import PIPELINE, STREAM, check_values
from . import render
from .classifier import EmotionClassifier
from .crop import crop_faces
from .detectors import Face, FaceDetector, create_detector
from .render import draw_faces
from .results import FaceResult, clip_box, face_columns  # noqa: F401 - re-exported
from .smoothing import Smoother
from .sources import FrameSource
from .tracker import IoUTracker
from .writers import RowWriter, Summary, open_video_writer

log = logging.getLogger(__name__)


@dataclass
class FrameResult:
    """One frame of a stream: its index, time (s), the BGR frame itself and its faces.

    ``fresh`` is False for the frames ``every`` does not classify (their faces are detected and tracked,
    each with its track's last probabilities).
    """

    index: int
    time_s: float
    frame: np.ndarray = field(repr=False)
    faces: list[FaceResult]
    fresh: bool = True


class StageTimer:
    """Accumulated seconds per named stage."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def add(self, stage: str, seconds: float) -> None:
        self.total[stage] += seconds
        self.calls[stage] += 1

    def ms_per_frame(self, frames: int) -> dict[str, float]:
        return {k: 1000 * v / max(frames, 1) for k, v in self.total.items()}


class Pipeline:
    """Composable per-frame processing; each stage is a plain object you can swap."""

    def __init__(
        self,
        classifier: EmotionClassifier | None = None,
        detector: FaceDetector | None = None,
        smoother: Smoother | None = None,
        tracker: IoUTracker | None = None,
        margin: float = 0.0,
        align: bool = False,
    ) -> None:
        self.classifier = classifier or EmotionClassifier()
        self.detector = detector or create_detector("haar")
        self.smoother = smoother or Smoother()
        self.tracker = tracker or IoUTracker()
        self.margin, self.align = PIPELINE["margin"].check("margin", margin), align
        self.timer = StageTimer()
        self._held: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # track -> last (smoothed, raw) probabilities

    @property
    def classes(self) -> list[str]:
        return self.classifier.classes

    def reset(self) -> None:
        """Forget all tracks and smoothing state (e.g. between unrelated images or videos)."""
        self.tracker.reset()
        self.smoother.reset()
        self._held.clear()

    def classify(self, frame: np.ndarray, faces: list[Face], exact: bool = False) -> np.ndarray:
        """Raw class probabilities for ``faces`` of ``frame`` (one batched forward pass).

        Faces are cut with the FER-like geometry of :mod:`emolens.geometry` for this detector's boxes;
        ``exact`` classifies each box as it is (a box that already is a face crop).
        """
        scale = getattr(self.detector, "crop_scale", FER_CROP_SCALE)
        crops = crop_faces(frame, faces, self.classifier.preprocess, self.margin, self.align, exact, scale)
        return self.classifier.predict(crops)

    def process(
        self,
        frame: np.ndarray,
        index: int = 0,
        faces: list[Face] | None = None,
        exact: bool = False,
        classify: bool = True,
        still: bool = False,
    ) -> list[FaceResult]:
        """Detect (unless ``faces`` given), classify, track and smooth the faces of one BGR frame.

        ``exact`` classifies the given ``faces`` boxes as they are instead of cutting the FER-like crop.
        ``classify=False`` (``--every N``'s in-between frames) still detects and tracks every face, but
        reuses each known track's last probabilities; only faces of new tracks are classified.
        ``still``: a photo, on its own: no tracking and no smoothing (``track_id`` is ``None``), nothing kept.
        """
        t = time.perf_counter()
        if faces is None:
            faces = self.detector.detect(frame)
        if still:  # no tracker: every face is new, has no ID and keeps nothing
            ids: list[int | None] = [None] * len(faces)
        else:
            ids, dropped = self.tracker.update(np.array([f.box for f in faces]).reshape(-1, 4), index)
            self.smoother.drop(dropped)
            for tid in dropped:
                self._held.pop(tid, None)
        t1 = time.perf_counter()
        todo = [i for i, tid in enumerate(ids) if classify or still or tid not in self._held]
        probs: list[np.ndarray | None] = [None] * len(faces)
        if todo:
            for i, p in zip(todo, self.classify(frame, [faces[i] for i in todo], exact), strict=True):
                probs[i] = p
        t2 = time.perf_counter()
        out = []
        H, W = frame.shape[:2]
        classes = tuple(self.classes)
        for f, p, tid in zip(faces, probs, ids, strict=True):
            if p is None:  # a known face on a frame that is not classified: hold its last result
                sp, p = self._held[tid]
            elif still:
                sp = p
            else:
                sp = self.smoother.update(tid, p)
                self._held[tid] = (sp, p)
            k = int(np.argmax(sp))
            box = clip_box(f.box, W, H)
            out.append(FaceResult(box, tid, sp, classes[k], float(sp[k]), f.score, p, classes, f.landmarks))
        t3 = time.perf_counter()
        self.timer.add("detect", t1 - t)  # (with tracking)
        self.timer.add("classify", t2 - t1)
        self.timer.add("track", t3 - t2)  # (smoothing and results)
        return out

    def stream(self, source: str | int, every: int = 1, max_frames: int | None = None) -> Iterator[FrameResult]:
        """Per-frame results of a video file, camera index, stream URL or ``"screen"``, as they are made.

        Tracking and smoothing start fresh for each stream. ``every`` classifies every Nth frame of a file;
        the frames in between (``fresh=False``) are still detected and tracked, each face keeping its
        track's last emotion. Closing the generator (or
        breaking out of the loop) releases the source.
        """
        check_values(STREAM, every=every, max_frames=max_frames)
        src = FrameSource(source, max_frames=max_frames)
        try:
            yield from self.frames(src, every)
        finally:
            src.release()

    def frames(self, src: FrameSource, every: int = 1) -> Iterator[FrameResult]:
        """Per-frame results of an open :class:`FrameSource` (tracking and smoothing start fresh); the
        caller keeps the source (its ``size``, ``fps``, ``ended_early``) and releases it."""
        check_values(STREAM, every=every)
        self.reset()
        t_prev = time.perf_counter()
        for i, ts, frame in src:
            self.timer.add("decode", time.perf_counter() - t_prev)
            fresh = i % every == 0 or src.live
            yield FrameResult(i, ts, frame, self.process(frame, i, classify=fresh), fresh)
            t_prev = time.perf_counter()

    def run(
        self,
        source: str | int,
        output: str | Path | None = None,
        rows: str | Path | None = None,
        show: bool = False,
        every: int = 1,
        max_frames: int | None = None,
        bars: bool = False,
        draw_fps: bool = False,
        summary_dir: str | Path | None = None,
        progress: bool = True,
        on_frame: Callable[[int, int | None], None] | None = None,
        stop: Callable[[], str | None] | None = None,
        name: str | None = None,
    ) -> dict:
        """Process a video/camera/stream/screen; write annotated video, per-face rows and a summary.

        ``name`` is how the source is called in the rows, the summary and its messages (default: as given; the
        server passes the upload's file name so no server path leaves it).

        Built on :meth:`stream`. The ``show`` window carries an FPS counter; ``draw_fps`` burns it into the
        ``output`` video too (which otherwise holds the boxes and labels only). ``on_frame(frames_done,
        frames_expected)`` is called after each frame (progress reporting). ``stop()`` is asked after each frame:
        a reason string ends the run there, cleanly (files closed, ``stop_reason`` set to it). Rows are flushed
        every frame and the video writer is released on any error, so work done before a failure is kept.
        Returns the summary dict (also written as ``summary.json``).
        """
        check_values(STREAM, every=every, max_frames=max_frames)
        src = FrameSource(source, max_frames=max_frames)
        label = name or src.spec
        self.timer = StageTimer()  # stage timings of this run only
        writer = RowWriter(rows, self.classes) if rows else None
        video = None
        summary = Summary(self.classes)
        window = "emolens" if show and _has_display() else None
        if show and window is None:
            log.warning("no display available: --show ignored, writing files only")
        t_start, n, stopped, interrupted = time.perf_counter(), 0, None, False
        total = src.expected_frames if not src.live else None
        if max_frames and total:
            total = min(total, max_frames)
        try:
            frames = tqdm(self.frames(src, every), total=total, desc=f"live {src.spec}", disable=not progress)
            for fr in frames:
                t0 = time.perf_counter()
                if writer:  # every face of every frame (with --every N too)
                    writer.write(fr.index, fr.time_s, fr.faces, label)
                summary.add(fr.time_s, fr.faces)
                n += 1
                frame = fr.frame
                if output or window:
                    t1 = time.perf_counter()
                    draw_faces(frame, fr.faces, self.classes, bars=bars)
                    fps_now = n / max(time.perf_counter() - t_start, 1e-6)
                    if draw_fps:
                        render.draw_fps(frame, fps_now)
                    self.timer.add("draw", time.perf_counter() - t1)
                if output:
                    t1 = time.perf_counter()
                    if video is None:
                        video = open_video_writer(
                            output, src.fps if not src.live else 15.0, (frame.shape[1], frame.shape[0])
                        )
                    video.write(frame)
                    self.timer.add("encode", time.perf_counter() - t1)
                if window:  # the window always shows the FPS; the saved video only with draw_fps
                    cv2.imshow(
                        window, frame if draw_fps else render.draw_fps(frame.copy() if output else frame, fps_now)
                    )
                    if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                        break
                self.timer.add("loop", time.perf_counter() - t0)
                if on_frame is not None:
                    on_frame(n, total)
                if stop is not None and (reason := stop()):
                    stopped = reason
                    break
        except KeyboardInterrupt:  # Ctrl-C: the files are closed and the summary written, then it goes on up
            stopped, interrupted = "interrupted (Ctrl-C)", True
        finally:
            if writer:
                writer.close()
            if video is not None:
                video.release()
            src.release()
            if window:
                cv2.destroyAllWindows()
        elapsed = time.perf_counter() - t_start
        result = summary.to_dict()
        result.update(
            source=label,
            frames_read=n,
            seconds=round(elapsed, 3),
            fps=round(n / max(elapsed, 1e-9), 2),
            dropped_frames=src.dropped,
            ended_early=src.ended_early,
            stage_ms=self.timer.ms_per_frame(n),
        )
        reason = stopped or src.stop_reason
        result["stop_reason"] = reason.replace(str(src.spec), label) if reason else None
        result["stopped"] = stopped is not None
        if src.ended_early:
            log.warning("%s; the %d frames read so far are saved", src.stop_reason, n)
        if summary_dir:
            import json

            d = Path(summary_dir)
            d.mkdir(parents=True, exist_ok=True)
            (d / "summary.json").write_text(json.dumps(result, indent=2))
            summary.plot(d / "timeline.png")
        if interrupted:
            raise KeyboardInterrupt
        return result


def _has_display() -> bool:
    import os

    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or os.name == "nt"
