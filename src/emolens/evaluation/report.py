"""Write an evaluation as files: metrics.json, CSV tables, PNG plots and a Markdown + HTML report."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

from .plots import plot_class_distribution, plot_confusion, plot_per_class


def write_report(
    metrics: dict, out: str | Path, title: str = "emolens evaluation", history: list[dict] | None = None
) -> Path:
    """Write every artefact of ``metrics`` (from :func:`classification_metrics`) into ``out``; returns report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classes = metrics["classes"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with open(out / "per_class.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "precision", "recall", "f1", "support"])
        for c in classes:
            pc = metrics["per_class"][c]
            w.writerow([c, f"{pc['precision']:.4f}", f"{pc['recall']:.4f}", f"{pc['f1']:.4f}", pc["support"]])
    for key in ("confusion", "confusion_ratio"):
        with open(out / f"{key}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["true\\pred", *classes])
            for c, row in zip(classes, metrics[key], strict=True):
                w.writerow([c, *row])
    plots = {
        "Confusion matrix (counts)": plot_confusion(metrics["confusion"], classes, out / "confusion.png"),
        "Confusion matrix (row ratios)": plot_confusion(
            metrics["confusion_ratio"], classes, out / "confusion_ratio.png", ratio=True
        ),
        "Per-class precision / recall / F1": plot_per_class(metrics["per_class"], out / "per_class.png"),
        "Class distribution (test set)": plot_class_distribution(
            [metrics["per_class"][c]["support"] for c in classes], classes, out / "class_distribution.png"
        ),
    }
    if history:
        from .plots import plot_learning_curves

        plots["Learning curves"] = plot_learning_curves(history, out / "learning_curves.png")

    lines = [
        f"# {title}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| images | {metrics['n']} |",
        f"| accuracy | {metrics['accuracy']:.4f} |",
        f"| balanced accuracy (macro recall) | {metrics['balanced_accuracy']:.4f} |",
        f"| macro-F1 | {metrics['macro_f1']:.4f} |",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for c in classes:
        pc = metrics["per_class"][c]
        lines.append(f"| {c} | {pc['precision']:.3f} | {pc['recall']:.3f} | {pc['f1']:.3f} | {pc['support']} |")
    lines.append("")
    for name, p in plots.items():
        lines += [f"## {name}", "", f"![{name}]({p.name})", ""]
    md = out / "report.md"
    md.write_text("\n".join(lines))
    body = "".join(f"<h2>{html.escape(n)}</h2><img src='{p.name}' style='max-width:100%'>" for n, p in plots.items())
    table = "".join(
        f"<tr><td>{c}</td>"
        + "".join(f"<td>{metrics['per_class'][c][k]:.3f}</td>" for k in ("precision", "recall", "f1"))
        + f"<td>{metrics['per_class'][c]['support']}</td></tr>"
        for c in classes
    )
    (out / "report.html").write_text(
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><body style='font-family:sans-serif'>"
        f"<h1>{html.escape(title)}</h1><p>images {metrics['n']} &middot; accuracy {metrics['accuracy']:.4f} &middot; "
        f"balanced accuracy {metrics['balanced_accuracy']:.4f} &middot; macro-F1 {metrics['macro_f1']:.4f}</p>"
        f"<table border=1 cellpadding=4><tr><th>class<th>precision<th>recall<th>F1<th>support</tr>{table}</table>"
        f"{body}</body>"
    )
    return md
