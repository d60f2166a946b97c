"""Checkpoints: atomic writes, and loading that checks model name and class count.

Shared by training and inference (``live``, ``serve``, ``export``, ``evaluation``), so none of those
imports the training loop.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import models
from .transforms import Preprocess

FORMAT = "emolens-checkpoint/1"
#: model name of an ensemble of different models (:func:`ensemble_checkpoints`)
MIXED_ENSEMBLE = "ensemble"


def _numpy_safe_globals() -> list:
    """numpy scalar and dtype constructors: plain numbers that older checkpoints hold (no code runs)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    out = [core.multiarray.scalar, np.dtype]
    out += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return out


_NUMPY_SAFE = _numpy_safe_globals()


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: the message names the file and the mismatch."""


#: Models shipped inside the package (``src/emolens/weights/``, see its ``MODEL_CARD.md``): name -> file.
BUNDLED = {
    "fernet_v3": "fernet_v3.pt",
    "faceres_v2": "faceres_v2.pt",
}
DEFAULT_BUNDLED = "fernet_v3"
#: bundled models that a later one replaced: old name -> its successor (named in the error)
RETIRED = {"faceres_v1": "faceres_v2"}


def bundled_checkpoint(name: str = DEFAULT_BUNDLED) -> Path:
    """Path of a bundled model by name (``fernet_v3``, the default, or ``faceres_v2``)."""
    from importlib import resources

    if name in RETIRED:
        raise CheckpointError(f"{name}: no longer bundled; its successor is {RETIRED[name]} (weights/MODEL_CARD.md)")
    if name not in BUNDLED:
        raise CheckpointError(f"{name}: not a bundled model (bundled: {', '.join(BUNDLED)})")
    return Path(str(resources.files("emolens") / "weights" / BUNDLED[name]))


def resolve_checkpoint(value: str | Path | None) -> Path:
    """What a ``--checkpoint`` value names: a file, else a bundled model's name; ``None`` -> the default model.
    A file of the same name as a bundled model wins."""
    if value is None or str(value) == "":
        return bundled_checkpoint()
    path = Path(value)
    if not path.exists() and (str(value) in BUNDLED or str(value) in RETIRED):
        return bundled_checkpoint(str(value))
    return path


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file, then rename: a kill mid-write never leaves a broken file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def model_payload(
    model: nn.Module, name: str, classes: list[str] | tuple[str, ...], pre: Preprocess, **extra: Any
) -> dict:
    """The inference part of a checkpoint: enough to rebuild and run the model anywhere."""
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    return {
        "format": FORMAT,
        "model": name,
        "classes": list(classes),
        "num_classes": len(classes),
        "preprocess": pre.to_dict(),
        "state_dict": state,
        **extra,
    }


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


#: What every emolens checkpoint holds besides its format tag (inference needs all of it).
REQUIRED_KEYS = ("model", "num_classes", "classes", "preprocess", "state_dict")


def load_checkpoint(path: str | Path, expect_model: str | None = None, expect_classes: int | None = None) -> dict:
    """Read a checkpoint written by emolens (a path or a bundled model's name, :func:`resolve_checkpoint`) and
    check it matches what the caller expects."""
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found (nor a bundled model: {', '.join(BUNDLED)})")
    try:
        # weights_only: tensors and plain data only; a pickle that would build other objects (and could run
        # code) is refused. numpy scalars/dtypes (plain numbers in older emolens runs) are allowed.
        with torch.serialization.safe_globals(_NUMPY_SAFE):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        import re

        found = re.search(r"GLOBAL ([\w.]+)", str(e))  # the class or function the pickle wanted to call
        if not found:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (UnpicklingError: {e})") from None
        raise CheckpointError(
            f"{path}: refused: the file holds Python objects beyond weights and plain data ({found.group(1)}), "
            "which could run code when loaded; emolens checkpoints never do"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an emolens checkpoint (no '{FORMAT}' format tag)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    pre = ckpt.get("preprocess")
    if isinstance(pre, dict):
        missing += [f"preprocess.{k}" for k in ("image_size", "channels", "mean", "std") if k not in pre]
    elif "preprocess" in ckpt:
        missing.append("preprocess (not a table)")
    if missing:
        raise CheckpointError(f"{path}: emolens checkpoint lacks {', '.join(missing)} (damaged or hand-edited)")
    if expect_model and ckpt["model"] != expect_model:
        raise CheckpointError(f"{path}: checkpoint is for model {ckpt['model']!r}, not {expect_model!r}")
    if expect_classes and ckpt["num_classes"] != expect_classes:
        raise CheckpointError(f"{path}: checkpoint has {ckpt['num_classes']} classes, expected {expect_classes}")
    return ckpt


def build_from_checkpoint(ckpt: dict, source: str = "checkpoint") -> tuple[nn.Module, Preprocess]:
    """Rebuild the model of a loaded checkpoint, in eval mode, with its preprocessing."""
    pre = Preprocess.from_dict(ckpt["preprocess"])
    if ckpt["model"] == MIXED_ENSEMBLE:
        model = _mixed_ensemble(ckpt, pre)
    else:
        model = models.create(
            ckpt["model"], num_classes=ckpt["num_classes"], in_channels=pre.channels, image_size=pre.image_size
        )
    try:
        model.load_state_dict(ckpt["state_dict"])  # float16 storage is cast to the model's float32
    except RuntimeError as e:
        raise CheckpointError(f"{source}: weights do not fit model {ckpt['model']!r}: {str(e)[:300]}") from None
    return model.eval(), pre


def _mixed_ensemble(ckpt: dict, pre: Preprocess) -> nn.Module:
    """An :class:`~emolens.models.Ensemble` of different models, each fed its own input by an adapter."""
    members, adapters = [], []
    for m in ckpt["member_specs"]:
        mp = Preprocess.from_dict(m["preprocess"])
        members.append(
            models.create(
                m["model"], num_classes=ckpt["num_classes"], in_channels=mp.channels, image_size=mp.image_size
            )
        )
        adapters.append(nn.Identity() if mp == pre else models.InputAdapter(pre, mp))
    return models.Ensemble(members, ckpt["num_classes"], adapters)


def train_counts(ckpt: dict) -> np.ndarray:
    """Class counts of the checkpoint's training split: stored in it, or re-counted from its config."""
    if "train_counts" in ckpt:
        return np.asarray(ckpt["train_counts"], float)
    from .data import dataset_samples, parse_data_spec, repeat_samples

    cfg = ckpt.get("config") or {}
    if not cfg.get("root"):
        raise CheckpointError("checkpoint has neither train_counts nor a training config to count classes from")
    specs = [(cfg["dataset"], cfg["root"], 1), *(parse_data_spec(s) for s in cfg.get("extra_data") or [])]
    classes = list(ckpt["classes"])
    counts = np.zeros(len(classes), float)
    for kind, root, repeat in specs:
        samples, cls = dataset_samples(kind, root, "train", cfg.get("protocol", "paper"), cfg.get("seed", 0))
        for s in repeat_samples(samples, repeat):
            if cls[s.label] in classes:
                counts[classes.index(cls[s.label])] += 1
    return counts


def folded_tau(ckpt: dict) -> float:
    """The total ``tau`` that ``emolens rebalance`` (run once or several times) folded into the output bias."""
    total, shift = 0.0, ckpt.get("prior_shift")
    while shift:
        total += float(shift.get("tau", 0.0))
        shift = shift.get("previous")
    return total


def _compatible(paths: list[str | Path], keys: tuple[str, ...] = ("model", "classes", "preprocess")) -> list[dict]:
    """Load checkpoints that must share ``keys`` (else a CheckpointError naming both)."""
    if not paths:
        raise CheckpointError("no checkpoints given")
    ckpts = [load_checkpoint(p) for p in paths]
    first = ckpts[0]
    for p, c in zip(paths, ckpts, strict=True):
        for key in keys:
            if c[key] != first[key]:
                raise CheckpointError(f"{p}: {key} {c[key]!r} differs from {paths[0]}'s {first[key]!r}")
    return ckpts


def _mean_prior(ckpts: list[dict]) -> np.ndarray:
    """The mean of the checkpoints' class frequencies, scaled to their mean training-set size."""
    counts = [train_counts(c) for c in ckpts]
    size = sum(c.sum() for c in counts) / len(counts)
    return sum(c / c.sum() for c in counts) / len(counts) * size


def half_state(state: dict) -> dict:
    """``state`` with its floating-point tensors stored as float16 (loading casts them back to float32)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


_TRAINING_ONLY = ("optimizer", "scheduler", "history", "best", "epoch", "val_metrics", "prior_shift", "config")


def ensemble_checkpoints(paths: list[str | Path]) -> dict:
    """One checkpoint of an :class:`~emolens.models.Ensemble` of ``paths`` (mean log-probabilities).

    Runs of one model with one preprocessing give model ``<model>_x<K>``. Different models (a 48 px grey net
    and a 112 px colour one) give model ``ensemble``: its input is that of the member with the largest
    faces (colour first), and each other member gets its own through an
    :class:`~emolens.models.InputAdapter`. All must share the classes. ``train_counts`` becomes the mean of
    the members' class frequencies (scaled to their mean size), the prior that ``emolens rebalance`` then
    uses. :func:`half_state` halves the file (``emolens ensemble --half``).
    """
    ckpts = _compatible(paths, keys=("classes",))
    first = ckpts[0]
    for p, c in zip(paths, ckpts, strict=True):
        if c["model"] == MIXED_ENSEMBLE:
            raise CheckpointError(f"{p}: already an ensemble of different models; list its members instead")
    same = all(c["model"] == first["model"] and c["preprocess"] == first["preprocess"] for c in ckpts)
    state = {f"members.{k}.{n}": v for k, c in enumerate(ckpts) for n, v in c["state_dict"].items()}
    state["logit_bias"] = torch.zeros(first["num_classes"])
    payload = {
        **first,
        "model": f"{first['model']}_x{len(ckpts)}",
        "state_dict": state,
        "members": [str(p) for p in paths],
        "train_counts": _mean_prior(ckpts).tolist(),
    }
    if not same:
        widest = max(ckpts, key=lambda c: (c["preprocess"]["channels"], c["preprocess"]["image_size"]))
        payload.update(
            model=MIXED_ENSEMBLE,
            preprocess=widest["preprocess"],
            member_specs=[{"model": c["model"], "preprocess": c["preprocess"]} for c in ckpts],
        )
    for key in _TRAINING_ONLY:
        payload.pop(key, None)
    return payload


def average_checkpoints(paths: list[str | Path]) -> dict:
    """One checkpoint whose weights are the mean of ``paths``' (stochastic weight averaging, Izmailov et al.
    2018): one model at one model's cost. Meaningful for checkpoints of one training trajectory (epochs of a run,
    or a run and its ``--resume``), which must share model, classes and preprocessing; buffers that are not
    floating point (BatchNorm's batch counter) are the last checkpoint's. With BatchNorm trained (not
    ``--freeze-bn``) its running statistics are averaged too, an approximation."""
    ckpts = _compatible(paths)
    last = ckpts[-1]
    keys = set(last["state_dict"])
    for p, c in zip(paths, ckpts, strict=True):
        if set(c["state_dict"]) != keys:
            raise CheckpointError(f"{p}: its weights differ in names from {paths[-1]}'s")
    state = {}
    for k, v in last["state_dict"].items():
        if v.is_floating_point():
            state[k] = (sum(c["state_dict"][k].float() for c in ckpts) / len(ckpts)).to(v.dtype)
        else:
            state[k] = v
    payload = {**last, "state_dict": state, "averaged": [str(p) for p in paths]}
    for key in _TRAINING_ONLY:
        if key != "config":  # the recipe of the run averaged
            payload.pop(key, None)
    return payload
