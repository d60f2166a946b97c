"""Frame sources: webcam index, video file, network stream, or the screen; live sources drop stale frames."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

#: Largest video frame decoded (pixels), as :data:`emolens.imageio.MAX_PIXELS` for images.
MAX_FRAME_PIXELS = 120_000_000


class SourceError(RuntimeError):
    """A video source that cannot be opened or fails mid-stream; the message names the source."""


def _is_stream(spec: str) -> bool:
    return "://" in spec


class FrameSource:
    """Iterate ``(frame_index, time_s, bgr_frame)``.

    Files yield every frame (time from the file's FPS). Cameras, streams and the screen are *live*:
    a reader thread keeps only the newest frame, so slow processing skips frames instead of lagging.
    """

    def __init__(self, spec: str | int, max_frames: int | None = None) -> None:
        self.spec = str(spec)
        self.max_frames = max_frames
        self.live = self.spec.isdigit() or _is_stream(self.spec) or self.spec == "screen"
        self.expected_frames: int | None = None
        self.dropped = 0
        self.ended_early = False
        self.stop_reason: str | None = None
        self._screen = None
        if self.spec == "screen":
            try:
                import mss
            except ImportError:
                raise SourceError("screen capture needs the 'mss' package: pip install mss") from None
            self._screen = mss.mss()
            mon = self._screen.monitors[1]
            self.fps, self.size = 15.0, (mon["width"], mon["height"])
            return
        if not self.spec.isdigit() and not _is_stream(self.spec) and not Path(self.spec).is_file():
            raise SourceError(f"{self.spec}: video file not found")
        if not self.live:
            self._check_frame_size()
        self.cap = cv2.VideoCapture(int(self.spec) if self.spec.isdigit() else self.spec)
        if not self.cap.isOpened():
            what = "camera" if self.spec.isdigit() else "video"
            raise SourceError(f"{self.spec}: cannot open {what} (missing device, unsupported codec or not a video)")
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 0.0
        if not 0 < self.fps < 1000:
            self.fps = 25.0
        self.size = (int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        #: whether ``expected_frames`` is the length of the whole video (a fragmented MP4 only counts the
        #: fragments in the file: cut short, its count is not the video's)
        self.total_known = False
        if not self.live:
            from .container import fragmented_mp4

            n = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.expected_frames = n if n > 0 else None
            self.total_known = self.expected_frames is not None and not fragmented_mp4(self.spec)

    def _check_frame_size(self) -> None:
        """Refuse a file whose frames would be over :data:`MAX_FRAME_PIXELS` before OpenCV decodes one: the size
        the codec's own headers state (a container header can lie), see :func:`~.container.coded_frame_size`."""
        from .container import coded_frame_size

        try:
            size = coded_frame_size(self.spec)
        except ValueError:
            return  # not for FFmpeg's parser: OpenCV says below whether it can read it
        if size and size[0] * size[1] > MAX_FRAME_PIXELS:
            raise SourceError(
                f"{self.spec}: video frames are {size[0]}x{size[1]} px, over the "
                f"{MAX_FRAME_PIXELS / 1e6:.0f} MP limit (not decoded)"
            )

    def _grab_screen(self) -> np.ndarray:
        img = np.asarray(self._screen.grab(self._screen.monitors[1]))  # BGRA
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        return self._iter_live() if self.live else self._iter_file()

    def _iter_file(self) -> Iterator[tuple[int, float, np.ndarray]]:
        i = 0
        while self.max_frames is None or i < self.max_frames:
            ok, frame = self.cap.read()
            if not ok:
                if self.expected_frames and i < self.expected_frames - 1:
                    self.ended_early = True
                    self.stop_reason = f"{self.spec}: video ended early after {i} " + (
                        f"of {self.expected_frames} frames"
                        if self.total_known
                        else "frames (the file is cut short; how long the video was is unknown)"
                    )
                break
            if frame is None or frame.size == 0:
                raise SourceError(f"{self.spec}: empty frame at index {i}")
            yield i, i / self.fps, frame
            i += 1
        if i == 0:
            raise SourceError(f"{self.spec}: no frame could be decoded")

    def _iter_live(self) -> Iterator[tuple[int, float, np.ndarray]]:
        latest: list = [None, -1]
        error: list = [None]
        stop = threading.Event()
        cond = threading.Condition()

        def reader() -> None:
            n = 0
            while not stop.is_set():
                if self._screen is not None:
                    frame, ok = self._grab_screen(), True
                    time.sleep(1 / self.fps)
                else:
                    ok, frame = self.cap.read()
                if not ok:
                    error[0] = f"{self.spec}: stream stopped (camera disconnected or stream ended) after {n} frames"
                    with cond:
                        cond.notify_all()
                    return
                with cond:
                    if latest[0] is not None:
                        self.dropped += 1
                    latest[0], latest[1] = frame, n
                    cond.notify_all()
                n += 1

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        t0 = time.monotonic()
        count = 0
        try:
            while self.max_frames is None or count < self.max_frames:
                with cond:
                    while latest[0] is None and error[0] is None:
                        cond.wait(timeout=5.0)
                        if latest[0] is None and error[0] is None and not t.is_alive():
                            error[0] = f"{self.spec}: reader stopped"
                    if latest[0] is None:
                        self.ended_early = True
                        self.stop_reason = error[0]
                        if count == 0:
                            raise SourceError(error[0] or f"{self.spec}: no frames")
                        return
                    frame, idx = latest[0], latest[1]
                    latest[0] = None
                yield idx, time.monotonic() - t0, frame
                count += 1
        finally:
            stop.set()
            self.release()

    def release(self) -> None:
        if getattr(self, "cap", None) is not None:
            self.cap.release()
