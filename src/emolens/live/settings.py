"""One settings object for the inference pipeline: the same defaults for the CLI, Python and the server."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from ..options import PIPELINE, check_fields

if TYPE_CHECKING:  # pragma: no cover
    from .classifier import EmotionClassifier
    from .detectors import FaceDetector
    from .pipeline import Pipeline


@dataclass
class PipelineSettings:
    """Everything that shapes what a pipeline answers, with the defaults every entry point shares.

    ``emolens predict/live/serve`` flags, :func:`emolens.load_model` keywords and ``ServeSettings.pipeline``
    are this object's fields. Each value is checked against :data:`emolens.options.PIPELINE` when the object is
    made (:class:`ValueError` names the field and its range).
    """

    checkpoint: str | None = None  # None: the bundled model
    onnx: str | None = None  # run this ONNX export instead of the PyTorch checkpoint
    runtime: str = "auto"  # auto | torch | onnxruntime: what runs the classifier (auto: ONNX Runtime on the CPU)
    detector: str = "auto"  # auto | yunet | haar
    detector_model: str | None = None  # local YuNet ONNX file
    margin: float = 0.0  # extra context per side around the FER-like crop
    align: bool = False  # level the eyes (YuNet landmarks)
    smooth: str = "ema"  # ema | window | none (streams; still images are never smoothed)
    alpha: float = 0.35  # EMA weight of the newest frame
    window: int = 8  # frames averaged by smooth="window"
    tta: str = "none"  # none | flip | shift-flip | scale: average the classifier over views of a face (2x/10x/2.3x)
    threads: int = 0  # PyTorch threads; 0: chosen per batch, up to the CPU cores (serve: shared out among workers)
    device: str = "cpu"  # cpu | cuda | cuda:N | auto

    def __post_init__(self) -> None:
        check_fields(self, PIPELINE)

    @classmethod
    def from_namespace(cls, ns: object) -> PipelineSettings:
        """The fields present on ``ns`` (e.g. parsed CLI arguments); the rest keep their defaults."""
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)})

    def classifier(self, max_threads: int | None = None) -> EmotionClassifier:
        """The classifier; ``threads`` 0 lets it choose per batch, up to ``max_threads`` (default: the cores)."""
        from .classifier import EmotionClassifier

        return EmotionClassifier(
            self.checkpoint,
            backend="onnx" if self.onnx or self.runtime == "onnxruntime" else self.runtime,
            onnx_path=self.onnx,
            device=self.device,
            threads=self.threads,
            tta=self.tta,
            max_threads=max_threads,
        )

    def make_detector(self) -> FaceDetector:
        from .detectors import create_detector

        return create_detector(self.detector, model=str(self.detector_model) if self.detector_model else None)

    def build(
        self,
        classifier: EmotionClassifier | None = None,
        detector: FaceDetector | None = None,
        smooth: str | None = None,
    ) -> Pipeline:
        """A pipeline with these settings (reusing ``classifier``/``detector`` when given)."""
        from .pipeline import Pipeline
        from .smoothing import Smoother
        from .tracker import IoUTracker

        return Pipeline(
            classifier or self.classifier(),
            detector or self.make_detector(),
            Smoother(smooth or self.smooth, alpha=self.alpha, window=self.window),
            IoUTracker(),
            margin=self.margin,
            align=self.align,
        )
