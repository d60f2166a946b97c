"""The training loop: weighted CE, balanced sampling, schedules, AMP, resume, DDP, per-epoch reports."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from .. import models
from ..checkpoint import CheckpointError, build_from_checkpoint, load_checkpoint, model_payload, save_atomic
from ..data import FaceDataset, open_dataset
from ..evaluation.inference import multi_view_log_probs, predict_loader
from ..evaluation.metrics import classification_metrics
from ..transforms import BatchAugment, Preprocess, eval_transform, train_transform
from .averaging import ema_model
from .config import TrainConfig
from .losses import (
    class_weights,
    distillation_loss,
    log_prior,
    logit_adjusted_cross_entropy,
    mix_batch,
    weighted_cross_entropy,
)
from .sam import SharpnessAware, batchnorm_statistics_held
from .sampler import EpochSampler
from .teacher import agreement, precompute_targets

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast pays off on ``device``: any CUDA GPU; a CPU only with native bf16 units.

    On a CPU with AMX or AVX512-BF16, oneDNN runs bf16 convolutions natively (measured on 2 AMX cores:
    ``fernet_wide`` trains 2.7x faster than in float32); elsewhere bf16 is emulated and slower.
    """
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def _dist_info() -> tuple[int, int, int]:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


class _WithTargets(Dataset):
    """``ds`` whose items carry a fourth element: row ``i`` of ``targets`` (precomputed teacher answers)."""

    def __init__(self, ds: FaceDataset, targets: torch.Tensor) -> None:
        if len(targets) != len(ds):
            raise ValueError(f"{len(targets)} teacher targets for {len(ds)} faces")
        self.ds, self.targets_ = ds, targets

    def __len__(self) -> int:
        return len(self.ds)

    @property
    def targets(self) -> np.ndarray:
        return self.ds.targets

    def __getitem__(self, i: int):
        return (*self.ds[i], self.targets_[i])


class _WithPart(Dataset):
    """``ds`` whose items carry one more element: the index of the dataset of the mix that item comes from."""

    def __init__(self, ds, parts: np.ndarray) -> None:
        self.ds, self.part_ids = ds, torch.as_tensor(parts, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.ds)

    @property
    def targets(self) -> np.ndarray:
        return self.ds.targets

    def __getitem__(self, i: int):
        return (*self.ds[i], self.part_ids[i])


def dataset_parts(ds) -> np.ndarray:
    """The name of the dataset each item of ``ds`` comes from (a mix's parts; a :class:`Subset` of one too)."""
    if isinstance(ds, Subset):
        return dataset_parts(ds.dataset)[np.asarray(ds.indices)]
    if isinstance(ds, _WithTargets | _WithPart):
        return dataset_parts(ds.ds)
    out = np.empty(len(ds), dtype=object)
    for name, a, b in getattr(ds, "parts", [(getattr(ds, "name", "data"), 0, len(ds))]):
        out[a:b] = name
    return out


def per_set_metrics(labels: np.ndarray, preds: np.ndarray, parts: np.ndarray, classes: Sequence[str]) -> dict:
    """``classification_metrics`` of each dataset of a mix (accuracy, balanced accuracy, macro-F1), by name."""
    out = {}
    for name in dict.fromkeys(parts.tolist()):  # in order of appearance
        sel = parts == name
        m = classification_metrics(labels[sel], preds[sel], classes)
        out[name] = {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")} | {"n": int(sel.sum())}
    return out


def _subset(ds: FaceDataset | _WithTargets, n: int | None, seed: int) -> FaceDataset | _WithTargets | Subset:
    if n is None or n >= len(ds):
        return ds
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), n, replace=False))
    sub = Subset(ds, idx.tolist())
    sub.targets = ds.targets[idx]  # type: ignore[attr-defined]
    return sub


