"""Batched prediction over a dataset, with optional horizontal-flip test-time augmentation."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    tta: bool = False,
    progress: bool = False,
    desc: str = "eval",
    channels_last: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Return ``(probabilities NxC, labels N, mean cross-entropy loss)`` over ``loader``."""
    model.eval()
    probs, labels, loss_sum, n = [], [], 0.0, 0
    for x, y, _ in tqdm(loader, desc=desc, disable=not progress, leave=False):
        x, y = x.to(device, non_blocking=True), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x).float()
        if tta:
            logits = (logits.softmax(1) + model(torch.flip(x, dims=[3])).float().softmax(1)).div(2).log()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        n += len(y)
        probs.append(logits.softmax(1).cpu().numpy())
        labels.append(y.cpu().numpy())
    return np.concatenate(probs), np.concatenate(labels), loss_sum / max(n, 1)
