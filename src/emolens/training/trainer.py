"""The training loop: weighted CE, balanced sampling, schedules, AMP, resume, DDP, per-epoch reports."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import models
from ..checkpoint import CheckpointError, build_from_checkpoint, load_checkpoint, model_payload, save_atomic
from ..data import open_dataset
from ..evaluation.inference import predict_loader
from ..evaluation.metrics import classification_metrics
from ..evaluation.plots import plot_learning_curves
from ..runtime import dist_info, native_bf16, resolve_device, seed_everything
from ..transforms import BatchAugment, Preprocess, eval_transform, train_transform
from ..tta import multi_view_log_probs
from .adapters import WithColumn, dataset_parts, hold_on_device, per_set_metrics, subset
from .config import TrainConfig, parse_routes
from .finetune import batchnorm_eval, class_rows, set_backbone_trainable
from .losses import (
    class_weights,
    distillation_loss,
    log_prior,
    logit_adjusted_cross_entropy,
    mix_batch,
    weighted_cross_entropy,
)
from .optim import build_optimizer, build_scheduler
from .sampler import EpochSampler
from .teacher import agreement, routed_targets

log = logging.getLogger(__name__)


class Trainer:
    """Trains ``cfg.model`` on ``cfg.dataset``; writes everything into ``cfg.out``.

    Run directory: ``config.json``, ``metrics.jsonl`` (one line per epoch), ``last.pt`` (full
    training state, written atomically after every epoch), ``best.pt`` (inference checkpoint of the
    best epoch by ``cfg.select_metric``) and ``plots/``.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.rank, self.world, local_rank = dist_info()
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
        self.train_ds = subset(self.train_full, cfg.max_samples, cfg.seed)
        self.val_ds = subset(self.val_full, cfg.max_samples, cfg.seed + 1)
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
            targets = routed_targets(
                self.teacher,
                cfg.teacher,
                parse_routes(cfg.teacher_for),
                self._load_teacher,
                self.train_full,
                eval_transform(self.pre),
                cfg.teacher_views,
                self.out,
                self.device,
                progress=cfg.progress and self.is_main,
            )
            if self.distributed and self.is_main:
                dist.barrier()
            if self.is_main:
                agree = agreement(targets, self.train_full.targets)
                log.info("teacher agrees with %.1f%% of the training labels", 100 * agree)
            self.train_ds = subset(WithColumn(self.train_full, targets, "teacher targets"), cfg.max_samples, cfg.seed)
            self.teacher = None
        self.ddp_model: nn.Module = self.model
        if self.distributed:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

        self.counts = counts = np.bincount(self.train_labels, minlength=len(self.classes))
        self.weight = class_weights(counts).to(self.device) if cfg.class_weights and cfg.loss == "ce" else None
        self.log_prior = log_prior(counts).to(self.device)
        # --la-prior dataset: each face is adjusted by its own dataset's class prior (FER+ has few contempt faces,
        # AffectNet many: the mix's prior would leave FER+'s contempt under-predicted); --kd-balance weighs each
        # face's distillation by its class's rarity in its own dataset. Both need each item's part of the mix.
        self.part_log_prior: torch.Tensor | None = None
        self.part_kd_weight: torch.Tensor | None = None
        per_dataset = cfg.loss == "logit_adjusted" and cfg.la_prior == "dataset"
        self.with_parts = per_dataset or cfg.kd_balance > 0
        if self.with_parts:
            names = dataset_parts(self.train_ds)
            order = list(dict.fromkeys(names.tolist()))
            ids = np.array([order.index(n) for n in names])
            n_cls = len(self.classes)
            per_part = [np.bincount(self.train_labels[ids == k], minlength=n_cls) for k in range(len(order))]
            if per_dataset:
                self.part_log_prior = torch.stack([log_prior(c) for c in per_part]).to(self.device)
            if cfg.kd_balance > 0:
                self.part_kd_weight = torch.stack([class_weights(c) ** cfg.kd_balance for c in per_part])
                self.part_kd_weight = self.part_kd_weight.to(self.device)
            self.train_ds = WithColumn(self.train_ds, torch.as_tensor(ids, dtype=torch.long), "dataset ids")
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
            self.on_device = hold_on_device(self.train_ds, self.device)
            self.batch_augment = BatchAugment(self.pre, cfg.augment).to(self.device)

        self.opt = build_optimizer(self.model, cfg, self.device)
        self.sched = build_scheduler(self.opt, cfg, len(self.train_loader))
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
            state = class_rows(state, self.model.state_dict(), [theirs.index(c) for c in self.classes])
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

    def _train_state(self, epoch: int) -> dict:
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
        if cfg.head_warmup_epochs:  # the first epochs train the new head alone
            set_backbone_trainable(self.model, epoch >= cfg.head_warmup_epochs)
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
            # the last element is each face's dataset where a per-dataset prior or distillation weight needs it
            part = held.pop().to(self.device) if self.with_parts else None
            prior = self.part_log_prior[part] if self.part_log_prior is not None else None
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
            kd_weight = self.part_kd_weight[part, y] if self.part_kd_weight is not None else None
            loss = self._loss(logits, y, target, teacher_logits, prior, kd_weight)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
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
        kd_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The training loss of one batch: the labels' (hard or soft), plus distillation with a teacher.
        ``prior``: per-face log priors (B x C) for the logit-adjusted loss, instead of the mix's; ``kd_weight``:
        per-face weights of the distillation term (their weighted mean)."""
        cfg = self.cfg
        if cfg.loss == "logit_adjusted":
            loss = logit_adjusted_cross_entropy(
                logits.float(), y, self.log_prior if prior is None else prior, 1.0, target, cfg.label_smoothing
            )
        else:
            loss = weighted_cross_entropy(logits.float(), y, self.weight, target, cfg.label_smoothing)
        if teacher_logits is not None:
            kd = distillation_loss(logits.float(), teacher_logits, cfg.kd_temperature, kd_weight)
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

    def _sync_buffers(self) -> None:
        """Average BatchNorm running statistics over ranks, so every rank holds the same model."""
        for b in self.model.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b /= self.world

    def validate(self) -> dict:
        probs, labels, loss = predict_loader(self.model, self.val_loader, self.device, channels_last=self.channels_last)
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
        for epoch in range(self.start_epoch, min(cfg.epochs, stop_after or cfg.epochs)):
            t0 = time.time()
            tr_loss, tr_acc = self.train_epoch(epoch)
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
                if improved:
                    weights = model_payload(
                        self.model,
                        cfg.model,
                        self.classes,
                        self.pre,
                        epoch=epoch + 1,
                        val_metrics=vm,
                        config=vars(cfg),
                        train_counts=self.counts.tolist(),
                    )
                    save_atomic(weights, self.out / "best.pt")
                save_atomic(self._train_state(epoch), self.out / "last.pt")
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                plot_learning_curves(self.history, self.out / "plots" / "learning_curves.png")
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
