"""``emolens train``, ``evaluate``, ``rebalance`` and ``ensemble``."""

from __future__ import annotations

import argparse
import dataclasses

from ..options import DATASETS, DEVICE, SPLIT, OneOf, Range
from .common import CHECKPOINT_HELP, _add_config_flags, _limited, command

#: TrainConfig fields a resumed run may not change (the rest: epochs, workers, progress, device, ...).
RESUME_FROZEN = (
    "dataset",
    "root",
    "extra_data",
    "model",
    "pretrained",
    "weights",
    "init",
    "image_size",
    "channels",
    "protocol",
    "batch_size",
    "lr",
    "weight_decay",
    "optimizer",
    "schedule",
    "warmup_epochs",
    "freeze_bn",
    "backbone_lr",
    "head_warmup_epochs",
    "class_weights",
    "balanced_sampler",
    "loss",
    "la_prior",
    "label_smoothing",
    "soft_labels",
    "mixup",
    "cutmix",
    "teacher",
    "kd_weight",
    "kd_temperature",
    "kd_balance",
    "teacher_views",
    "teacher_offline",
    "teacher_for",
    "augment",
    "seed",
    "max_samples",
)


def _data_paths(key: str, value):
    """``root`` / ``extra_data`` values with absolute paths (other keys unchanged)."""
    from pathlib import Path

    if key in ("root", "teacher") and value:
        return str(Path(value).resolve())
    if key == "extra_data" and value:
        from ..data import parse_data_spec

        specs = [parse_data_spec(x) for x in value]
        return [f"{k}={Path(r).resolve()}" + (f"*{n}" if n != 1 else "") for k, r, n in specs]
    if key == "teacher_for" and value:
        from ..training.config import parse_routes

        return [f"{k}={Path(v).resolve()}" for k, v in parse_routes(value).items()]
    return value


def train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="JSON config (e.g. a run's config.json); flags override it")
    p.add_argument("--resume", action="store_true", help="continue OUT/last.pt at the last finished epoch")
    _add_config_flags(p)


@command("train", "train a model on a dataset", train_arguments)
def cmd_train(a: argparse.Namespace) -> int:
    from pathlib import Path

    from ..training import TrainConfig, train

    config = a.config
    if not config and a.resume and a.out and (Path(a.out) / "config.json").is_file():
        config = Path(a.out) / "config.json"  # --resume --out RUN continues RUN with its own settings
    cfg = TrainConfig.load(config) if config else TrainConfig()
    if a.resume and config:
        # a resumed run continues the same model, data and optimiser: flags that would change them are refused
        changed = [
            f"--{k.replace('_', '-')} ({getattr(cfg, k)!r} -> {getattr(a, k)!r})"
            for k in RESUME_FROZEN
            if getattr(a, k) is not None and _data_paths(k, getattr(a, k)) != _data_paths(k, getattr(cfg, k))
        ]
        if changed:
            raise ValueError(f"--resume keeps the run's settings; these would change it: {', '.join(changed)}")
    for f in dataclasses.fields(TrainConfig):
        v = getattr(a, f.name)
        if v is not None:
            setattr(cfg, f.name, v)
    if not cfg.root:
        raise ValueError("--root is required (the dataset folder)")
    if not a.resume:  # config.json records absolute data paths, so the run resumes from any folder
        cfg.root, cfg.extra_data = _data_paths("root", cfg.root), _data_paths("extra_data", cfg.extra_data)
        cfg.teacher = _data_paths("teacher", cfg.teacher)
        cfg.teacher_for = _data_paths("teacher_for", cfg.teacher_for)
    out = train(cfg, resume=a.resume)
    print(f"run folder: {out}  (best checkpoint: {out / 'best.pt'})")
    return 0


def evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help=CHECKPOINT_HELP + " (default: fernet_v3)")
    _limited(p, "--dataset", OneOf(*DATASETS), required=True)
    p.add_argument("--root", required=True)
    _limited(p, "--split", SPLIT, default="test")
    p.add_argument("--out", help="folder for metrics.json, CSVs, PNGs and report.md/html")
    _limited(
        p,
        "--tta",
        OneOf("flip", "shift-flip", "scale"),
        "test-time augmentation: average over the mirror image (flip, the default), ten views (shift-flip: "
        "mirror x four 1.4 px shifts) or the face read also at 8/7 of its side (scale)",
        nargs="?",
        const="flip",
    )
    _limited(p, "--protocol", OneOf("paper", "official"), "AffectNet split protocol", default="paper")
    _limited(p, "--workers", Range(int, 0), "data-loading processes (0: in this process)", default=0)
    _limited(p, "--device", DEVICE, default="cpu")


@command("evaluate", "evaluate a checkpoint: metrics, confusion matrices, plots, report", evaluate_arguments)
def cmd_evaluate(a: argparse.Namespace) -> int:
    from ..checkpoint import resolve_checkpoint
    from ..evaluation.evaluate import evaluate

    m = evaluate(
        resolve_checkpoint(a.checkpoint),
        a.dataset,
        a.root,
        split=a.split,
        out=a.out,
        tta=a.tta,
        workers=a.workers,
        protocol=a.protocol,
        device=a.device,
    )
    print(
        f"{m['model']} on {a.dataset}/{a.split}: n={m['n']} accuracy={m['accuracy']:.4f} "
        f"balanced_accuracy={m['balanced_accuracy']:.4f} macro_f1={m['macro_f1']:.4f}"
    )
    if a.out:
        print(f"report: {a.out}/report.md")
    return 0


