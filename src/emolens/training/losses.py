"""Class-weighted (soft-label) cross-entropy and the logit-adjusted loss for long-tailed classes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def class_weights(counts: np.ndarray | list[int]) -> torch.Tensor:
    """Inverse-frequency weights ``w_c = N / (C * n_c)`` (the paper's weighted CE, eq. 1-2).

    A perfectly balanced set gives all ones; a class with no samples gets weight 0.
    """
    n = np.asarray(counts, dtype=np.float64)
    total, c = n.sum(), len(n)
    w = np.where(n > 0, total / (c * np.maximum(n, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def weighted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor | None = None,
    soft: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy with optional class weights, label smoothing and soft (vote) targets.

    Hard labels: ``sum_i w_{y_i} * CE_i / sum_i w_{y_i}`` (PyTorch's weighted mean).
    Soft targets: ``mean_i sum_c w_c * q_ic * -log p_ic``.
    """
    if soft is not None:
        return F.cross_entropy(logits, soft, weight=weight, label_smoothing=label_smoothing)
    return F.cross_entropy(logits, labels, weight=weight, label_smoothing=label_smoothing)


def log_prior(counts: np.ndarray | list[int]) -> torch.Tensor:
    """:func:`emolens.evaluation.prior.class_log_prior` as a tensor (the logit-adjusted loss's prior)."""
    from ..evaluation.prior import class_log_prior

    return torch.tensor(class_log_prior(counts), dtype=torch.float32)


def logit_adjusted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    log_prior: torch.Tensor,
    tau: float = 1.0,
    soft: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Logit-adjusted loss (Menon et al., ICLR 2021): cross-entropy of ``logits + tau * log_prior``.

    The raw ``logits`` then estimate the class-balanced posterior: their argmax minimises the
    balanced error, and ``logits + tau * log_prior`` gives back the prior-weighted one.
    """
    return weighted_cross_entropy(logits + tau * log_prior.to(logits.device), labels, None, soft, label_smoothing)


def mix_batch(
    x: torch.Tensor,
    target: torch.Tensor,
    mixup: float = 0.0,
    cutmix: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """MixUp (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a batch with a shuffled copy of itself.

    ``target`` is a distribution per sample (one-hot or FER+ votes), so soft labels mix too. ``mixup`` and
    ``cutmix`` are the Beta(a, a) parameters (0: off); with both set, each batch uses one of them at random.
    Returns the mixed images, the mixed targets and the weight ``lam`` of the original batch (for CutMix,
    the exact share of its pixels that were kept). Random draws use PyTorch's global generator (seeded per
    epoch by the trainer).
    """
    modes = [m for m, a in (("mixup", mixup), ("cutmix", cutmix)) if a > 0]
    if not modes or len(x) < 2:
        return x, target, 1.0
    mode = modes[int(torch.randint(len(modes), (1,)))]
    alpha = mixup if mode == "mixup" else cutmix
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(x)).to(x.device)
    if mode == "mixup":
        x = lam * x + (1 - lam) * x[perm]
    else:
        h, w = x.shape[-2:]
        ch, cw = int(round(h * (1 - lam) ** 0.5)), int(round(w * (1 - lam) ** 0.5))
        cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
        y0, y1 = max(cy - ch // 2, 0), min(cy + (ch - ch // 2), h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + (cw - cw // 2), w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return x, lam * target + (1 - lam) * target[perm], lam


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Knowledge distillation (Hinton et al. 2015): ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``,
    averaged over the batch, or its ``weight``-weighted mean (one weight per face: balanced distillation, Zhang
    et al. 2021). ``teacher`` may be logits or log-probabilities (an :class:`Ensemble`'s output)."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True, reduction="none")
    per_face = kl.sum(1) * (t * t)
    if weight is None:
        return per_face.mean()
    return (per_face * weight).sum() / weight.sum().clamp_min(1e-12)
