"""Matplotlib figures: learning curves, confusion heatmaps, per-class P/R/F1 bars, class distribution."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curves(history: Sequence[dict], path: str | Path) -> Path:
    """Train/val loss and accuracy per epoch (plus val balanced accuracy and macro-F1)."""
    return _save(learning_curves_figure(history), Path(path))


def learning_curves_figure(history: Sequence[dict]):
    """The figure of :func:`plot_learning_curves`; every series has markers, so one epoch shows as points."""
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["val_loss"] for h in history], "o-", label="val")
    a.set(xlabel="epoch", ylabel="loss", title="Loss")
    b.plot(ep, [h["train_accuracy"] for h in history], "o-", label="train accuracy")
    b.plot(ep, [h["val_accuracy"] for h in history], "o-", label="val accuracy")
    b.plot(ep, [h["val_balanced_accuracy"] for h in history], "s--", label="val balanced acc.")
    b.plot(ep, [h["val_macro_f1"] for h in history], "^:", label="val macro-F1")
    b.set(xlabel="epoch", ylabel="score", title="Accuracy", ylim=(0, 1))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def plot_confusion(
    cm: Sequence[Sequence[float]],
    classes: Sequence[str],
    path: str | Path,
    ratio: bool = False,
    title: str | None = None,
) -> Path:
    """Annotated heatmap; rows are true classes, columns predictions."""
    m = np.asarray(cm, dtype=float)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * n, 0.8 + 0.7 * n))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if ratio else max(m.max(), 1))
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title=title or ("Confusion matrix (row ratio)" if ratio else "Confusion matrix"),
    )
    hi = (1 if ratio else m.max()) * 0.6
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{m[i, j]:.2f}" if ratio else f"{int(m[i, j])}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if m[i, j] > hi else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, Path(path))


def plot_per_class(per_class: dict, path: str | Path) -> Path:
    """Grouped bars of precision, recall and F1 per class."""
    classes = list(per_class)
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(6, len(classes) * 1.1), 4))
    for k, key in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (k - 1) * 0.27, [per_class[c][key] for c in classes], 0.27, label=key)
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set(ylim=(0, 1), ylabel="score", title="Per-class precision / recall / F1")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, Path(path))


def plot_class_distribution(counts: Sequence[int], classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Bar chart of samples per class, with the share printed on each bar."""
    c = np.asarray(counts)
    fig, ax = plt.subplots(figsize=(max(6, len(classes) * 1.0), 3.8))
    bars = ax.bar(classes, c, color="tab:gray")
    for b, v in zip(bars, c, strict=True):
        ax.text(
            b.get_x() + b.get_width() / 2, v, f"{100 * v / max(c.sum(), 1):.1f}%", ha="center", va="bottom", fontsize=8
        )
    ax.set(ylabel="images", title=title or "Class distribution")
    ax.tick_params(axis="x", rotation=30)
    return _save(fig, Path(path))
