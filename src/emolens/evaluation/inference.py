"""Batched prediction over a dataset, with optional test-time augmentation (mirror image, small shifts)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..tta import VIEWS, multi_view_log_probs


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    tta: bool | str = False,
    progress: bool = False,
    desc: str = "eval",
    channels_last: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Return ``(probabilities NxC, labels N, mean cross-entropy loss)`` over ``loader``.

    ``tta``: a view set of :data:`emolens.tta.VIEWS` (``True`` is "flip": the mirror image too)."""
    views = "flip" if tta is True else (tta or "single")
    if views not in VIEWS:
        raise ValueError(f"tta={tta!r}: choose one of {sorted(VIEWS)}")
    model.eval()
    probs, labels, loss_sum, n = [], [], 0.0, 0
    for x, y, _ in tqdm(loader, desc=desc, disable=not progress, leave=False):
        x, y = x.to(device, non_blocking=True), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x).float() if views == "single" else multi_view_log_probs(model, x, views)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))  # (ignores label -100)
        n += int((y >= 0).sum())
        probs.append(logits.softmax(1).cpu().numpy())
        labels.append(y.cpu().numpy())
    return np.concatenate(probs), np.concatenate(labels), loss_sum / max(n, 1)
