"""Post-hoc prior correction: move a trained model along the accuracy <-> balanced-accuracy trade-off.

A classifier's logits carry the training set's class prior ``pi``. Adding ``tau * log(pi)`` to them
(Menon et al., ICLR 2021, post-hoc logit adjustment) favours frequent classes for ``tau > 0`` and rare
ones for ``tau < 0``; a model trained with the logit-adjusted loss has had ``log(pi)`` taken out, so its
raw logits are the balanced end (``tau = 0``) and ``tau = 1`` restores the prior. :func:`rebalance` picks
``tau`` on a validation split and folds ``tau * log(pi)`` into the bias of the model's last linear layer
(or an ensemble's ``logit_bias``), so the corrected model is an ordinary checkpoint (PyTorch, ONNX, the
live pipeline) with no extra step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .metrics import classification_metrics

#: What :func:`rebalance` can maximise: the metrics themselves, or the mean of accuracy and balanced
#: accuracy ("acc_bal": a model that is both right overall and right on every class).
OBJECTIVES = ("accuracy", "balanced_accuracy", "macro_f1", "acc_bal")
DEFAULT_TAUS = tuple(round(t, 2) + 0.0 for t in np.arange(-1.0, 1.51, 0.1))


def class_log_prior(counts) -> np.ndarray:
    """``log(n_c / N)`` of class counts; a class with no samples gets the log of ``0.5 / N``."""
    n = np.asarray(counts, dtype=np.float64)
    return np.log(np.maximum(n, 0.5) / n.sum())


def objective(m: dict, name: str) -> float:
    if name == "acc_bal":
        return (m["accuracy"] + m["balanced_accuracy"]) / 2
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {OBJECTIVES}")
    return m[name]


def prior_shift_table(
    log_probs: np.ndarray, labels: np.ndarray, log_prior: np.ndarray, classes: Sequence[str], taus=DEFAULT_TAUS
) -> list[dict]:
    """Accuracy, balanced accuracy and macro-F1 of ``argmax(log_probs + tau * log_prior)`` per ``tau``."""
    rows = []
    for tau in taus:
        pred = (log_probs + tau * log_prior[None]).argmax(1)
        m = classification_metrics(labels, pred, classes)
        rows.append(
            {
                "tau": float(tau),
                "accuracy": round(m["accuracy"], 4),
                "balanced_accuracy": round(m["balanced_accuracy"], 4),
                "macro_f1": round(m["macro_f1"], 4),
                "min_recall": round(min(v["recall"] for v in m["per_class"].values() if v["support"]), 4),
            }
        )
    return rows


def best_acc_bal(
    log_probs: np.ndarray,
    labels: np.ndarray,
    log_prior: np.ndarray,
    taus=DEFAULT_TAUS,
    n_boot: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """The best mean of accuracy and balanced accuracy over ``taus`` (the "acc_bal" choice of
    :func:`rebalance`), on the faces as given and then on ``n_boot`` bootstrap resamples of them.

    Returns ``1 + n_boot`` values: element 0 is the full set, then one per resample, each with its own best
    ``tau``. The same ``seed`` draws the same resamples for every model, so two models' values differ
    pairwise (a paired bootstrap: how far apart two models are beyond the luck of which faces were drawn).
    Balanced accuracy averages the recall of the classes present in each resample."""
    labels = np.asarray(labels)
    n, n_cls = log_probs.shape
    correct = np.stack([(log_probs + t * log_prior[None]).argmax(1) == labels for t in taus]).astype(np.float64)
    onehot = np.eye(n_cls)[labels]
    rng = np.random.default_rng(seed)
    weights = [np.ones(n)] + [np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64) for _ in range(n_boot)]
    out = []
    for w in weights:
        per_class = correct @ (w[:, None] * onehot)  # taus x classes: correct answers per class
        support = w @ onehot
        present = support > 0
        bal = (per_class[:, present] / support[present]).mean(1)
        acc = per_class.sum(1) / w.sum()
        out.append(float(((acc + bal) / 2).max()))
    return np.array(out)


def output_bias(model: nn.Module) -> torch.Tensor:
    """The tensor added to the model's logits: its ``logit_bias`` (ensembles), else its last linear layer's bias."""
    if isinstance(getattr(model, "logit_bias", None), torch.Tensor):
        return model.logit_bias
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1].bias is None:
        raise ValueError(f"{type(model).__name__}: no final linear layer with a bias to fold the prior into")
    return linears[-1].bias


def split_log_probs(
    checkpoint: str | Path,
    dataset: str,
    root: str | Path,
    split: str,
    extra: Sequence[str] = (),
    progress: bool = True,
    views: str = "single",
    ckpt: dict | None = None,
) -> dict:
    """Run a checkpoint on a split: ``{"ckpt", "model", "log_probs", "labels", "classes", "counts", "log_prior",
    "name"}`` (``counts``/``log_prior``: the checkpoint's training classes, the prior a shift scales).

    A set with fewer classes than the model (an 8-class model on 7-class RAF-DB) is scored as the user sees it:
    ``labels`` index the model's classes, and an answer the set never holds (contempt) is wrong.

    ``views`` other than "single" average the model over views of each face
    (:data:`emolens.tta.VIEWS`): how a multi-view distillation teacher answers. ``ckpt``: the checkpoint already
    loaded from ``checkpoint``, so it is not read twice."""
    from torch.utils.data import DataLoader

    from ..checkpoint import CheckpointError, build_from_checkpoint, load_checkpoint, train_counts
    from ..data import open_dataset
    from ..transforms import eval_transform
    from .inference import predict_loader

    ckpt = load_checkpoint(checkpoint) if ckpt is None else ckpt
    model, pre = build_from_checkpoint(ckpt, str(checkpoint))
    ds = open_dataset(dataset, root, split, pre.image_size, pre.channels, eval_transform(pre), extra=extra, cache=False)
    classes = list(ckpt["classes"])
    unknown = [c for c in ds.classes if c not in classes]
    if unknown:
        raise CheckpointError(f"{ds.name} has classes {unknown} that the model does not answer ({classes})")
    loader = DataLoader(ds, batch_size=256)
    probs, labels, _ = predict_loader(model, loader, torch.device("cpu"), tta=views, progress=progress)
    labels = np.array([classes.index(c) for c in ds.classes])[labels]  # the set's labels as the model's classes
    counts = train_counts(ckpt)
    return {
        "ckpt": ckpt,
        "model": model,
        "log_probs": np.log(np.maximum(probs, 1e-12)),
        "labels": labels,
        "classes": classes,
        "counts": counts,
        "log_prior": class_log_prior(counts),
        "name": ds.name,
    }


def choose_row(table: Sequence[dict], metric: str, min_bal: float = 0.0, min_recall: float = 0.0) -> dict:
    """The row of a :func:`prior_shift_table` that maximises ``metric`` among those with balanced accuracy
    ``>= min_bal`` and every class's recall ``>= min_recall`` (ties: the smallest ``|tau|``).

    The floors turn a target such as "accuracy, but balanced accuracy at least 0.75 and no class below 0.45"
    into one operating point. A ValueError names the best each floor allows when no row meets both."""
    ok = [r for r in table if r["balanced_accuracy"] >= min_bal and r["min_recall"] >= min_recall]
    if not ok:
        raise ValueError(
            f"no prior shift reaches balanced accuracy >= {min_bal} with every recall >= {min_recall}: "
            f"the best on this split are {max(r['balanced_accuracy'] for r in table):.4f} and "
            f"{max(r['min_recall'] for r in table):.4f}"
        )
    return max(ok, key=lambda r: (objective(r, metric), -abs(r["tau"])))


def rebalance(
    checkpoint: str | Path,
    dataset: str,
    root: str | Path,
    out: str | Path,
    split: str = "val",
    extra: Sequence[str] = (),
    metric: str = "acc_bal",
    taus=DEFAULT_TAUS,
    progress: bool = True,
    tau: float | None = None,
    min_bal: float = 0.0,
    min_recall: float = 0.0,
    offset: dict[str, float] | None = None,
) -> dict:
    """Choose ``tau`` on ``dataset``/``split`` by ``metric`` within the floors of :func:`choose_row`, fold
    ``tau * log(prior)`` into the output bias, write the corrected checkpoint to ``out``; returns
    ``{"tau", "metric", "table", "out", "selected_on"}``.

    A given ``tau`` is folded as it is (``metric`` "fixed"; the table still reports the split): e.g. minus
    :func:`emolens.checkpoint.folded_tau` takes a checkpoint's prior shift out again.

    ``offset`` (``{class: value}``) folds those per-class logit offsets as they are instead of a prior shift
    (e.g. ``{"neutral": 0.2}``: answer neutral more often); the table then has two rows, ``tau`` 0 without
    and with the offsets (``"offset"`` False / True)."""
    from ..checkpoint import load_checkpoint, save_atomic

    loaded = load_checkpoint(checkpoint)
    # an offset naming a class the model does not answer is refused before the split is run
    vec = offset_vector(offset, loaded["classes"]) if offset else None
    run = split_log_probs(checkpoint, dataset, root, split, extra, progress, ckpt=loaded)
    ckpt, model, log_prior = run["ckpt"], run["model"], run["log_prior"]
    if vec is not None:  # the offsets are a "prior" folded at tau 1: the table's rows are tau 0 (as it was) and 1
        rows = prior_shift_table(run["log_probs"], run["labels"], vec, run["classes"], (0.0, 1.0))
        table = [{**row, "tau": 0.0, "offset": row["tau"] == 1.0} for row in rows]
        best, metric, shift = {"tau": 0.0}, "fixed", vec
        record = {"offset": {c: float(v) for c, v in zip(run["classes"], vec, strict=True) if v}}
    else:
        if tau is not None:
            taus, metric = sorted({*taus, round(float(tau), 4)}), "fixed"
        table = prior_shift_table(run["log_probs"], run["labels"], log_prior, run["classes"], taus)
        if tau is not None:
            best = next(r for r in table if r["tau"] == round(float(tau), 4))
        else:
            best = choose_row(table, metric, min_bal, min_recall)
        shift = best["tau"] * log_prior
        record = {"floors": {"balanced_accuracy": min_bal, "min_recall": min_recall}}
    with torch.no_grad():
        output_bias(model).add_(torch.as_tensor(shift, dtype=torch.float32))
    ckpt["state_dict"] = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    ckpt["train_counts"] = run["counts"].tolist()
    ckpt["prior_shift"] = {
        "tau": best["tau"],
        "metric": metric,
        **record,
        "selected_on": run["name"],
        "table": table,
        "previous": ckpt.get("prior_shift"),
    }
    save_atomic(ckpt, out)
    return {"tau": best["tau"], "metric": metric, "table": table, "out": str(out), "selected_on": run["name"]}


def offset_vector(offset: dict[str, float], classes: Sequence[str]) -> np.ndarray:
    """``{class: value}`` as a vector over ``classes`` (zero elsewhere); an unknown class is a ValueError."""
    vec = np.zeros(len(classes))
    for name, value in offset.items():
        if name not in classes:
            raise ValueError(f"offset for unknown class {name!r}; the model's classes are {list(classes)}")
        vec[list(classes).index(name)] = float(value)
    return vec
