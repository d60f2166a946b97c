"""Fine-tuning a pretrained net: the head and backbone learning rates, a head-only warm-up, BatchNorm kept as
loaded (``--freeze-bn``), and a checkpoint's output rows picked for another class list (``--init``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def class_rows(state: dict, target: dict, rows: Sequence[int]) -> dict:
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


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (``False``) or release everything but the head: a head-only warm-up skips the backbone's backward."""
    keep = {id(p) for p in head_parameters(model)}
    for p in model.parameters():
        if id(p) not in keep:
            p.requires_grad_(trainable)


def _pretrained_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm of ``model`` but those of its new head (``model.head_modules()``, as MobileFaceNet's)."""
    head = {id(m) for h in getattr(model, "head_modules", list)() for m in h.modules()}
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head]


def batchnorm_eval(model: nn.Module) -> None:
    """``--freeze-bn``: every pretrained BatchNorm in eval mode, normalising with its running statistics, never
    updating them (its scale and shift still train). A new head's own BatchNorm (``model.head_modules()``, as
    MobileFaceNet's) keeps learning its statistics: it has none to keep."""
    for m in _pretrained_batchnorms(model):
        m.eval()
