"""Classification metrics (scikit-learn): accuracy, balanced accuracy, macro-F1, per-class P/R/F1, confusion."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict:
    """All metrics as plain JSON-able Python values.

    ``confusion`` rows are true classes, columns predictions; ``confusion_ratio`` is row-normalised
    (each row sums to 1, or 0 for a class absent from ``y_true``).
    """
    labels = list(range(len(classes)))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    rows = cm.sum(axis=1, keepdims=True)
    ratio = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = [c for c in labels if (y_true == c).any()]
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # mean recall over the classes present in y_true (= sklearn's balanced_accuracy_score)
        "balanced_accuracy": float(np.mean(r[present])) if present else 0.0,
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "classes": list(classes),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "confusion": cm.tolist(),
        "confusion_ratio": ratio.round(6).tolist(),
    }
