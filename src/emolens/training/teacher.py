"""A distillation teacher that averages its answers over several views of each face.

Averaging a model over small shifts and mirror images of a face is a better teacher than the model on
one view (on FER+ Valid + CK+/SFEW val, ten views lift the shipped model's accuracy at equal balanced
accuracy by about a point; ``benchmarks/results/prior_frontier_teacher_views_v3.json``).
:func:`emolens.evaluation.inference.multi_view_log_probs` is that teacher; :func:`precompute_targets` runs
it once over the un-augmented training faces (``--teacher-offline``), so a CPU run pays for the views once
instead of on every batch.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import FaceDataset
from ..data.cache import cache_key
from ..download import sha256_of
from ..tta import multi_view_log_probs

log = logging.getLogger(__name__)


def precompute_targets(
    teacher: nn.Module,
    teacher_path: str | Path,
    ds: FaceDataset,
    eval_tf,
    views: str,
    cache: str | Path,
    device: torch.device,
    batch_size: int = 512,
    progress: bool = True,
) -> torch.Tensor:
    """The teacher's multi-view log-probabilities for every face of ``ds`` seen without augmentation (N x C).

    Kept in ``cache`` and reused (a resumed run) while the teacher file, the views and the faces (as the
    decoded-face cache identifies them, :func:`emolens.data.cache.cache_key`) are the same.
    """
    key = {"teacher_sha256": sha256_of(teacher_path), "views": views, "faces": cache_key(ds)}
    cache = Path(cache)
    if cache.is_file():
        held = torch.load(cache, map_location="cpu", weights_only=True)
        if {k: held.get(k) for k in key} == key:
            log.info("teacher targets from %s", cache)
            return held["log_probs"]
        log.info("%s is for another teacher, views or data: recomputing", cache)
    clean = copy.copy(ds)  # the same faces (and decoded-face cache), without augmentation
    clean.transform = eval_tf
    out = []
    loader = DataLoader(clean, batch_size=batch_size, shuffle=False, num_workers=0)
    for x, _, _ in tqdm(loader, desc=f"teacher targets ({views})", disable=not progress, leave=False):
        out.append(multi_view_log_probs(teacher, x.to(device), views).cpu())
    log_probs = torch.cat(out)
    tmp = cache.with_suffix(".tmp")
    torch.save({**key, "log_probs": log_probs}, tmp)
    tmp.replace(cache)
    if clean.bad_files:  # an unreadable face got its neighbour's answer, as the training loader would serve it
        log.warning("%d unreadable image(s) while computing teacher targets", len(clean.bad_files))
    return log_probs


def agreement(log_probs: torch.Tensor, labels: np.ndarray) -> float:
    """Share of faces whose teacher answer is their label (a sanity figure for the log)."""
    return float((log_probs.argmax(1).numpy() == labels).mean())
