"""Batched prediction over a dataset, with optional test-time augmentation (mirror image, small shifts)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..models import accepts_other_sizes
from ..transforms import VIEWS, View, view_batch


@torch.no_grad()
def multi_view_log_probs(model: nn.Module, x: torch.Tensor, views: str | list[View] = "shift-flip") -> torch.Tensor:
    """Log of the model's class probabilities averaged over ``views`` of ``x`` (a name in
    :data:`emolens.transforms.VIEWS`): test-time augmentation, and the multi-view distillation teacher."""
    vs = VIEWS[views] if isinstance(views, str) else views
    p = sum(_view_probs(model, x, v) for v in vs) / len(vs)
    return torch.log(p.clamp_min(1e-12))


def _view_probs(model: nn.Module, x: torch.Tensor, view: View) -> torch.Tensor:
    xv = view_batch(x, *view)
    if xv.shape[-2:] == x.shape[-2:]:
        return model(xv).float().softmax(1)
    refusal = (
        f"this model reads {x.shape[-1]} px faces only (a layer of fixed size), so it cannot answer the "
        f"{xv.shape[-1]} px view of test-time augmentation 'scale'"
    )
    if not accepts_other_sizes(model):
        raise ValueError(refusal)
    try:
        return model(xv).float().softmax(1)
    except RuntimeError as e:  # a model that does not say so, failing on the size
        raise ValueError(f"{refusal}: {str(e)[:200]}") from None


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

    ``tta``: a view set of :data:`emolens.transforms.VIEWS` (``True`` is "flip": the mirror image too)."""
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
