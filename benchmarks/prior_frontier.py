"""The accuracy <-> balanced-accuracy frontier of checkpoints, compared at equal footing.

A model trained to value every class can sit anywhere on this curve after ``emolens rebalance``, so two
models are compared by their whole curve, not by one point: for each checkpoint the prior shift it already
carries is taken out, then ``tau`` is swept (:func:`emolens.evaluation.prior.prior_shift_table`). The table
gives each model's best mean of accuracy and balanced accuracy (what ``rebalance --metric acc_bal``
picks) and its best accuracy at balanced accuracy >= each ``--at`` level.

Model selection belongs on validation (the default: FER+ Valid + the CK+ and SFEW validation
subjects/films); ``--split test`` is for reporting a model already chosen.

    python benchmarks/prior_frontier.py NAME=CKPT[@VIEWS] [NAME=CKPT ...] [--split val] [--out NAME]

``@flip`` / ``@shift-flip`` score a checkpoint averaged over views of each face: a multi-view distillation
teacher (``emolens train --teacher-views``), not a single-pass model.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save, shared  # noqa: E402


def frontier(ckpt_path: str, split: str, extra: list[str], taus, views: str = "single") -> list[dict]:
    from emolens.checkpoint import folded_tau
    from emolens.evaluation.prior import prior_shift_table, split_log_probs

    run = split_log_probs(ckpt_path, "ferplus", shared("data/ferplus"), split, extra, progress=False, views=views)
    raw = run["log_probs"] - folded_tau(run["ckpt"]) * run["log_prior"][None]
    return prior_shift_table(raw, run["labels"], run["log_prior"], run["classes"], taus)


def summary(name: str, table: list[dict], levels: list[float]) -> dict:
    from emolens.evaluation.prior import objective

    best = max(table, key=lambda r: objective(r, "acc_bal"))
    row = {
        "model": name,
        "acc_bal": round(objective(best, "acc_bal"), 4),
        "at_tau": best["tau"],
        "acc": best["accuracy"],
        "bal": best["balanced_accuracy"],
    }
    for lv in levels:
        ok = [r["accuracy"] for r in table if r["balanced_accuracy"] >= lv]
        row[f"acc@bal>={lv}"] = max(ok) if ok else None
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", metavar="NAME=CKPT[@VIEWS]", help="VIEWS: single (default), flip, shift-flip")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--ferplus-only", action="store_true", help="FER+ alone (default: + CK+ and SFEW)")
    ap.add_argument("--at", type=float, nargs="+", default=[0.77, 0.75, 0.72], help="balanced-accuracy levels")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="prior_frontier", help="results/<OUT>.json")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    extra = [] if a.ferplus_only else [f"ckplus={shared('data/ckplus')}", f"sfew={shared('data/sfew')}"]
    taus = [round(t, 2) + 0.0 for t in np.arange(0.0, 1.21, 0.05)]
    tables, rows = {}, []
    for spec in a.models:
        name, _, path = spec.partition("=")
        path, _, views = path.partition("@")
        tables[name] = frontier(path, a.split, extra, taus, views or "single")
        rows.append(summary(name, tables[name], a.at))
    cols = ["model", "acc_bal", "at_tau", "acc", "bal", *(f"acc@bal>={lv}" for lv in a.at)]
    print(f"\nFER+ {a.split}{' + CK+/SFEW' if extra else ''}, tau swept 0..1.2 (threads {a.threads})")
    print_table(rows, cols)
    save(
        a.out,
        {
            "command": shlex.join(["benchmarks/prior_frontier.py", *sys.argv[1:]]),
            "split": a.split,
            "datasets": ["ferplus", *(e.split("=")[0] for e in extra)],
            "summary": rows,
            "tables": tables,
        },
    )


if __name__ == "__main__":
    main()
