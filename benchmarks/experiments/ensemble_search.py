"""Which ensemble of specialists, with which neutral x happiness offset, comes closest to issue 41's bars on validation.

Each member is run once per validation set *as an ensemble runs it*: on the ensemble's input (the 112 px colour
crop of the widest member), through the same :class:`~emolens.models.InputAdapter` (a 48 px grey member gets the
grey, resized face the ensemble would give it). Its log-probabilities are cached (``--cache``), so a set of members
is scored without running anything: the mean of their log-probabilities (what ``emolens ensemble`` builds) plus an
offset pair on neutral and happiness (what ``emolens rebalance --offset`` folds in), argmax over the model's 8
classes (a contempt answer on 7-class RAF-DB is wrong, as the user sees it).

The margin of a candidate is its smallest slack to the bars, read on validation (:data:`BARS`); the best pair of
each ensemble is the one with the largest margin (maximin).

    python benchmarks/experiments/ensemble_search.py a41=/root/runs/a41/best.pt t41=/root/runs/t41/best.pt \\
        fr2=faceres_v2 v3=fernet_v3 --max-members 3 --cache /root/runs/logits --out ensemble_search_e41
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import print_table, save, shared  # noqa: E402

#: The validation sets: name -> (emolens dataset, shared folder, split).
SETS = {
    "affectnet": ("affectnet", "data/affectnet_yolo", "val"),
    "rafdb": ("rafdb", "data/rafdb", "val"),
    "ferplus": ("ferplus", "data/ferplus", "val"),
}

#: Issue 41's bars: (set, metric, floor). ``min_recall`` is the lowest recall over the set's classes.
BARS = [
    ("affectnet", "balanced", 0.65),
    ("affectnet", "min_recall", 0.50),
    ("rafdb", "accuracy", 0.85),
    ("rafdb", "balanced", 0.78),
    ("ferplus", "accuracy", 0.82),
    ("ferplus", "balanced", 0.72),
    ("rafdb", "recall_neutral", 0.80),
    ("rafdb", "recall_happiness", 0.80),
    ("ferplus", "recall_neutral", 0.80),
    ("ferplus", "recall_happiness", 0.80),
]

#: The offsets tried on neutral and on happiness (added to their log-probabilities).
OFFSETS = [round(x, 2) + 0.0 for x in np.arange(-0.5, 1.0001, 0.05)]


def scores(log_probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy (mean recall over the classes the set holds), each recall, the lowest recall."""
    pred = log_probs.argmax(1)
    recalls = {classes[c]: float((pred[labels == c] == c).mean()) for c in np.unique(labels)}
    return {
        "accuracy": float((pred == labels).mean()),
        "balanced": float(np.mean(list(recalls.values()))),
        "min_recall": min(recalls.values()),
        **{f"recall_{k}": v for k, v in recalls.items()},
    }


def margin(per_set: dict[str, dict]) -> tuple[float, str]:
    """The smallest slack to :data:`BARS` and which bar it is (sets absent from ``per_set`` are skipped)."""
    slacks = [(per_set[s][m] - floor, f"{s} {m}") for s, m, floor in BARS if s in per_set]
    return min(slacks)


def best_offsets(members: dict[str, dict], classes: list[str]) -> dict:
    """The neutral x happiness pair of :data:`OFFSETS` with the largest margin for mean log-probabilities
    ``members`` (set -> {"log_probs", "labels"}); ties keep the smaller offsets."""
    n, h = classes.index("neutral"), classes.index("happiness")
    best = None
    for on in OFFSETS:
        for oh in OFFSETS:
            per_set = {}
            for s, d in members.items():
                lp = d["log_probs"].copy()
                lp[:, n] += on
                lp[:, h] += oh
                per_set[s] = scores(lp, d["labels"], classes)
            m, which = margin(per_set)
            if best is None or m > best["margin"] + 1e-12:
                best = {"neutral": on, "happiness": oh, "margin": m, "binding": which, "sets": per_set}
    return best


