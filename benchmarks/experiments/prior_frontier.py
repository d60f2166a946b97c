"""The accuracy <-> balanced-accuracy frontier of checkpoints, compared at equal footing.

A model trained to value every class can sit anywhere on this curve after ``emolens rebalance``, so two
models are compared by their whole curve, not by one point: for each checkpoint the prior shift it already
carries is taken out, then ``tau`` is swept (:func:`emolens.evaluation.prior.prior_shift_table`). The table
gives each model's best mean of accuracy and balanced accuracy (what ``rebalance --metric acc_bal``
picks) and its best accuracy at balanced accuracy >= each ``--at`` level.

Model selection belongs on validation (the default: FER+ Valid + the CK+ and SFEW validation
subjects/films); ``--split test`` is for reporting a model already chosen.

    python benchmarks/experiments/prior_frontier.py NAME=CKPT[@VIEWS] [NAME=CKPT ...] [--split val] \\
        [--bootstrap N] [--out NAME]

``@flip`` / ``@shift-flip`` score a checkpoint averaged over views of each face: a multi-view distillation
teacher (``emolens train --teacher-views``), not a single-pass model.

``--bootstrap N`` adds a paired bootstrap against the first model (:func:`emolens.evaluation.prior.best_acc_bal`)
on the criterion above (best mean of accuracy and balanced accuracy, each resample choosing its own ``tau``):
``own_sd`` is a model's standard deviation over N resamples of the faces, ``vs_first`` its difference from the
first model on the full split, ``boot_sd`` that difference's standard deviation over the same resamples, and
``p_ahead`` the share of resamples in which it beats the first model.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import print_table, save, shared  # noqa: E402

#: The prior shifts swept: from the balanced end (0) to a little past the training prior (1).
TAUS = [round(t, 2) + 0.0 for t in np.arange(0.0, 1.21, 0.05)]


def raw_run(ckpt_path: str, split: str, extra: list[str], views: str = "single") -> dict:
    """:func:`emolens.evaluation.prior.split_log_probs` with the checkpoint's own prior shift taken out."""
    from emolens.checkpoint import folded_tau
    from emolens.evaluation.prior import split_log_probs

    run = split_log_probs(ckpt_path, "ferplus", shared("data/ferplus"), split, extra, progress=False, views=views)
    run["raw"] = run["log_probs"] - folded_tau(run["ckpt"]) * run["log_prior"][None]
    return run


def frontier(ckpt_path: str, split: str, extra: list[str], taus, views: str = "single") -> list[dict]:
    from emolens.evaluation.prior import prior_shift_table

    run = raw_run(ckpt_path, split, extra, views)
    return prior_shift_table(run["raw"], run["labels"], run["log_prior"], run["classes"], taus)


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
    ap.add_argument("--bootstrap", type=int, default=0, metavar="N", help="paired bootstrap against the first model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="prior_frontier", help="results/<OUT>.json")
    a = ap.parse_args()
    import torch

    from emolens.evaluation.prior import best_acc_bal, prior_shift_table

    torch.set_num_threads(a.threads)
    extra = [] if a.ferplus_only else [f"ckplus={shared('data/ckplus')}", f"sfew={shared('data/sfew')}"]
    tables, rows, boots = {}, [], []
    for spec in a.models:
        name, _, path = spec.partition("=")
        path, _, views = path.partition("@")
        run = raw_run(path, a.split, extra, views or "single")
        tables[name] = prior_shift_table(run["raw"], run["labels"], run["log_prior"], run["classes"], TAUS)
        rows.append(summary(name, tables[name], a.at))
        if a.bootstrap:
            boots.append(best_acc_bal(run["raw"], run["labels"], run["log_prior"], TAUS, a.bootstrap, seed=0))
            d = boots[-1] - boots[0]  # paired: the same resampled faces for every model
            own_sd = round(boots[-1][1:].std(), 4)
            rows[-1] |= {"own_sd": own_sd, "vs_first": round(d[0], 4), "boot_sd": round(d[1:].std(), 4)}
            rows[-1]["p_ahead"] = round((d[1:] > 0).mean(), 3)
    cols = ["model", "acc_bal", "at_tau", "acc", "bal", *(f"acc@bal>={lv}" for lv in a.at)]
    cols += ["own_sd", "vs_first", "boot_sd", "p_ahead"] if a.bootstrap else []
    print(f"\nFER+ {a.split}{' + CK+/SFEW' if extra else ''}, tau swept 0..1.2 (threads {a.threads})")
    print_table(rows, cols)
    save(
        a.out,
        {
            "command": shlex.join(["benchmarks/experiments/prior_frontier.py", *sys.argv[1:]]),
            "split": a.split,
            "datasets": ["ferplus", *(e.split("=")[0] for e in extra)],
            "summary": rows,
            "tables": tables,
        },
    )


if __name__ == "__main__":
    main()
