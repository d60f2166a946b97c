"""Evaluate a checkpoint on a dataset split and write the full report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..checkpoint import build_from_checkpoint, load_checkpoint
from ..data import open_dataset
from ..data.base import UNREADABLE
from ..transforms import eval_transform
from .inference import predict_loader
from .metrics import classification_metrics
from .report import write_report


def evaluate(
    checkpoint: str | Path,
    dataset: str,
    root: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    tta: bool | str = False,
    batch_size: int = 256,
    workers: int = 0,
    protocol: str = "paper",
    device: str = "cpu",
    progress: bool = True,
    cache: bool = False,
) -> dict:
    """Metrics of ``checkpoint`` on ``dataset``/``split``; writes the report into ``out`` when given.

    A model trained on 8 classes can be scored on a 7-class set (FER2013): predictions are taken
    over the dataset's classes only (:func:`in_dataset_classes`).
    """
    ckpt = load_checkpoint(checkpoint)
    model, pre = build_from_checkpoint(ckpt, str(checkpoint))
    dev = torch.device(device)
    model.to(dev)
    ds = open_dataset(
        dataset,
        root,
        split,
        image_size=pre.image_size,
        channels=pre.channels,
        transform=eval_transform(pre),
        protocol=protocol,
        cache=cache,
        on_error="mark",  # an unreadable image is left out, not replaced by the next one (counted twice)
    )
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers)
    probs, labels, _ = predict_loader(model, loader, dev, tta=tta, progress=progress, desc=f"evaluate {ds.name}")
    readable = labels != UNREADABLE  # (the workers' bad_files do not reach this process: counted here)
    probs, labels, skipped = probs[readable], labels[readable], int((~readable).sum())
    try:
        probs = in_dataset_classes(probs, labels, ckpt["classes"], ds.classes)
    except ValueError as e:
        raise ValueError(f"{checkpoint}: {e} needed by {ds.name}") from None
    m = classification_metrics(labels, probs.argmax(1), ds.classes)
    m.update(
        checkpoint=str(checkpoint),
        model=ckpt["model"],
        dataset=dataset,
        split=split,
        tta=tta,
        skipped_images=skipped,
    )
    if out:
        history = None
        run_metrics = Path(checkpoint).with_name("metrics.jsonl")
        if run_metrics.is_file():
            import json

            history = [json.loads(line) for line in run_metrics.read_text().splitlines() if line.strip()]
        write_report(m, out, title=f"{ckpt['model']} on {dataset} {split}", history=history)
    return m


def in_dataset_classes(probs, labels, model_classes, ds_classes) -> np.ndarray:
    """A model's ``probs`` (columns ``model_classes``) as columns ``ds_classes``.

    Classes the model lacks are scored as never answered (a column of zeros) where no sample of the split
    has them: a 7-class model (RAF-DB's) on SFEW, whose labels use the 8 canonical classes but hold no
    contempt. A class the model lacks that the split's labels do hold raises :class:`ValueError`.
    """
    if list(ds_classes) == list(model_classes):
        return probs
    present = set(np.unique(np.asarray(labels)).tolist())
    needed = [c for k, c in enumerate(ds_classes) if c not in model_classes and k in present]
    if needed:
        raise ValueError(f"model has no class(es) {needed}")
    return columns_as(probs, model_classes, ds_classes)


def columns_as(probs, names, classes) -> np.ndarray:
    """``probs`` (columns named ``names``) as columns in ``classes`` order; a class not in ``names`` gets 0."""
    probs = np.asarray(probs)
    out = np.zeros((len(probs), len(classes)), dtype=probs.dtype)
    for j, name in enumerate(names):
        if name in classes:
            out[:, list(classes).index(name)] = probs[:, j]
    return out
