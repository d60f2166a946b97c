"""Training configuration: one dataclass, overridable from the CLI, saved as ``config.json`` in each run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class TrainConfig:
    """Everything that defines a training run (defaults follow the paper: batch 64, 50 epochs, weighted CE)."""

    dataset: str = "ferplus"
    root: str = ""
    extra_data: list[str] = field(default_factory=list)  # more datasets, KIND=ROOT[*N], one label space
    model: str = "fernet"
    out: str = "runs/exp"
    pretrained: bool = False
    weights: str | None = None  # local backbone weights file
    init: str | None = None  # start from the weights of an emolens checkpoint (fine-tuning)
    image_size: int | None = None  # None: the model's default
    channels: int | None = None  # None: the model's default
    protocol: str = "paper"  # AffectNet: paper 80/10/10 or official val
    freeze_bn: bool = False  # BatchNorm statistics kept as loaded (eval mode); scale/shift still trained
    backbone_lr: float = 1.0  # learning rate of the backbone relative to the head's (models with a new head)
    head_warmup_epochs: int = 0  # first epochs train the new head only (backbone frozen, cheap on a CPU)
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adamw | sgd
    schedule: str = "cosine"  # cosine | onecycle | none
    warmup_epochs: int = 0
    class_weights: bool = True  # the paper's class-weighted cross-entropy
    loss: str = "ce"  # ce | logit_adjusted (Menon et al. 2021: CE on logits + tau * log prior)
    la_tau: float = 1.0  # logit-adjustment strength
    balanced_sampler: bool = False  # the paper's future work: class-balanced mini-batches
    label_smoothing: float = 0.0
    soft_labels: bool = False  # train on FER+ vote distributions
    mixup: float = 0.0  # MixUp Beta(a, a) parameter (0: off)
    cutmix: float = 0.0  # CutMix Beta(a, a) parameter (0: off); with both, one of them per batch
    teacher: str | None = None  # knowledge distillation: an emolens checkpoint (an ensemble too) to learn from
    kd_weight: float = 0.5  # share of the loss that is distillation (the rest: the labels)
    kd_temperature: float = 2.0
    teacher_views: str = "single"  # single | flip | shift-flip: the teacher averages its answers over these views
    teacher_offline: bool = False  # the teacher answers once per un-augmented face before training (cheap on CPU)
    augment: str = "default"  # none | light | default
    augment_on_device: bool = False  # hold the training faces on the device and augment whole batches there (GPU)
    select_metric: str = "macro_f1"  # accuracy | balanced_accuracy | macro_f1 | loss
    amp: bool = True  # bf16 autocast where it is native: CUDA, and CPUs with AMX / AVX512-BF16
    channels_last: bool = True
    seed: int = 0
    workers: int = 2
    cache: bool = True  # decoded-face memmap cache
    on_error: str = "skip"  # skip | raise for unreadable images
    max_samples: int | None = None  # cap train/val size (quick experiments, tests)
    keep_epochs: bool = False  # also save every epoch's weights as epoch_NNN.pt (for `emolens average`)
    tta: bool = False  # flip test-time augmentation in validation/evaluation
    device: str = "auto"
    progress: bool = True

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        return cls(**d)

    def validate(self) -> None:
        choices = {
            "optimizer": ("adamw", "sgd"),
            "loss": ("ce", "logit_adjusted"),
            "schedule": ("cosine", "onecycle", "none"),
            "augment": ("none", "light", "default"),
            "select_metric": ("accuracy", "balanced_accuracy", "macro_f1", "loss"),
            "on_error": ("skip", "raise"),
            "teacher_views": ("single", "flip", "shift-flip"),
        }
        for k, allowed in choices.items():
            if getattr(self, k) not in allowed:
                raise ValueError(f"{k}={getattr(self, k)!r}: choose one of {allowed}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError("mixup and cutmix are Beta parameters: 0 (off) or > 0")
        if not 0 <= self.kd_weight <= 1 or self.kd_temperature <= 0:
            raise ValueError("kd_weight must be in [0, 1] and kd_temperature > 0")
        if (self.teacher_offline or self.teacher_views != "single") and not self.teacher:
            raise ValueError("teacher_views and teacher_offline describe a teacher: set teacher too")
        if not 0 <= self.backbone_lr <= 1e3:
            raise ValueError(f"backbone_lr is a multiplier of lr: >= 0 (got {self.backbone_lr})")
        if not 0 <= self.head_warmup_epochs < self.epochs:
            raise ValueError(f"head_warmup_epochs must be in [0, epochs) (got {self.head_warmup_epochs})")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
