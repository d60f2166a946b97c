"""What the trainer wraps its datasets in: items that carry a teacher's answers or their source dataset, a fixed
random subset (``--max-samples``), every face held on the device, and scores per source dataset of a mix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ..data import FaceDataset
from ..evaluation.metrics import classification_metrics


class WithColumn(Dataset):
    """``ds`` whose items carry one more element: row ``i`` of ``column`` (a teacher's precomputed answers, or the
    index of the dataset of the mix each item comes from)."""

    def __init__(self, ds, column: torch.Tensor, what: str = "values") -> None:
        if len(column) != len(ds):
            raise ValueError(f"{len(column)} {what} for {len(ds)} faces")
        self.ds, self.column = ds, column

    def __len__(self) -> int:
        return len(self.ds)

    @property
    def targets(self) -> np.ndarray:
        return self.ds.targets

    def __getitem__(self, i: int):
        return (*self.ds[i], self.column[i])


def dataset_parts(ds) -> np.ndarray:
    """The name of the dataset each item of ``ds`` comes from (a mix's parts; a :class:`Subset` of one too)."""
    if isinstance(ds, Subset):
        return dataset_parts(ds.dataset)[np.asarray(ds.indices)]
    if isinstance(ds, WithColumn):
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


def subset(ds: FaceDataset | WithColumn, n: int | None, seed: int) -> FaceDataset | WithColumn | Subset:
    if n is None or n >= len(ds):
        return ds
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), n, replace=False))
    sub = Subset(ds, idx.tolist())
    sub.targets = ds.targets[idx]  # type: ignore[attr-defined]
    return sub


def hold_on_device(ds, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Every face of ``ds`` (uint8, untransformed), its label and soft target (and held teacher answers), as
    tensors on ``device``.

    Unreadable images are handled as the DataLoader would (``on_error``): skipped in favour of the next one.
    """
    loader = DataLoader(ds, batch_size=1024, shuffle=False, num_workers=0)
    batches = list(tqdm(loader, desc="faces to device", leave=False, disable=len(ds) < 5000))
    return tuple(torch.cat([b[k] for b in batches]).to(device) for k in range(len(batches[0])))
