"""Training configuration: one dataclass, overridable from the CLI, saved as ``config.json`` in each run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..options import DATASETS, DEVICE, Limit, OneOf, Range, check_fields


@dataclass
class TrainConfig:
    """Everything that defines a training run (defaults follow the paper: batch 64, 50 epochs, weighted CE).
    What each field means: :data:`HELP` (the ``emolens train`` flags' help, in the groups of :data:`GROUPS`)."""

    dataset: str = "ferplus"
    root: str = ""
    extra_data: list[str] = field(default_factory=list)
    model: str = "fernet"
    out: str = "runs/exp"
    pretrained: bool = False
    weights: str | None = None
    init: str | None = None
    image_size: int | None = None
    channels: int | None = None
    protocol: str = "paper"
    freeze_bn: bool = False
    backbone_lr: float = 1.0
    head_warmup_epochs: int = 0
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_epochs: int = 0
    class_weights: bool = True
    loss: str = "ce"
    la_prior: str = "mix"
    balanced_sampler: bool = False
    label_smoothing: float = 0.0
    soft_labels: bool = False
    mixup: float = 0.0
    cutmix: float = 0.0
    teacher: str | None = None
    kd_weight: float = 0.5
    kd_temperature: float = 2.0
    kd_balance: float = 0.0
    teacher_views: str = "single"
    teacher_offline: bool = False
    teacher_for: list[str] = field(default_factory=list)
    augment: str = "default"
    augment_on_device: bool = False
    select_metric: str = "macro_f1"
    amp: bool = True
    channels_last: bool = True
    seed: int = 0
    workers: int = 2
    cache: bool = True
    on_error: str = "skip"
    max_samples: int | None = None
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
        d = {k: v for k, v in d.items() if k not in REMOVED and not k.startswith("_")}  # "_about": comments
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
        if self.kd_balance and not self.teacher:
            raise ValueError("kd_balance weighs the distillation from a teacher: set teacher too")
        if self.teacher_for and not (self.teacher and self.teacher_offline):
            raise ValueError("teacher_for routes the datasets of a mix to teachers: set teacher and teacher_offline")
        parse_routes(self.teacher_for)  # DATASET=CHECKPOINT, each dataset once
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
    "kd_balance": Range(float, 0, 2),
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

#: ``emolens train --help``: the flags in these groups, in this order.
GROUPS: dict[str, tuple[str, ...]] = {
    "data": ("dataset", "root", "extra_data", "protocol", "image_size", "channels", "augment", "augment_on_device",
             "cache", "on_error", "max_samples", "workers"),
    "model": ("model", "pretrained", "weights", "init", "freeze_bn", "backbone_lr", "head_warmup_epochs"),
    "optimisation": ("epochs", "batch_size", "lr", "weight_decay", "optimizer", "schedule", "warmup_epochs",
                     "class_weights", "loss", "la_prior", "balanced_sampler", "label_smoothing", "soft_labels",
                     "mixup", "cutmix", "select_metric", "seed"),
    "distillation": ("teacher", "kd_weight", "kd_temperature", "kd_balance", "teacher_views", "teacher_offline",
                     "teacher_for"),
    "runtime": ("out", "device", "amp", "channels_last", "progress"),
}  # fmt: skip

#: What the flags of list fields take, one or more of (``emolens train --help``).
METAVARS: dict[str, str] = {"extra_data": "KIND=ROOT", "teacher_for": "DATASET=CHECKPOINT"}

#: What each :class:`TrainConfig` field means (its ``emolens train`` flag's help; the allowed values come from
#: :data:`LIMITS`).
HELP: dict[str, str] = {
    "dataset": "the main dataset's kind: its train/val/test splits",
    "root": "the main dataset's folder",
    "extra_data": "more datasets in the same label space, KIND=ROOT, optionally *N (repeat N times) or *0.25 "
    "(a fixed quarter)",
    "protocol": "AffectNet: paper (80/10/10 of the training set, by near-duplicate group) or official "
    "(its validation set as test)",
    "image_size": "input side in pixels (default: the model's)",
    "channels": "1 (grey) or 3 (colour) (default: the model's)",
    "augment": "training augmentation strength",
    "augment_on_device": "hold the training faces on the device and augment whole batches there (GPU)",
    "cache": "decode each dataset once into a memory-mapped cache (~/.cache/emolens or $EMOLENS_CACHE)",
    "on_error": "an unreadable image: skip it (counted and named) or stop",
    "max_samples": "use this many training and validation faces (quick runs; decodes only those)",
    "workers": "data-loading processes",
    "model": "architecture from the registry (`emolens models`)",
    "pretrained": "start the backbone from its pretrained weights (downloaded once, checksum-checked)",
    "weights": "a local file or folder of the backbone's pretrained weights",
    "init": "start from an emolens checkpoint's weights (fine-tuning; a bundled model's name too)",
    "freeze_bn": "keep BatchNorm statistics as loaded (their scale and shift still train)",
    "backbone_lr": "the backbone's learning rate as a fraction of the head's",
    "head_warmup_epochs": "first epochs train the new head only",
    "epochs": "training epochs",
    "batch_size": "faces per mini-batch",
    "lr": "peak learning rate",
    "weight_decay": "decoupled weight decay (AdamW) or L2 (SGD)",
    "optimizer": "the optimiser",
    "schedule": "learning-rate schedule",
    "warmup_epochs": "epochs of linear warm-up (cosine)",
    "class_weights": "class-weighted cross-entropy (the paper's answer to imbalance)",
    "loss": "ce, or logit_adjusted: cross-entropy on logits plus the log class prior (Menon et al. 2021)",
    "la_prior": "logit_adjusted's prior: the training mix's, or each face's own dataset's",
    "balanced_sampler": "class-balanced mini-batches (the paper's future work)",
    "label_smoothing": "label smoothing of hard labels",
    "soft_labels": "train on vote distributions where a dataset has them (FER+)",
    "mixup": "MixUp Beta(a, a) parameter (0: off)",
    "cutmix": "CutMix Beta(a, a) parameter (0: off); with MixUp, one of them per batch",
    "select_metric": "what picks best.pt (set_balanced_accuracy: the mean over the datasets of a mix)",
    "seed": "seed of the split, the sampler and the augmentation",
    "teacher": "distil from this emolens checkpoint (an ensemble too)",
    "kd_weight": "share of the loss that is distillation (the rest: the labels)",
    "kd_temperature": "distillation temperature",
    "kd_balance": "weigh each face's distillation by its class's rarity in its own dataset, (N / (C n_c)) to this "
    "power (0: off, 0.5: square root, 1: inverse frequency)",
    "teacher_views": "views the teacher averages its answers over",
    "teacher_offline": "the teacher answers once per face before training instead of every batch (cheap on CPU)",
    "teacher_for": "another teacher for one dataset of the mix, DATASET=CHECKPOINT (its faces get that teacher's "
    "answers; with --teacher-offline)",
    "out": "run folder: config.json, metrics.jsonl, last.pt, best.pt, plots/",
    "device": "where to train (auto: CUDA if available)",
    "amp": "bf16 autocast where it is native (CUDA, CPUs with AMX or AVX512-BF16)",
    "channels_last": "channels-last memory format (faster convolutions)",
    "progress": "progress bars",
}


def parse_routes(specs: list[str]) -> dict[str, str]:
    """``["ferplus=A.pt", "rafdb=B.pt"]`` as ``{"ferplus": "A.pt", "rafdb": "B.pt"}`` (:class:`ValueError` for a
    malformed or repeated entry)."""
    routes: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--teacher-for takes DATASET=CHECKPOINT, not {spec!r}")
        if name in routes:
            raise ValueError(f"--teacher-for names {name!r} twice")
        routes[name] = path
    return routes