class Trainer:
    """Trains ``cfg.model`` on ``cfg.dataset``; writes everything into ``cfg.out``.

    Run directory: ``config.json``, ``metrics.jsonl`` (one line per epoch), ``last.pt`` (full
    training state, written atomically after every epoch), ``best.pt`` (inference checkpoint of the
    best epoch by ``cfg.select_metric``), ``epoch_NNN.pt`` (every epoch's weights, with
    ``cfg.keep_epochs``) and ``plots/``.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.rank, self.world, local_rank = _dist_info()
        self.distributed = self.world > 1
        if self.distributed and cfg.head_warmup_epochs:  # DDP's set of trained parameters must not change
            raise ValueError("head_warmup_epochs is not supported with several processes (DDP): use 0")
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
            dist.init_process_group(backend)
        self.device = resolve_device(cfg.device)
        if self.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        self.is_main = self.rank == 0
        self.out = Path(cfg.out)
        spec = models.spec(cfg.model)
        self.pre = Preprocess.for_channels(cfg.image_size or spec.image_size, cfg.channels or spec.channels)
        seed_everything(cfg.seed)

        kw = dict(
            image_size=self.pre.image_size,
            channels=self.pre.channels,
            on_error=cfg.on_error,
            protocol=cfg.protocol,
            seed=cfg.seed,
            extra=cfg.extra_data,
            progress=cfg.progress and self.is_main,
        )
        # Rank 0 builds the decoded-face cache first; the others then reuse it.
        if self.distributed and not self.is_main:
            dist.barrier()
        # --max-samples: a quick run decodes only the faces it draws, on the fly, instead of caching whole datasets
        cache = cfg.cache and not cfg.max_samples
        # --augment-on-device: the dataset serves raw uint8 faces, held on the device; BatchAugment augments there
        transform = None if cfg.augment_on_device else train_transform(self.pre, cfg.augment)
        self.train_full = open_dataset(cfg.dataset, cfg.root, "train", transform=transform, cache=cache, **kw)
        self.val_full = open_dataset(
            cfg.dataset, cfg.root, "val", transform=eval_transform(self.pre), cache=cache, **kw
        )
        if self.distributed and self.is_main:
            dist.barrier()
        self.classes = self.train_full.classes
        self.train_ds = _subset(self.train_full, cfg.max_samples, cfg.seed)
        self.val_ds = _subset(self.val_full, cfg.max_samples, cfg.seed + 1)
        self.train_labels = np.asarray(self.train_ds.targets)  # type: ignore[union-attr]
        self.val_parts = dataset_parts(self.val_ds)

        self.model = models.create(
            cfg.model,
            num_classes=len(self.classes),
            pretrained=cfg.pretrained,
            weights=cfg.weights,
            in_channels=self.pre.channels,
            image_size=self.pre.image_size,
        )
        if cfg.init:
            self._init_from(cfg.init)
        self.model.to(self.device)
        self.channels_last = cfg.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.teacher = self._load_teacher(cfg.teacher) if cfg.teacher else None
        if self.teacher is not None and cfg.teacher_offline:
            # the teacher answers once per (un-augmented) training face; batches carry its answers
            self.out.mkdir(parents=True, exist_ok=True)
            if self.distributed and not self.is_main:  # rank 0 computes and keeps them; the others then read them
                dist.barrier()
            targets = precompute_targets(
                self.teacher,
                cfg.teacher,
                self.train_full,
                eval_transform(self.pre),
                cfg.teacher_views,
                self.out / "teacher_targets.pt",
                self.device,
                progress=cfg.progress and self.is_main,
            )
            if self.distributed and self.is_main:
                dist.barrier()
            if self.is_main:
                agree = agreement(targets, self.train_full.targets)
                log.info("teacher agrees with %.1f%% of the training labels", 100 * agree)
            self.train_ds = _subset(_WithTargets(self.train_full, targets), cfg.max_samples, cfg.seed)
            self.teacher = None
        # before DDP and the optimizer: neither ever sees the frozen stages' parameters
        self.frozen = freeze_stages(self.model, cfg.freeze_stages)
        # --ema: a moving average of the weights, updated after every step; validation and best.pt use it
        self.ema = ema_model(self.model, cfg.ema) if cfg.ema else None
        # --sam: each step's gradient is taken at the worst weights within rho (two passes a step)
        self.sam = SharpnessAware(self.model.parameters(), cfg.sam) if cfg.sam else None
        self.ddp_model: nn.Module = self.model
        if self.distributed:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

        self.counts = counts = np.bincount(self.train_labels, minlength=len(self.classes))
        self.weight = class_weights(counts).to(self.device) if cfg.class_weights and cfg.loss == "ce" else None
        self.log_prior = log_prior(counts).to(self.device)
        # --la-prior dataset: each face is adjusted by its own dataset's class prior (FER+ has few contempt faces,
        # AffectNet many: the mix's prior would leave FER+'s contempt under-predicted), so items carry their part
        self.part_log_prior: torch.Tensor | None = None
        if cfg.loss == "logit_adjusted" and cfg.la_prior == "dataset":
            names = dataset_parts(self.train_ds)
            order = list(dict.fromkeys(names.tolist()))
            ids = np.array([order.index(n) for n in names])
            per_part = [np.bincount(self.train_labels[ids == k], minlength=len(self.classes)) for k in range(len(order))]
            self.part_log_prior = torch.stack([log_prior(c) for c in per_part]).to(self.device)
            self.train_ds = _WithPart(self.train_ds, ids)
        self.sampler = EpochSampler(
            self.train_labels, balanced=cfg.balanced_sampler, seed=cfg.seed, rank=self.rank, world_size=self.world
        )
        self.batch_size = cfg.batch_size // self.world if self.distributed else cfg.batch_size
        # Workers are re-created every epoch (not persistent), so their augmentation seeds derive from the
        # per-epoch seed and a resumed run replays exactly the same batches.
        loader_kw = dict(num_workers=cfg.workers, pin_memory=self.device.type == "cuda")
        self.train_loader = DataLoader(
            self.train_ds,
            batch_size=self.batch_size,
            sampler=self.sampler,
            drop_last=len(self.train_ds) > self.batch_size * self.world,
            **loader_kw,
        )
        self.val_loader = DataLoader(self.val_ds, batch_size=max(256, cfg.batch_size), shuffle=False, **loader_kw)
        self.on_device: tuple[torch.Tensor, ...] | None = None
        if cfg.augment_on_device:
            self.on_device = _hold_on_device(self.train_ds, self.device)
            self.batch_augment = BatchAugment(self.pre, cfg.augment).to(self.device)

        params = param_groups(self.model, cfg.lr, cfg.backbone_lr)
        if cfg.optimizer == "adamw":
            fused = self.device.type == "cuda"  # one kernel per step instead of one per tensor
            self.opt: torch.optim.Optimizer = torch.optim.AdamW(
                params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None
            )
        else:
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
        steps = len(self.train_loader) * cfg.epochs
        if cfg.schedule == "onecycle":
            self.sched = torch.optim.lr_scheduler.OneCycleLR(
                self.opt, max_lr=[g["lr"] for g in params], total_steps=steps, pct_start=0.15
            )
        elif cfg.schedule == "cosine":
            self.sched = torch.optim.lr_scheduler.LambdaLR(
                self.opt, _cosine_with_warmup(steps, len(self.train_loader) * cfg.warmup_epochs)
            )
        else:
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0)
        self.amp = cfg.amp and native_bf16(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest conv kernels once
        self.start_epoch = 0
        self.best: float | None = None
        self.history: list[dict] = []

    # ------------------------------------------------------------------ state
    def _load_classes(self, path: str | Path, expect_model: str | None = None) -> dict:
        """An emolens checkpoint that answers in this run's classes (any input)."""
        ckpt = load_checkpoint(path, expect_model=expect_model, expect_classes=len(self.classes))
        if list(ckpt["classes"]) != list(self.classes):
            raise CheckpointError(f"{path}: classes {ckpt['classes']} differ from the dataset's {list(self.classes)}")
        return ckpt

    def _init_from(self, path: str | Path) -> None:
        """Start from the weights of an emolens checkpoint of the same model and input channels/normalisation.

        Another input size is accepted (a start for a run at a new resolution, which nets with global pooling
        take as they are). Its classes are this run's, or include them: an 8-class net starts a 7-class RAF-DB or
        SFEW run, its output layer keeping the rows of this run's classes (in this run's order)."""
        ckpt = load_checkpoint(path, expect_model=self.cfg.model)
        state, theirs = dict(ckpt["state_dict"]), list(ckpt["classes"])
        if theirs != list(self.classes):
            missing = [c for c in self.classes if c not in theirs]
            if missing:
                raise CheckpointError(f"{path}: classes {theirs} lack this run's {missing}")
            state = _class_rows(state, self.model.state_dict(), [theirs.index(c) for c in self.classes])
        pre = dataclasses.replace(Preprocess.from_dict(ckpt["preprocess"]), image_size=self.pre.image_size)
        if pre != self.pre:
            raise CheckpointError(f"{path}: its input {ckpt['preprocess']} differs from this run's {self.pre}")
        try:
            self.model.load_state_dict(state)
        except RuntimeError as e:  # e.g. a net whose layer sizes depend on the input size
            raise CheckpointError(f"{path}: its weights do not fit this run's model: {e}") from None
        if self.is_main:
            size = ckpt["preprocess"]["image_size"]
            log.info("initialised from %s%s", path, f" (trained at {size} px)" if size != self.pre.image_size else "")

    def _load_teacher(self, path: str | Path) -> nn.Module:
        """The frozen model to distil from, in this run's classes.

        A teacher that reads another input (a 224 px net for a 112 px student, or a grey one for a colour
        student) gets the student's faces through an :class:`emolens.models.InputAdapter`: the loaders'
        grey conversion and resize, so its answers match what it gives on faces resized from the student's.
        """
        ckpt = self._load_classes(path)
        teacher, tpre = build_from_checkpoint(ckpt, str(path))
        if tpre != self.pre:
            try:
                teacher = nn.Sequential(models.InputAdapter(self.pre, tpre), teacher)
            except ValueError as e:
                msg = f"{path}: its input {ckpt['preprocess']} cannot be made from this run's: {e}"
                raise CheckpointError(msg) from None
            if self.is_main:
                size = (self.pre.image_size, tpre.image_size)
                log.info("teacher reads this run's %d px faces as its %d px input", *size)
        teacher.to(self.device).eval().requires_grad_(False)
        if self.cfg.channels_last:
            teacher.to(memory_format=torch.channels_last)
        if self.is_main:
            log.info("distilling from %s (%s)", path, ckpt["model"])
        return teacher

    @property
    def eval_model(self) -> nn.Module:
        """The weights validation scores and ``best.pt`` keeps: the moving average with ``--ema``, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def _train_state(self, epoch: int) -> dict:
        extra = {"ema": self.ema.state_dict()} if self.ema is not None else {}
        return model_payload(
            self.model,
            self.cfg.model,
            self.classes,
            self.pre,
            epoch=epoch,
            config=vars(self.cfg),
            optimizer=self.opt.state_dict(),
            scheduler=self.sched.state_dict(),
            best=self.best,
            history=self.history,
            train_counts=self.counts.tolist(),
            **extra,
        )

    def resume(self, path: str | Path | None = None) -> bool:
        """Load ``last.pt`` (or ``path``) and continue after its last finished epoch. False if none exists."""
        path = Path(path) if path else self.out / "last.pt"
        if not path.is_file():
            return False
        ckpt = load_checkpoint(path, expect_model=self.cfg.model, expect_classes=len(self.classes))
        if "optimizer" not in ckpt:
            raise ValueError(f"{path}: an inference-only checkpoint cannot resume training (use last.pt)")
        self.model.load_state_dict(ckpt["state_dict"])
        if self.ema is not None:
            if "ema" not in ckpt:
                raise ValueError(f"{path}: this run was trained without ema, so it cannot continue with it")
            self.ema.load_state_dict(ckpt["ema"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.start_epoch, self.best, self.history = ckpt["epoch"] + 1, ckpt["best"], ckpt["history"]
        if self.is_main:
            log.info("resumed %s at epoch %d", path, self.start_epoch + 1)
        return True

    # ------------------------------------------------------------------ loop
    def train_epoch(self, epoch: int) -> tuple[float, float]:
        cfg = self.cfg
        seed_everything(cfg.seed * 1000 + epoch + 7919 * self.rank)  # augmentation/dropout RNG: a function of epoch
        self.sampler.set_epoch(epoch)
        self.ddp_model.train()
        if cfg.freeze_bn:
            batchnorm_eval(self.model)
        for m in self.frozen:  # --freeze-stages: as loaded, BatchNorm statistics included
            m.eval()
        if cfg.head_warmup_epochs:  # the first epochs train the new head alone
            set_backbone_trainable(self.model, epoch >= cfg.head_warmup_epochs, keep_frozen=self.frozen)
        loss_sum, correct, n = 0.0, 0, 0
        bar = tqdm(
            self._device_batches() if self.on_device is not None else self.train_loader,
            total=len(self.train_loader),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (cfg.progress and self.is_main),
            leave=False,
        )
        n_cls = len(self.classes)
        for x, y, soft, *held in bar:
            # per-face prior (--la-prior dataset): the last element is each face's dataset
            prior = self.part_log_prior[held.pop().to(self.device)] if self.part_log_prior is not None else None
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            target = soft.to(self.device) if cfg.soft_labels else None
            # --teacher-offline: the teacher's log-probabilities for these faces, computed before training
            teacher_logits = held[0].to(self.device).float() if held else None
            if cfg.mixup or cfg.cutmix:  # mixed targets are distributions: one-hot where labels are hard
                base = target if target is not None else F.one_hot(y, n_cls).float()
                if teacher_logits is not None:  # held teacher answers mix with their images, as probabilities
                    base = torch.cat([base, teacher_logits.exp()], 1)
                x, mixed, _ = mix_batch(x, base, cfg.mixup, cfg.cutmix)
                target = mixed[:, :n_cls]
                if teacher_logits is not None:
                    teacher_logits = mixed[:, n_cls:].clamp_min(1e-12).log()
                y = target.argmax(1)  # training accuracy: against the label that dominates the mix
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.ddp_model(x)
                if self.teacher is not None:  # the teacher sees the same augmented (and mixed) batch
                    with torch.no_grad():
                        if cfg.teacher_views == "single":
                            teacher_logits = self.teacher(x).float()
                        else:
                            teacher_logits = multi_view_log_probs(self.teacher, x, cfg.teacher_views)
            loss = self._loss(logits, y, target, teacher_logits, prior)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.sam is not None:  # the same batch again at the worst weights nearby; its gradient steps
                self.sam.ascend()
                with batchnorm_statistics_held(self.model):
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                        sharp_logits = self.ddp_model(x)
                    self.opt.zero_grad(set_to_none=True)
                    self._loss(sharp_logits, y, target, teacher_logits, prior).backward()
                self.sam.descend()
            self.opt.step()
            self.sched.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
            bar.set_postfix(loss=f"{loss_sum / n:.3f}", acc=f"{correct / n:.3f}")
        return loss_sum / max(n, 1), correct / max(n, 1)

    def _loss(
        self,
        logits: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        teacher_logits: torch.Tensor | None,
        prior: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The training loss of one batch: the labels' (hard or soft), plus distillation with a teacher.
        ``prior``: per-face log priors (B x C) for the logit-adjusted loss, instead of the mix's."""
        cfg = self.cfg
        if cfg.loss == "logit_adjusted":
            loss = logit_adjusted_cross_entropy(
                logits.float(), y, self.log_prior if prior is None else prior, cfg.la_tau, target, cfg.label_smoothing
            )
        else:
            loss = weighted_cross_entropy(logits.float(), y, self.weight, target, cfg.label_smoothing)
        if teacher_logits is not None:
            kd = distillation_loss(logits.float(), teacher_logits, cfg.kd_temperature)
            loss = (1 - cfg.kd_weight) * loss + cfg.kd_weight * kd
        return loss

    def _device_batches(self):
        """This epoch's batches from the faces held on the device, augmented there (the DataLoader's order)."""
        assert self.on_device is not None
        faces, labels, soft, *held = self.on_device
        idx = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
        n = len(self.train_loader) * self.batch_size if self.train_loader.drop_last else len(idx)
        for s in range(0, n, self.batch_size):
            b = idx[s : min(s + self.batch_size, n)].to(self.device)
            yield self.batch_augment(faces[b]), labels[b], soft[b], *(h[b] for h in held)

    def _train_batches(self, n: int):
        """The first ``n`` (augmented) training batches of this epoch's order, on the device, as the model reads
        them."""
        for i, (x, *_) in enumerate(self.train_loader):
            if i == n:
                return
            x = x.to(self.device)
            yield x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _recalibrate_bn(self, n_batches: int) -> None:
        """:func:`recalibrate_batchnorm` on the first ``n_batches`` training batches, once; with DDP, rank 0's
        result goes to every rank."""
        self.sampler.set_epoch(0)
        seed_everything(self.cfg.seed)
        n = recalibrate_batchnorm(self.model, self._train_batches(n_batches))
        if self.distributed:
            for t in self.model.state_dict().values():
                dist.broadcast(t, 0)
        if self.is_main:
            log.info("BatchNorm statistics measured on %d training faces (--recalibrate-bn)", n)

    def _sync_buffers(self) -> None:
        """Average BatchNorm running statistics over ranks, so every rank holds the same model."""
        for b in self.model.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b /= self.world

    def validate(self) -> dict:
        probs, labels, loss = predict_loader(
            self.eval_model, self.val_loader, self.device, tta=self.cfg.tta, channels_last=self.channels_last
        )
        preds = probs.argmax(1)
        m = classification_metrics(labels, preds, self.classes)
        m["loss"] = loss
        # a mix: each dataset's own scores, and their mean balanced accuracy (a selection metric that a large
        # part, as FER+ in RAF-DB + FER+ + CK+ + SFEW, does not dominate)
        m["per_set"] = per_set_metrics(np.asarray(labels), np.asarray(preds), self.val_parts, self.classes)
        m["set_balanced_accuracy"] = float(np.mean([v["balanced_accuracy"] for v in m["per_set"].values()]))
        return m

    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train for the remaining epochs (or up to epoch ``stop_after``); returns the per-epoch history."""
        cfg = self.cfg
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "config.json")
            # metrics.jsonl always mirrors the finished epochs held in last.pt (no stale or duplicate lines)
            tmp = self.out / ".metrics.jsonl.tmp"
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history))
            os.replace(tmp, self.out / "metrics.jsonl")
            bad = {**self.train_full.bad_files, **self.val_full.bad_files}
            if bad:
                log.warning("%d unreadable image(s) skipped so far", len(bad))
        if cfg.recalibrate_bn and not self.history:  # a fresh run (a resumed one holds its statistics)
            self._recalibrate_bn(cfg.recalibrate_bn)
        for epoch in range(self.start_epoch, min(cfg.epochs, stop_after or cfg.epochs)):
            t0 = time.time()
            tr_loss, tr_acc = self.train_epoch(epoch)
            if cfg.precise_bn:  # the epoch's last weights, their own statistics (the modes train_epoch set)
                for a, b in zip(self.model.modules(), self.eval_model.modules(), strict=True):
                    b.training = a.training  # the average (--ema) measured in the modes the model trained in
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    precise_batchnorm(self.eval_model, self._train_batches(cfg.precise_bn))
            if self.distributed:
                self._sync_buffers()
                t = torch.tensor([tr_loss, tr_acc], device=self.device)
                dist.all_reduce(t)
                tr_loss, tr_acc = (t / self.world).tolist()
            vm = self.validate()
            row = {
                "epoch": epoch + 1,
                "train_loss": tr_loss,
                "train_accuracy": tr_acc,
                "val_loss": vm["loss"],
                "val_accuracy": vm["accuracy"],
                "val_balanced_accuracy": vm["balanced_accuracy"],
                "val_macro_f1": vm["macro_f1"],
                "val_set_balanced_accuracy": vm["set_balanced_accuracy"],
                "val_per_set": vm["per_set"],
                "lr": self.opt.param_groups[0]["lr"],
                "seconds": time.time() - t0,
            }
            self.history.append(row)
            score = -vm["loss"] if cfg.select_metric == "loss" else vm[cfg.select_metric]
            improved = self.best is None or score > self.best
            if improved:
                self.best = score
            if self.is_main:
                if improved or cfg.keep_epochs:
                    weights = model_payload(
                        self.eval_model,
                        cfg.model,
                        self.classes,
                        self.pre,
                        epoch=epoch + 1,
                        val_metrics=vm,
                        config=vars(cfg),
                        train_counts=self.counts.tolist(),
                    )
                    if improved:
                        save_atomic(weights, self.out / "best.pt")
                    if cfg.keep_epochs:  # snapshots for `emolens average` (SWA)
                        save_atomic(weights, self.out / f"epoch_{epoch + 1:03d}.pt")
                save_atomic(self._train_state(epoch), self.out / "last.pt")
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                _plot_curves(self.history, self.out / "plots")
                sets = ""
                if len(vm["per_set"]) > 1:
                    sets = (
                        f"  sets bal {vm['set_balanced_accuracy']:.4f} ("
                        + ", ".join(f"{k} {v['balanced_accuracy']:.3f}" for k, v in vm["per_set"].items())
                        + ")"
                    )
                print(
                    f"epoch {epoch + 1}/{cfg.epochs}  train loss {tr_loss:.4f} acc {tr_acc:.4f}  "
                    f"val loss {vm['loss']:.4f} acc {vm['accuracy']:.4f} bal {vm['balanced_accuracy']:.4f} "
                    f"F1 {vm['macro_f1']:.4f}{sets}  {row['seconds']:.0f}s{'  *best' if improved else ''}",
                    flush=True,
                )
        if self.distributed:
            dist.barrier()
        return self.history


def _class_rows(state: dict, target: dict, rows: Sequence[int]) -> dict:
    """``state`` with its class-indexed tensors (those whose first dimension is the old class count where the
    target's is the new one, the rest alike: the output layer's weight and bias) cut to ``rows``."""
    out = dict(state)
    for k, v in state.items():
        t = target.get(k)
        if t is not None and v.shape != t.shape and v.shape[1:] == t.shape[1:] and t.shape[0] == len(rows):
            out[k] = v[list(rows)].clone()
    return out


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The new classification head's parameters: ``model.head_parameters()`` where the model defines it, else
    those of its last ``nn.Linear``."""
    if hasattr(model, "head_parameters"):
        return list(model.head_parameters())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return list(linears[-1].parameters()) if linears else []


