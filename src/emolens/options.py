"""The allowed values of every numeric and choice setting, in tables shared by the ``emolens`` flags (argparse
``type=`` functions: a refused value is one line, ``--every must be >= 1 (got 0)``), the settings objects
(:class:`~emolens.live.settings.PipelineSettings`, ``BatchOptions``, ``ServeSettings``, ``TrainConfig``) and so
:func:`emolens.load_model`, which check them when they are made.

A setting with a range or a fixed set of values gets one line in its table (:data:`PIPELINE`, :data:`STREAM`,
:data:`BATCH`, :data:`SERVE` here; ``emolens.training.config.LIMITS`` next to ``TrainConfig``); the flag, its
``--help`` text and the check all follow from that line. Nothing here imports more than the standard library.
"""

from __future__ import annotations

import argparse
import math
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: Dataset kinds :func:`emolens.data.open_dataset` reads.
DATASETS = ("ferplus", "fer2013", "affectnet", "rafdb", "ckplus", "sfew", "folder")
#: Split names every dataset kind knows.
SPLITS = ("train", "val", "test")


class Limit:
    """What one setting may be: :meth:`check` refuses a Python value, :meth:`arg_type` a flag's text."""

    def describe(self) -> str:
        """The allowed values in words (for ``--help`` and errors): ``>= 1``, ``one of ema, window, none``."""
        raise NotImplementedError

    def ok(self, value: Any) -> bool:
        raise NotImplementedError

    def parse(self, text: str) -> Any:
        """A flag's ``text`` as a value of the setting's type (the text itself when it is none)."""
        return text

    def expected(self, value: Any) -> str:
        """What the refused ``value`` should have been, in words."""
        return self.describe()

    def check(self, name: str, value: Any) -> Any:
        """``value`` when allowed, else :class:`ValueError`: ``margin must be >= 0 and <= 1 (got -3)``."""
        if not self.ok(value):
            raise ValueError(f"{name} must be {self.expected(value)} (got {value!r})")
        return value

    def arg_type(self, flag: str) -> Callable[[str], Any]:
        """An argparse ``type=`` for ``flag``: parses and checks, refusing with the one-line message."""

        def convert(text: str) -> Any:
            value = self.parse(text)
            if not self.ok(value):
                shown = text if _is_number(text) else repr(text)
                raise argparse.ArgumentTypeError(f"{flag} must be {self.expected(value)} (got {shown})")
            return value

        convert.__name__ = flag.lstrip("-").replace("-", "_")
        convert.limit = self  # (tests find every checked flag by it)
        return convert

    def bad_values(self) -> list[str]:
        """Flag texts this limit refuses (for tests)."""
        raise NotImplementedError


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Range(Limit):
    """An ``int`` or a finite ``float`` within optional bounds (``lo_open``/``hi_open``: the bound itself is
    excluded); ``optional``: ``None`` is allowed too (a Python default, never a flag's value)."""

    kind: type = int
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    optional: bool = False

    def _bounds(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {_num(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {_num(self.hi)}")
        return " and ".join(parts)

    def _kind(self) -> str:
        return "an integer" if self.kind is int else "a number"

    def describe(self) -> str:
        return self._bounds() or self._kind()

    def _right_kind(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        return self.kind is float or isinstance(value, numbers.Integral)

    def expected(self, value: Any) -> str:
        if self._right_kind(value):
            return self.describe()
        return f"{self._kind()} {self._bounds()}".strip()

    def ok(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if not self._right_kind(value):
            return False
        v = float(value)
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def parse(self, text: str) -> Any:
        try:
            return int(text) if self.kind is int else float(text)
        except ValueError:
            return text  # not a number of this kind: refused by ok()

    def bad_values(self) -> list[str]:
        step = 1 if self.kind is int else 0.5
        out = ["abc"] + (["0.5"] if self.kind is int else ["nan"])
        if self.lo is not None:
            out.append(_num(self.lo if self.lo_open else self.lo - step))
        if self.hi is not None:  # (a large float bound: half again, since hi + 0.5 prints as hi in %g)
            out.append(
                _num(self.hi if self.hi_open else self.hi + max(step, abs(self.hi) / 2 if self.kind is float else step))
            )
        return out


@dataclass(frozen=True)
class OneOf(Limit):
    """One of a fixed set of values (strings, or numbers written as flags: ``--channels 3``; ``None`` stands for
    a Python default, never a flag's value)."""

    values: tuple

    def __init__(self, *values: Any) -> None:
        object.__setattr__(self, "values", tuple(values))

    def describe(self) -> str:
        return "one of " + ", ".join(str(v) for v in self.values if v is not None)

    def ok(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)

    def parse(self, text: str) -> Any:
        return next((v for v in self.values if v is not None and str(v) == text), text)

    def bad_values(self) -> list[str]:
        return ["nope"]


@dataclass(frozen=True)
class Matches(Limit):
    """A string matching ``pattern`` (in full); ``words`` says which ones in plain language."""

    pattern: str
    words: str
    bad: str = "nope"  # a value it refuses (for tests)

    def describe(self) -> str:
        return self.words

    def ok(self, value: Any) -> bool:
        return isinstance(value, str) and re.fullmatch(self.pattern, value) is not None

    def bad_values(self) -> list[str]:
        return [self.bad]


def check_fields(obj: object, limits: Mapping[str, Limit]) -> None:
    """Check each attribute of ``obj`` named in ``limits``; the first refused one raises :class:`ValueError`."""
    for name, limit in limits.items():
        limit.check(name, getattr(obj, name))


def check_values(limits: Mapping[str, Limit], **values: Any) -> None:
    """Check keyword ``values`` against their entries in ``limits`` (e.g. a function's arguments)."""
    for name, value in values.items():
        limits[name].check(name, value)


#: A PyTorch device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``xpu[:N]``.
DEVICE = Matches(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", "auto, cpu, cuda, cuda:N, mps or xpu[:N]", "tpu9")

#: A dataset split (``emolens evaluate/rebalance --split``).
SPLIT = OneOf(*SPLITS)

#: :class:`~emolens.live.settings.PipelineSettings`: what shapes a pipeline's answers.
PIPELINE: dict[str, Limit] = {
    "detector": OneOf("auto", "yunet", "haar"),
    "margin": Range(float, 0, 1),  # extra context per side, as a share of the trained crop (1: 3x its side)
    "smooth": OneOf("ema", "window", "none"),
    "alpha": Range(float, 0, 1, lo_open=True),
    "window": Range(int, 1),
    "tta": OneOf("none", "flip", "shift-flip", "scale"),
    "threads": Range(int, 0),  # 0: the CPU cores
    "device": DEVICE,
    "runtime": OneOf("auto", "torch", "onnxruntime"),
}

#: Streams (``emolens live``, :meth:`Pipeline.run`, :func:`emolens.stream`, batch videos).
STREAM: dict[str, Limit] = {
    "every": Range(int, 1),
    "max_frames": Range(int, 1, optional=True),
}

#: ``BatchOptions`` (``emolens batch``).
BATCH: dict[str, Limit] = {
    "ray": Matches(
        r"auto|none|ray://\S+|(\[[0-9a-fA-F:]+\]|[^\s:/\[\]]+):\d+",
        "auto, none, HOST:PORT or ray://HOST:PORT",
        "no where",
    ),
    "workers": Range(int, 0),  # 0: as many as the CPUs allow
    "cpus_per_worker": Range(float, 0, lo_open=True),
    "gpus_per_worker": Range(float, 0),
    "every": STREAM["every"],
    "images_per_task": Range(int, 1),
    "max_attempts": Range(int, 1),
}

#: ``ServeSettings`` (``emolens serve``).
SERVE: dict[str, Limit] = {  # upper bounds: far past any real use, short of overflowing a byte count or a timer
    "max_image_mb": Range(float, 0, 1e6, lo_open=True),
    "max_video_mb": Range(float, 0, 1e7, lo_open=True),
    "max_image_side": Range(int, 1, 1_000_000),
    "request_timeout_s": Range(float, 0, 1e6, lo_open=True),
    "body_timeout_s": Range(float, 0, 1e6, lo_open=True),
    "job_timeout_s": Range(float, 0, 1e7),  # 0: every job ends at once (tests)
    "max_queued_jobs": Range(int, 1, 1_000_000),
    "max_pending": Range(int, 1, 1_000_000),
    "max_streams": Range(int, 1, 1_000_000),
    "max_video_side": Range(int, 1, 1_000_000),
    "keep_hours": Range(float, 0, 1e6, lo_open=True),
    "max_disk_gb": Range(float, 0, 1e6, lo_open=True),
    "workers": Range(int, 1),
}
#: ``emolens serve --port``.
PORT = Range(int, 1, 65535)
