"""Train + evaluate on the standard protocols and write ``benchmarks/results/accuracy_<name>.json``.

Experiments (``--exp``):
  ferplus   FERNet on FER+ (8 classes, majority vote, official Train/Valid/Test): the bundled model's recipe.
  fer2013   FERNet on FER2013 (7 classes; Training / select on PublicTest / report PrivateTest).
  paper     the paper's comparison: paper_cnn vs resnet18 trained side by side on the same FER+ data.

    python benchmarks/accuracy.py --exp ferplus [--epochs 24] [--reuse runs/ferplus_fernet]
    python benchmarks/accuracy.py --exp paper --image-size 64 --max-samples 8000 --epochs 3

Each result records the exact configuration, wall time and test metrics (with and without flip TTA).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save, shared  # noqa: E402

from emolens.evaluation.evaluate import evaluate  # noqa: E402
from emolens.training import TrainConfig, train  # noqa: E402

PAPER_SETUP = dict(
    dataset="ferplus",
    epochs=3,
    lr=0.001,
    schedule="cosine",
    class_weights=True,
    select_metric="macro_f1",
    workers=1,
    channels=3,
)
RECIPES = {
    "ferplus": dict(
        dataset="ferplus",
        model="fernet",
        epochs=24,
        lr=0.002,
        schedule="onecycle",
        soft_labels=True,
        class_weights=False,
        select_metric="accuracy",
        workers=1,
    ),
    "fer2013": dict(
        dataset="fer2013",
        model="fernet",
        epochs=24,
        lr=0.002,
        schedule="onecycle",
        class_weights=False,
        label_smoothing=0.1,
        select_metric="accuracy",
        workers=1,
    ),
    # the paper's comparison: both models on the same data with the same (paper) training setup
    "paper_cnn": dict(PAPER_SETUP, model="paper_cnn"),
    "resnet18": dict(PAPER_SETUP, model="resnet18"),
}
ROOTS = {"ferplus": "data/ferplus", "fer2013": "data/fer2013"}


def run(recipe: str, out: Path, reuse: bool, **override) -> dict:
    cfg = TrainConfig(**{**RECIPES[recipe], **{k: v for k, v in override.items() if v is not None}})
    cfg.root = str(shared(ROOTS[cfg.dataset]))
    cfg.out = str(out)
    t = time.time()
    if not (reuse and (out / "best.pt").is_file()):
        train(cfg, resume=(out / "last.pt").is_file())
    train_s = time.time() - t
    log = out / "metrics.jsonl"
    if log.is_file():  # the run's own per-epoch times (also right for reused or resumed runs)
        import json

        train_s = sum(json.loads(x)["seconds"] for x in log.read_text().splitlines() if x.strip())
    res = {"recipe": recipe, "config": vars(cfg), "train_seconds": round(train_s, 1), "run": str(out)}
    for tta in (False, True):
        m = evaluate(
            out / "best.pt",
            cfg.dataset,
            cfg.root,
            "test",
            out=out / ("eval_tta" if tta else "eval"),
            tta=tta,
            progress=False,
        )
        res["test_tta" if tta else "test"] = {k: m[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1")}
        res["per_class_f1" + ("_tta" if tta else "")] = {c: round(v["f1"], 4) for c, v in m["per_class"].items()}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", required=True, choices=["ferplus", "fer2013", "paper"])
    ap.add_argument("--runs", default="runs", help="folder for run directories")
    ap.add_argument("--reuse", action="store_true", help="evaluate an existing run instead of training again")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--image-size", type=int)
    ap.add_argument("--max-samples", type=int)
    ap.add_argument("--pretrained", action="store_true", help="resnet18 with ImageNet weights (needs download)")
    a = ap.parse_args()
    over = dict(epochs=a.epochs, image_size=a.image_size, max_samples=a.max_samples)
    runs = Path(a.runs)
    if a.exp == "paper":
        rows = [
            run("paper_cnn", runs / "paper_cnn", a.reuse, **over),
            run("resnet18", runs / "paper_resnet18", a.reuse, pretrained=a.pretrained or None, **over),
        ]
    else:
        rows = [run(a.exp, runs / f"{a.exp}_fernet", a.reuse, **over)]
    table = [
        {
            "recipe": r["recipe"],
            "dataset": r["config"]["dataset"],
            "epochs": r["config"]["epochs"],
            "train_min": r["train_seconds"] / 60,
            "acc": r["test"]["accuracy"],
            "acc_tta": r["test_tta"]["accuracy"],
            "bal_acc": r["test"]["balanced_accuracy"],
            "macro_f1": r["test"]["macro_f1"],
        }
        for r in rows
    ]
    print_table(table, ["recipe", "dataset", "epochs", "train_min", "acc", "acc_tta", "bal_acc", "macro_f1"])
    save(f"accuracy_{a.exp}", {"command": " ".join(sys.argv), "results": rows})


if __name__ == "__main__":
    main()