def param_groups(model: nn.Module, lr: float, backbone_lr: float = 1.0) -> list[dict]:
    """Optimizer groups: the head at ``lr``, the rest at ``backbone_lr * lr``.

    The schedulers scale each group's own starting lr, so the ratio holds through warm-up and decay.
    """
    head = {id(p) for p in head_parameters(model)}
    params = [p for p in model.parameters() if p.requires_grad]
    if backbone_lr == 1.0 or not head:
        return [{"params": params, "lr": lr}]
    return [
        {"params": [p for p in params if id(p) in head], "lr": lr},
        {"params": [p for p in params if id(p) not in head], "lr": lr * backbone_lr},
    ]


def set_backbone_trainable(model: nn.Module, trainable: bool, keep_frozen: Sequence[nn.Module] = ()) -> None:
    """Freeze (``False``) or release everything but the head: a head-only warm-up skips the backbone's backward.
    The parameters of ``keep_frozen`` (:func:`freeze_stages`) stay frozen either way."""
    keep = {id(p) for p in head_parameters(model)} | {id(p) for m in keep_frozen for p in m.parameters()}
    for p in model.parameters():
        if id(p) not in keep:
            p.requires_grad_(trainable)


def _pretrained_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm of ``model`` but those of its new head (``model.head_modules()``, as MobileFaceNet's)."""
    head = {id(m) for h in getattr(model, "head_modules", list)() for m in h.modules()}
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head]


