"""Training configuration: one dataclass, overridable from the CLI, saved as ``config.json`` in each run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..options import DATASETS, DEVICE, Limit, OneOf, Range, check_fields


@dataclass
class TrainConfig:
    """Everything that defines a training run (defaults follow the paper: batch 64, 50 epochs, weighted CE)."""

    dataset: str = "ferplus"
    root: str = ""
    extra_data: list[str] = field(default_factory=list)  # more datasets, KIND=ROOT[*N or *share], one label space
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
    loss: str = "ce"  # ce | logit_adjusted (Menon et al. 2021: CE on logits + log prior)
    la_prior: str = "mix"  # mix: the training mix's class prior | dataset: each face's own dataset's prior
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
    select_metric: str = "macro_f1"  # accuracy | balanced_accuracy | macro_f1 | set_balanced_accuracy | loss
    amp: bool = True  # bf16 autocast where it is native: CUDA, and CPUs with AMX / AVX512-BF16
    channels_last: bool = True
    seed: int = 0
    workers: int = 2
    cache: bool = True  # decoded-face memmap cache
    on_error: str = "skip"  # skip | raise for unreadable images
    max_samples: int | None = None  # cap train/val size (quick experiments, tests)
    device: str = "auto"
    progress: bool = True

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A config from a dict (a run's ``config.json``). Settings that were removed are dropped where they hold
        the value that means "off", and refused otherwise: such a run cannot be reproduced or resumed."""
        names = {f.name for f in fields(cls)}
        used = sorted(k for k, off in REMOVED.items() if k in d and d[k] != off)
        if used:
            raise ValueError(
                "these settings were removed (experiments that did not help; see docs/experiments.md): "
                + ", ".join(f"{k}={d[k]!r}" for k in used)
            )
        d = {k: v for k, v in d.items() if k not in REMOVED}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        return cls(**d)

    def validate(self) -> None:
        """Every field against :data:`LIMITS`, then the rules between fields; :class:`ValueError` names the
        field."""
        check_fields(self, LIMITS)
        if (self.teacher_offline or self.teacher_views != "single") and not self.teacher:
            raise ValueError("teacher_views and teacher_offline describe a teacher: set teacher too")
        if self.head_warmup_epochs >= self.epochs:
            raise ValueError(f"head_warmup_epochs must be < epochs (got {self.head_warmup_epochs} >= {self.epochs})")


#: The allowed values of each :class:`TrainConfig` field with a range or a fixed set: ``emolens train`` flags
#: check them as they are parsed (and write them into ``--help``), :meth:`TrainConfig.validate` checks a whole
#: config (one loaded from JSON too). A new field gets its line here. Fields not listed are paths, names
#: (``model``: the registry, ``emolens models``) and switches.
LIMITS: dict[str, Limit] = {
    "dataset": OneOf(*DATASETS),
    "image_size": Range(int, 16, optional=True),
    "channels": OneOf(1, 3, None),
    "protocol": OneOf("paper", "official"),
    "epochs": Range(int, 1),
    "batch_size": Range(int, 1),
    "lr": Range(float, 0, lo_open=True),
    "weight_decay": Range(float, 0),
    "optimizer": OneOf("adamw", "sgd"),
    "schedule": OneOf("cosine", "onecycle", "none"),
    "warmup_epochs": Range(int, 0),
    "backbone_lr": Range(float, 0, 1e3),  # multiplier of lr for the backbone
    "head_warmup_epochs": Range(int, 0),
    "loss": OneOf("ce", "logit_adjusted"),
    "la_prior": OneOf("mix", "dataset"),
    "label_smoothing": Range(float, 0, 1, hi_open=True),
    "mixup": Range(float, 0),  # Beta(a, a) parameter; 0: off
    "cutmix": Range(float, 0),
    "kd_weight": Range(float, 0, 1),
    "kd_temperature": Range(float, 0, lo_open=True),
    "teacher_views": OneOf("single", "flip", "shift-flip"),
    "augment": OneOf("none", "light", "default"),
    # set_balanced_accuracy: the mean of each validation dataset's balanced accuracy (a mix's parts weigh alike)
    "select_metric": OneOf("accuracy", "balanced_accuracy", "macro_f1", "set_balanced_accuracy", "loss"),
    "seed": Range(int, 0),
    "workers": Range(int, 0),
    "on_error": OneOf("skip", "raise"),
    "max_samples": Range(int, 1, optional=True),
    "device": DEVICE,
}

#: Settings of earlier versions that were removed, with the value that meant "off" (a run's ``config.json`` holding
#: that value still loads).
REMOVED: dict[str, object] = {
    "recalibrate_bn": 0,
    "precise_bn": 0,
    "freeze_stages": 0,
    "la_tau": 1.0,
    "sam": 0.0,
    "ema": 0.0,
    "keep_epochs": False,
    "tta": False,
}