def rebalance_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint")
    _limited(p, "--dataset", OneOf(*DATASETS), required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--extra-data", nargs="+", metavar="KIND=ROOT", help="more datasets (as for train)")
    _limited(p, "--split", SPLIT, default="val")
    p.add_argument(
        "--metric",
        default="acc_bal",
        choices=["accuracy", "balanced_accuracy", "macro_f1", "acc_bal"],
        help="what to maximise (acc_bal: mean of accuracy and balanced accuracy)",
    )
    _limited(
        p,
        "--min-balanced-accuracy",
        Range(float, 0, 1),
        "only shifts whose balanced accuracy on the split is >= B",
        default=0.0,
        metavar="B",
    )
    _limited(p, "--min-recall", Range(float, 0, 1), "only shifts with every recall >= R", default=0.0, metavar="R")
    _limited(
        p, "--tau", Range(float), "fold this shift instead of choosing one (e.g. -0.5 takes fernet_v3's out again)"
    )
    p.add_argument(
        "--offset",
        nargs="+",
        metavar="CLASS=VALUE",
        type=_offset_item,
        help="fold these logit offsets instead of a prior shift (e.g. neutral=0.2: answer neutral more often)",
    )
    p.add_argument("--out", required=True, help="the corrected checkpoint")


def _offset_item(item: str) -> tuple[str, float]:
    """One ``--offset CLASS=VALUE`` item (a malformed one is refused as the flag is parsed)."""
    name, sep, value = item.partition("=")
    try:
        if not (sep and name):
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--offset takes CLASS=VALUE with a number (got {item!r})") from None


@command(
    "rebalance",
    "post-hoc prior correction: trade accuracy for rare-class recall, chosen on a validation split",
    rebalance_arguments,
)
def cmd_rebalance(a: argparse.Namespace) -> int:
    from ..evaluation.prior import rebalance

    if a.offset and a.tau is not None:
        raise ValueError("--offset and --tau are two corrections: give one")
    r = rebalance(
        a.checkpoint,
        a.dataset,
        a.root,
        a.out,
        split=a.split,
        extra=a.extra_data or (),
        metric=a.metric,
        tau=a.tau,
        min_bal=a.min_balanced_accuracy,
        min_recall=a.min_recall,
        offset=dict(a.offset) if a.offset else None,
    )
    if a.offset:
        print(f"{'':9s} {'accuracy':>9s} {'balanced':>9s} {'macro_f1':>9s} {'min_recall':>10s}")
        for row in r["table"]:
            print(
                f"{'offset' if row['offset'] else 'as it was':9s} {row['accuracy']:9.4f} "
                f"{row['balanced_accuracy']:9.4f} {row['macro_f1']:9.4f} {row['min_recall']:10.4f}"
            )
        given = ", ".join(f"{name} {value:+g}" for name, value in a.offset)
        print(f"wrote {r['out']} (logit offsets {given}, as given; table on {r['selected_on']})")
        return 0
    print(f"{'tau':>6s} {'accuracy':>9s} {'balanced':>9s} {'macro_f1':>9s} {'min_recall':>10s}")
    for row in r["table"]:
        mark = "  <- chosen" if row["tau"] == r["tau"] else ""
        print(
            f"{row['tau']:6.2f} {row['accuracy']:9.4f} {row['balanced_accuracy']:9.4f} {row['macro_f1']:9.4f} "
            f"{row['min_recall']:10.4f}{mark}"
        )
    how = "as given" if r["metric"] == "fixed" else f"chosen by {r['metric']}"
    if r["metric"] != "fixed" and (a.min_balanced_accuracy or a.min_recall):
        how += f" with balanced accuracy >= {a.min_balanced_accuracy} and every recall >= {a.min_recall}"
    print(f"wrote {r['out']} (tau={r['tau']:+.2f}, {how}; table on {r['selected_on']})")
    return 0


def ensemble_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", help="checkpoints or bundled model names (different models may mix)")
    p.add_argument("--out", required=True)
    p.add_argument("--half", action="store_true", help="store the weights as float16 (half the file)")
    p.add_argument(
        "--average",
        action="store_true",
        help="average the weights instead (one model at one model's cost; for epochs of one run, same model)",
    )


@command("ensemble", "combine models into one checkpoint (mean log-probs; --average: mean weights)", ensemble_arguments)
def cmd_ensemble(a: argparse.Namespace) -> int:
    from ..checkpoint import average_checkpoints, build_from_checkpoint, ensemble_checkpoints, half_state, save_atomic

    payload = (average_checkpoints if a.average else ensemble_checkpoints)(a.checkpoints)
    if a.half:  # what float16 storage changes: the float32 ensemble's answers against the stored one's
        import torch

        full, pre = build_from_checkpoint(payload)
        payload = {**payload, "state_dict": half_state(payload["state_dict"])}
        stored, _ = build_from_checkpoint(payload)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(16, pre.channels, pre.image_size, pre.image_size, generator=gen)
        with torch.no_grad():
            diff = (full(x).softmax(1) - stored(x).softmax(1)).abs().max().item()
    save_atomic(payload, a.out)
    pre = payload["preprocess"]
    print(
        f"wrote {a.out} ({payload['model']}: {len(a.checkpoints)} {'averaged' if a.average else 'members'}; "
        f"input {pre['image_size']} px "
        f"{'grey' if pre['channels'] == 1 else 'RGB'})"
    )
    if a.half:
        print(f"float16 storage: largest probability change on random faces {diff:.2e}")
    return 0