def _forward_all(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Run ``model`` on every batch (outputs dropped); returns the number of faces."""
    n = 0
    for x in batches:
        model(x)
        n += len(x)
    return n


def batchnorm_eval(model: nn.Module) -> None:
    """``--freeze-bn``: every pretrained BatchNorm in eval mode, normalising with its running statistics, never
    updating them (its scale and shift still train). A new head's own BatchNorm (``model.head_modules()``, as
    MobileFaceNet's) keeps learning its statistics: it has none to keep."""
    for m in _pretrained_batchnorms(model):
        m.eval()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """``--recalibrate-bn``: give every pretrained BatchNorm the statistics of ``batches`` without changing what the
    net computes; returns the number of faces measured.

    A graph with BatchNorm folded into its convolutions (the TFJS backbones) loads with identity statistics, so
    training with batch statistics would rescale every layer and wipe out the features. Here each layer's input
    mean ``mu`` and (biased) variance ``var`` are measured in one pass of the unchanged net in eval mode; then
    ``running_mean, running_var = mu, var`` and the affine scale and shift are re-set so that the eval-mode output
    is exactly the old one: ``w' = w * sqrt(var + eps) / sqrt(rv + eps)``, ``b' = b + w * (mu - rm) / sqrt(rv + eps)``.
    In training mode the batch statistics are close to ``mu, var``, so the net starts where it was and trains with
    normalisation (which a net whose statistics are frozen lacks). A new head's own BatchNorm is left alone.
    """
    bns = [m for m in _pretrained_batchnorms(model) if m.affine and m.track_running_stats]
    acc: dict[int, list] = {id(m): [0.0, 0.0, 0] for m in bns}

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].double().transpose(0, 1).flatten(1)  # channels x values
        a = acc[id(m)]
        a[0], a[1], a[2] = a[0] + x.sum(1), a[1] + (x * x).sum(1), a[2] + x.shape[1]

    was_training = model.training
    model.eval()
    handles = [m.register_forward_pre_hook(hook) for m in bns]
    try:
        n = _forward_all(model, batches)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n == 0:
        raise ValueError("recalibrate_batchnorm: no batches")
    for m in bns:
        s, ss, count = acc[id(m)]
        mu = s / count
        var = (ss / count - mu * mu).clamp_min(0)
        old = m.weight.double() / (m.running_var.double() + m.eps).sqrt()  # the layer's slope in eval mode
        m.bias.copy_(m.bias.double() + old * (mu - m.running_mean.double()))
        m.weight.copy_(old * (var + m.eps).sqrt())
        m.running_mean.copy_(mu)
        m.running_var.copy_(var)
    return n


