"""Per-track temporal smoothing of class probabilities, to stop labels flickering between frames."""

from __future__ import annotations

from collections import deque

import numpy as np

from ..options import PIPELINE, check_values


class Smoother:
    """``mode="ema"``: p_t = alpha * p + (1 - alpha) * p_{t-1}; ``"window"``: mean of the last ``window``
    frames; ``"none"``: pass-through. State is kept per track ID.
    """

    def __init__(self, mode: str = "ema", alpha: float = 0.35, window: int = 8) -> None:
        check_values(PIPELINE, smooth=mode, alpha=alpha, window=window)
        self.mode, self.alpha, self.window = mode, alpha, window
        self._ema: dict[int, np.ndarray] = {}
        self._win: dict[int, deque] = {}

    def update(self, track_id: int, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs, np.float32)
        if self.mode == "none":
            return probs
        if self.mode == "ema":
            prev = self._ema.get(track_id)
            cur = probs if prev is None else self.alpha * probs + (1 - self.alpha) * prev
            self._ema[track_id] = cur
            return cur
        q = self._win.setdefault(track_id, deque(maxlen=self.window))
        q.append(probs)
        return np.mean(q, axis=0)

    def reset(self) -> None:
        self._ema.clear()
        self._win.clear()

    def drop(self, track_ids) -> None:
        for t in track_ids:
            self._ema.pop(t, None)
            self._win.pop(t, None)