def member_log_probs(spec: str, set_name: str, reference: dict | None) -> dict:
    """Log-probabilities of checkpoint ``spec`` on a validation set, fed the ensemble's input ``reference``
    (a preprocess dict; ``None``: the member's own)."""
    import torch

    from emolens.checkpoint import MIXED_ENSEMBLE, load_checkpoint, resolve_checkpoint
    from emolens.evaluation.prior import split_log_probs

    path = resolve_checkpoint(spec)
    ck = load_checkpoint(path)
    if reference is not None and reference != ck["preprocess"]:
        ck = {
            **ck,
            "model": MIXED_ENSEMBLE,
            "preprocess": reference,
            "member_specs": [{"model": ck["model"], "preprocess": ck["preprocess"]}],
            "state_dict": {
                **{f"members.0.{k}": v for k, v in ck["state_dict"].items()},
                "logit_bias": torch.zeros(ck["num_classes"]),
            },
        }
    dataset, folder, split = SETS[set_name]
    out = split_log_probs(path, dataset, shared(folder), split, progress=False, ckpt=ck)
    return {"log_probs": out["log_probs"], "labels": out["labels"], "classes": out["classes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("members", nargs="+", help="NAME=CHECKPOINT (a file or a bundled model's name)")
    ap.add_argument("--max-members", type=int, default=3)
    ap.add_argument("--cache", default=".ensemble_cache", help="folder of the members' cached log-probabilities")
    ap.add_argument("--out", default="ensemble_search", help="results/<out>.json")
    a = ap.parse_args()
    from emolens.checkpoint import load_checkpoint, resolve_checkpoint

    specs = dict(m.split("=", 1) for m in a.members)
    pres = {k: load_checkpoint(resolve_checkpoint(v))["preprocess"] for k, v in specs.items()}
    # the ensemble's input is its widest member's (colour first), as emolens.checkpoint.ensemble_checkpoints
    reference = max(pres.values(), key=lambda p: (p["channels"], p["image_size"]))
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    lp: dict[str, dict[str, dict]] = {}
    for name, spec in specs.items():
        for s in SETS:
            f = cache / f"{name}__{s}.npz"
            if not f.is_file():
                print(f"  running {name} on {s} val", file=sys.stderr)
                d = member_log_probs(spec, s, reference)
                np.savez(f, log_probs=d["log_probs"], labels=d["labels"], classes=np.array(d["classes"]))
            z = np.load(f)
            lp.setdefault(name, {})[s] = {"log_probs": z["log_probs"], "labels": z["labels"]}
            classes = [str(c) for c in z["classes"]]
    rows = []
    for k in range(1, a.max_members + 1):
        for combo in itertools.combinations(specs, k):
            mean = {
                s: {
                    "log_probs": np.mean([lp[m][s]["log_probs"] for m in combo], 0),
                    "labels": lp[combo[0]][s]["labels"],
                }
                for s in SETS
            }
            plain = {s: scores(d["log_probs"], d["labels"], classes) for s, d in mean.items()}
            b = best_offsets(mean, classes)
            row = {"members": "+".join(combo), "plain_margin": margin(plain)[0], **b}
            row["plain"] = plain
            for s in SETS:
                row[f"{s}_acc"] = b["sets"][s]["accuracy"]
                row[f"{s}_bal"] = b["sets"][s]["balanced"]
            rows.append(row)
            print(f"  {row['members']}: margin {b['margin']:+.4f} ({b['binding']})", file=sys.stderr)
    rows.sort(key=lambda r: -r["margin"])
    print_table(
        rows,
        ["members", "plain_margin", "neutral", "happiness", "margin", "binding"]
        + [f"{s}_{m}" for s in SETS for m in ("acc", "bal")],
    )
    save(a.out, {"command": " ".join(sys.argv), "bars": BARS, "offsets": OFFSETS, "members": specs, "rows": rows})


if __name__ == "__main__":
    main()
