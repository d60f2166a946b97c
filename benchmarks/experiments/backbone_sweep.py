"""Short fine-tuning runs of the face-pretrained backbones, compared on validation only (issue 21's sweep).

Every run: the same training faces (a fixed-seed subset of ``--dataset``'s train split), the same number
of steps, AdamW, class-weighted CE, a head-only first epoch, then head lr ``--lr`` and backbone
``--lr * --backbone-lr``; scored on the
whole validation split. A run's question is named in its row: which backbone, which input size, BatchNorm
statistics frozen or re-learnt, pretrained or from scratch. Writes ``benchmarks/results/backbone_sweep.json``.

    python benchmarks/experiments/backbone_sweep.py --dataset rafdb=../shared/data/rafdb \
        --max-samples 4000 --epochs 2 --threads 2 [--only faceres112_frozen ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from _common import print_table, save  # noqa: E402

from emolens.training import TrainConfig  # noqa: E402
from emolens.training.trainer import Trainer  # noqa: E402

#: name -> (model, image size, freeze_bn, pretrained)
RUNS = {
    "faceres112_frozen": ("faceres_mobilenet", 112, True, True),
    "faceres112_bn_relearnt": ("faceres_mobilenet", 112, False, True),
    "mobilefacenet112_frozen": ("mobilefacenet", 112, True, True),
    "faceres160_frozen": ("faceres_mobilenet", 160, True, True),
    "faceres224_frozen": ("faceres_mobilenet", 224, True, True),
    "faceres112_scratch": ("faceres_mobilenet", 112, False, False),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, metavar="KIND=ROOT")
    ap.add_argument("--extra-data", nargs="*", default=[], metavar="KIND=ROOT[*N]")
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
    rows = []
    for name in a.only or RUNS:
        model, size, freeze, pretrained = RUNS[name]
        cfg = TrainConfig(
            dataset=kind,
            root=root,
            extra_data=a.extra_data,
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
        rows.append(
            {
                "run": name,
                "model": model,
                "size": size,
                "freeze_bn": freeze,
                "pretrained": pretrained,
                "val_acc": round(last["val_accuracy"], 4),
                "val_bal": round(last["val_balanced_accuracy"], 4),
                "val_f1": round(last["val_macro_f1"], 4),
                "s_per_epoch": round(sum(r["seconds"] for r in history) / len(history), 1),
                "wall_s": round(time.time() - t0, 1),
                "history": history,
            }
        )
        print_table(rows, [c for c in rows[0] if c != "history"])
        save(a.out, {"command": " ".join(sys.argv), "threads": a.threads, "rows": rows})


if __name__ == "__main__":
    main()