@torch.no_grad()
def precise_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """``--precise-bn``: recompute the running statistics of every BatchNorm in training mode as the plain average
    over ``batches`` with the model's current weights (PreciseBN; Wu & Johnson 2021); returns the faces seen.

    A running average with momentum 0.1 lags behind weights that move fast: a layer whose input drifts by many of
    its standard deviations per epoch (MobileFaceNet's last layers, fine-tuned) is then evaluated with the
    statistics of earlier weights. BatchNorms in eval mode (``--freeze-bn``, ``--freeze-stages``) are left as
    they are; the model's modes are restored.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]
    for m in dropouts:
        m.eval()
    try:
        n = _forward_all(model, batches)
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        for m in dropouts:
            m.train()
    if n == 0:  # nothing measured: keep what they held
        for m, (rm, rv, nb) in zip(bns, saved, strict=True):
            m.running_mean.copy_(rm)
            m.running_var.copy_(rv)
            m.num_batches_tracked.copy_(nb)
    return n


def freeze_stages(model: nn.Module, n: int) -> list[nn.Module]:
    """Keep the first ``n`` of ``model.stages()`` as loaded for the whole run and return them.

    Their parameters get no gradient, so backward stops at the first trained stage (the CPU lever: the early,
    high-resolution stages cost most of a backward pass); the trainer also keeps them in eval mode, so their
    BatchNorm statistics stay as loaded too.
    """
    if n == 0:
        return []
    if not hasattr(model, "stages"):
        raise ValueError(
            f"freeze_stages: {type(model).__name__} does not list its stages "
            "(the face-pretrained backbones faceres_mobilenet and mobilefacenet do)"
        )
    stages = list(model.stages())
    if n > len(stages):
        raise ValueError(f"freeze_stages: {type(model).__name__} has {len(stages)} stages (got {n})")
    for m in stages[:n]:
        m.requires_grad_(False)
    return stages[:n]


def _hold_on_device(ds, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Every face of ``ds`` (uint8, untransformed), its label and soft target (and held teacher answers), as
    tensors on ``device``.

    Unreadable images are handled as the DataLoader would (``on_error``): skipped in favour of the next one.
    """
    loader = DataLoader(ds, batch_size=1024, shuffle=False, num_workers=0)
    batches = list(tqdm(loader, desc="faces to device", leave=False, disable=len(ds) < 5000))
    return tuple(torch.cat([b[k] for b in batches]).to(device) for k in range(len(batches[0])))


def _cosine_with_warmup(total: int, warmup: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return float(0.5 * (1 + np.cos(np.pi * min(1.0, progress))))  # a plain float: checkpoints stay plain data

    return f


def _plot_curves(history: list[dict], out: Path) -> None:
    from ..evaluation.plots import plot_learning_curves

    plot_learning_curves(history, out / "learning_curves.png")


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train from a config (resuming from ``cfg.out/last.pt`` when ``resume``); returns the run folder."""
    last = Path(cfg.out) / "last.pt"
    if last.is_file() and not resume:
        raise FileExistsError(
            f"{last}: this run folder already holds a training run; pass --resume to continue it or choose a new --out"
        )
    trainer = Trainer(cfg)
    if resume and not trainer.resume():
        log.warning("%s not found: starting a new run", last)
    trainer.fit()
    if trainer.distributed:
        dist.destroy_process_group()
    return trainer.out
