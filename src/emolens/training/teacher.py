"""A distillation teacher that averages its answers over several views of each face.

Averaging a model over small shifts and mirror images of a face is a better teacher than the model on
one view (on FER+ Valid + CK+/SFEW val, ten views lift the shipped model's accuracy at equal balanced
accuracy by about a point; ``benchmarks/results/prior_frontier_teacher_views_v3.json``).
:func:`emolens.evaluation.inference.multi_view_log_probs` is that teacher; :func:`precompute_targets` runs
it once over the un-augmented training faces (``--teacher-offline``), so a CPU run pays for the views once
instead of on every batch. :func:`routed_targets` gives each dataset of a mix its own teacher
(``--teacher-for``): the best teacher of one dataset is often not the best of another.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..data import FaceDataset
from ..data.cache import cache_key
from ..download import sha256_of
from ..tta import multi_view_log_probs
from .adapters import dataset_parts

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
    rows: np.ndarray | None = None,
) -> torch.Tensor:
    """The teacher's multi-view log-probabilities for every face of ``ds`` seen without augmentation (N x C), or
    for the faces ``rows`` of it only (len(rows) x C).

    Kept in ``cache`` and reused (a resumed run) while the teacher file, the views and the faces (as the
    decoded-face cache identifies them, :func:`emolens.data.cache.cache_key`, and the rows) are the same.
    """
    some = None if rows is None else hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:20]
    key = {"teacher_sha256": sha256_of(teacher_path), "views": views, "faces": cache_key(ds), "rows": some}
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
    faces = clean if rows is None else Subset(clean, np.asarray(rows).tolist())
    loader = DataLoader(faces, batch_size=batch_size, shuffle=False, num_workers=0)
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


def routed_targets(
    teacher: nn.Module,
    teacher_path: str | Path,
    routes: Mapping[str, str],
    load: Callable[[str], nn.Module],
    ds: FaceDataset,
    eval_tf,
    views: str,
    out: Path,
    device: torch.device,
    progress: bool = True,
) -> torch.Tensor:
    """:func:`precompute_targets` with one teacher per dataset of the mix ``ds``: faces of dataset ``name`` get
    the answers of the checkpoint ``routes[name]`` (loaded with ``load``), the rest those of ``teacher``.

    Each teacher answers only its own faces, kept in ``out/teacher_targets[_NAME].pt``.
    """
    parts = dataset_parts(ds)
    unknown = sorted(set(routes) - set(parts.tolist()))
    if unknown:
        raise ValueError(f"--teacher-for names {unknown}, not datasets of this mix {list(dict.fromkeys(parts))}")
    targets: torch.Tensor | None = None
    groups = [(None, str(teacher_path), np.flatnonzero(~np.isin(parts, list(routes))))]
    groups += [(name, path, np.flatnonzero(parts == name)) for name, path in routes.items()]
    for name, path, rows in groups:
        if len(rows) == 0:
            continue
        model = teacher if name is None else load(path)
        cache = out / ("teacher_targets.pt" if name is None else f"teacher_targets_{name}.pt")
        some = None if len(rows) == len(ds) else rows  # one teacher for all: the cache of a run without routes
        lp = precompute_targets(model, path, ds, eval_tf, views, cache, device, progress=progress, rows=some)
        if targets is None:
            targets = torch.empty(len(ds), lp.shape[1], dtype=lp.dtype)
        targets[torch.as_tensor(rows)] = lp
        whose = name or ("the other datasets" if routes else "all faces")
        log.info("teacher %s: %d faces (%s)", path, len(rows), whose)
    assert targets is not None
    return targets
