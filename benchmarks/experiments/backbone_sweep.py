"""Short fine-tuning runs of the face-pretrained backbones, compared on validation only (issue 21's sweep).

Every run: the same training faces (a fixed-seed subset of ``--dataset``'s train split), the same number
of steps, AdamW, class-weighted CE, a head-only first epoch, then head lr ``--lr`` and backbone
``--lr * --backbone-lr``; scored on the
whole validation split. A run's question is named in its row: which backbone, which input size, BatchNorm
statistics frozen or re-learnt, pretrained or from scratch, which data mix (``mix_*`` rows: the same number of
training faces drawn from RAF-DB alone or with the sets of ``--extra-root``). Each run's last checkpoint is also
scored on the validation split of every ``--score`` set, so rows that train on different mixes are compared on
the same faces. Rows are merged by name into ``benchmarks/results/backbone_sweep.json``: ``--only`` reruns
some rows and keeps the others.

    python benchmarks/experiments/backbone_sweep.py --dataset rafdb=../shared/data/rafdb \
        --extra-root ferplus=../shared/data/ferplus ckplus=../shared/data/ckplus sfew=../shared/data/sfew \
        --score rafdb=../shared/data/rafdb ferplus=../shared/data/ferplus \
        --max-samples 3000 --epochs 2 --threads 2 [--only faceres112_frozen ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from _common import RESULTS, print_table, save  # noqa: E402

from emolens.evaluation.evaluate import evaluate  # noqa: E402
from emolens.training import TrainConfig  # noqa: E402
from emolens.training.trainer import Trainer  # noqa: E402

#: name -> (model, image size, freeze_bn, pretrained, extra training sets as KIND[*N] of ``--extra-root``)
RUNS = {
    "faceres112_frozen": ("faceres_mobilenet", 112, True, True, ()),
    "faceres112_bn_relearnt": ("faceres_mobilenet", 112, False, True, ()),
    "mobilefacenet112_frozen": ("mobilefacenet", 112, True, True, ()),
    "faceres160_frozen": ("faceres_mobilenet", 160, True, True, ()),
    "faceres224_frozen": ("faceres_mobilenet", 224, True, True, ()),
    "faceres112_scratch": ("faceres_mobilenet", 112, False, False, ()),
    "mix_rafdb_ferplus": ("faceres_mobilenet", 112, True, True, ("ferplus",)),
    "mix_all": ("faceres_mobilenet", 112, True, True, ("ferplus", "ckplus*3", "sfew*3")),
}


def extra_specs(mix: tuple[str, ...], roots: dict[str, str]) -> list[str]:
    """``("ferplus", "ckplus*3")`` -> ``["ferplus=ROOT", "ckplus=ROOT*3"]`` with the roots of ``--extra-root``."""
    out = []
    for item in mix:
        kind, _, times = item.partition("*")
        if kind not in roots:
            sys.exit(f"this run trains on {kind}: give its folder with --extra-root {kind}=ROOT")
        out.append(f"{kind}={roots[kind]}" + (f"*{times}" if times else ""))
    return out


def merged(rows: list[dict], path: Path) -> list[dict]:
    """The rows of an earlier result file, each replaced by the new row of the same name, new ones after."""
    old = json.loads(path.read_text())["rows"] if path.is_file() else []
    new = {r["run"]: r for r in rows}
    kept = [new.pop(r["run"], r) for r in old]
    return kept + list(new.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, metavar="KIND=ROOT")
    ap.add_argument("--extra-data", nargs="*", default=[], metavar="KIND=ROOT[*N]", help="added to every run")
    ap.add_argument("--extra-root", nargs="*", default=[], metavar="KIND=ROOT", help="folders of the mix_* rows' sets")
    ap.add_argument("--score", nargs="*", default=[], metavar="KIND=ROOT", help="also score on these val splits")
    ap.add_argument("--pretrained-dir", required=True, help="folder of the human-models TFJS files")
    ap.add_argument("--max-samples", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--backbone-lr", type=float, default=0.1)
    ap.add_argument("--head-warmup-epochs", type=int, default=1, help="first epochs: the new head only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", choices=list(RUNS))
    ap.add_argument("--runs", default="runs/backbone_sweep")
    ap.add_argument("--out", default="backbone_sweep", help="result name in benchmarks/results/")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    kind, root = a.dataset.split("=", 1)
    roots = dict(spec.split("=", 1) for spec in a.extra_root)
    scored_on = [spec.split("=", 1) for spec in a.score]
    rows = []
    for name in a.only or RUNS:
        model, size, freeze, pretrained, mix = RUNS[name]
        cfg = TrainConfig(
            dataset=kind,
            root=root,
            extra_data=[*a.extra_data, *extra_specs(mix, roots)],
            model=model,
            weights=a.pretrained_dir if pretrained else None,
            image_size=size,
            out=f"{a.runs}/{name}",
            epochs=a.epochs,
            lr=a.lr if pretrained else 2e-3,
            backbone_lr=a.backbone_lr if pretrained else 1.0,
            freeze_bn=freeze,
            head_warmup_epochs=a.head_warmup_epochs if pretrained else 0,
            max_samples=a.max_samples,
            workers=1,
            select_metric="balanced_accuracy",
        )
        t0 = time.time()
        history = Trainer(cfg).fit()
        last = history[-1]
        scores = {}
        for set_kind, set_root in scored_on:
            m = evaluate(Path(cfg.out) / "last.pt", set_kind, set_root, split="val", progress=False)
            scores[set_kind] = {k: round(m[k], 4) for k in ("accuracy", "balanced_accuracy", "macro_f1")}
            scores[set_kind]["recall"] = {c: round(v["recall"], 3) for c, v in m["per_class"].items()}
        rows.append(
            {
                "run": name,
                "model": model,
                "size": size,
                "freeze_bn": freeze,
                "pretrained": pretrained,
                "train_mix": [kind, *mix],
                **{f"{k}_val_acc/bal": f"{v['accuracy']:.3f}/{v['balanced_accuracy']:.3f}" for k, v in scores.items()},
                "val_acc": round(last["val_accuracy"], 4),
                "val_bal": round(last["val_balanced_accuracy"], 4),
                "val_f1": round(last["val_macro_f1"], 4),
                "s_per_epoch": round(sum(r["seconds"] for r in history) / len(history), 1),
                "wall_s": round(time.time() - t0, 1),
                "scores": scores,
                "history": history,
            }
        )
        print_table(rows, [c for c in rows[-1] if c not in ("history", "scores")])
        out_rows = merged(rows, RESULTS / f"{a.out}.json")
        save(a.out, {"command": " ".join(sys.argv), "threads": a.threads, "rows": out_rows})


if __name__ == "__main__":
    main()
