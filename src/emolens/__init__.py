"""emolens: recognise emotions from facial expressions in images, video and webcams.

>>> import emolens
>>> faces = emolens.predict("photo.jpg")              # doctest: +SKIP
>>> [(f.label, round(f.confidence, 2)) for f in faces]  # doctest: +SKIP
[('happiness', 0.93)]
>>> faces.to_pandas()                                   # doctest: +SKIP  (one row per face; needs pandas)
>>> faces.save("photo_emolens.jpg")                     # doctest: +SKIP  (boxes and labels drawn)

Everything heavy (PyTorch, OpenCV) is imported on first use, so ``import emolens`` is instant.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if "torch" not in sys.modules:
    # OpenMP threads that finish their share of an operation sleep instead of spinning: on a machine other
    # programs keep busy, spinning threads take the cores the work needs and per-frame inference runs several
    # times slower (docs/performance.md). Set before PyTorch loads; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("KMP_BLOCKTIME", "0")  # the same for Intel's OpenMP runtime

from .labels import CLASSES, CLASSES_7  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .live.pipeline import FrameResult, Pipeline
    from .live.results import Results

__version__ = "0.1.0"
__all__ = ["CLASSES", "CLASSES_7", "__version__", "load_model", "predict", "stream"]

_default: Pipeline | None = None


def load_model(checkpoint: str | Path | None = None, **settings: Any) -> Pipeline:
    """A ready :class:`~emolens.live.pipeline.Pipeline`: the default bundled model (or ``checkpoint``: a file, or
    a bundled model's name such as ``"faceres_v2"``) behind a face detector, with the same defaults as the CLI
    and the server. ``settings`` are the fields of
    :class:`~emolens.live.settings.PipelineSettings`: ``detector`` (auto, yunet, haar), ``detector_model``,
    ``margin``, ``align``, ``smooth``, ``alpha``, ``window``, ``threads``, ``device``, ``onnx``, ``runtime``. A
    value outside its range (:data:`emolens.options.PIPELINE`, the same as the CLI flags') raises
    :class:`ValueError` before any model is loaded."""
    from .live.settings import PipelineSettings

    return PipelineSettings(checkpoint=str(checkpoint) if checkpoint else None, **settings).build()


def _pipeline(model: Pipeline | None) -> Pipeline:
    global _default
    if model is not None:
        return model
    if _default is None:
        _default = load_model()
    return _default


def predict(image: str | Path | np.ndarray | Any, model: Pipeline | None = None, whole_image: bool = False) -> Results:
    """Every face in one image: a file path, or a uint8 array (OpenCV BGR, or grey), as a
    :class:`~emolens.live.results.Results`: a list of faces with ``.to_pandas()``, ``.plot()`` and ``.save()``.

    Each call is independent of earlier ones (no tracking or smoothing across calls). ``whole_image``
    treats the image as one face crop. ``model`` is a pipeline from :func:`load_model` (default: the
    bundled model, created once).
    """
    import numpy as np

    from .imageio import DataError, to_uint8_channels
    from .live.images import display_name, predict_frame, read_bgr
    from .live.results import Results

    pipe = _pipeline(model)
    if isinstance(image, (str, Path)):
        frame, source = read_bgr(Path(image)), display_name(image)
    elif isinstance(image, np.ndarray):
        frame, source = to_uint8_channels(image, 3, source="array", bgr=True)[:, :, ::-1].copy(), ""  # -> BGR
    else:
        raise DataError(f"predict takes a file path or a numpy array, not {type(image).__name__}")
    return Results(predict_frame(pipe, frame, whole_image), frame, pipe.classes, source)


def stream(
    source: str | int, model: Pipeline | None = None, every: int = 1, max_frames: int | None = None
) -> Iterator[FrameResult]:
    """Per-frame results (:class:`~emolens.live.pipeline.FrameResult`) of a video file, camera index,
    stream URL or ``"screen"``, tracked and smoothed, as they are made."""
    from .options import STREAM, check_values

    check_values(STREAM, every=every, max_frames=max_frames)
    pipe = model if model is not None else load_model()
    return pipe.stream(source, every=every, max_frames=max_frames)
