"""Train + evaluate on the standard protocols and write ``benchmarks/results/accuracy_<name>.json``.

Experiments (``--exp``):
  ferplus   FERNet on FER+ (8 classes, majority vote, official Train/Valid/Test): the bundled model's recipe.
  fer2013   FERNet on FER2013 (7 classes; Training / select on PublicTest / report PrivateTest).
  paper     the paper's comparison: paper_cnn vs resnet18 trained side by side on the same FER+ data.
  cross     no training: every model on FER+ test, FER2013 PrivateTest (7 classes), RAF-DB test, held-out CK+
            subjects, held-out SFEW films and AffectNet's validation carve (our duplicate-aware split of the
            Kaggle re-pack's train part: not the official AffectNet validation set), all fixed splits of
            emolens.data, single pass and flip TTA. A 7-class peer is scored on AffectNet with the contempt
            faces left out (``contempt_masked``). The OpenCV Zoo peer aligns RAF-DB's pre-aligned crops with one
            fixed 5-point template (the mean YuNet landmarks of RAF-DB training crops) instead of per-image
            landmarks. Rows: the bundled
            models, the earlier ones (from git), the paper's two (runs of --exp paper, if present) and peers run
            on the same crops in their own environment (benchmarks/peers/; skipped when not installed).

    python benchmarks/accuracy.py --exp ferplus [--epochs 24] [--reuse runs/ferplus_fernet]
    python benchmarks/accuracy.py --exp paper --image-size 64 --max-samples 8000 --epochs 3
    python benchmarks/accuracy.py --exp cross [--peer-python ~/.venvs/fer/bin/python] [--model NAME=CKPT ...]

Each result records the exact configuration, wall time and test metrics (with and without flip TTA).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import SHARED, print_table, save, shared  # noqa: E402

from emolens.evaluation.evaluate import columns_as, evaluate  # noqa: E402
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
ROOTS = {
    "ferplus": "data/ferplus",
    "fer2013": "data/fer2013",
    "rafdb": "data/rafdb",
    "ckplus": "data/ckplus",
    "sfew": "data/sfew",
    "affectnet": "data/affectnet_yolo",
}
#: cross-dataset columns: (dataset kind, split); AffectNet's is our validation carve (emolens.data.affectnet)
CROSS = (
    ("ferplus", "test"),
    ("fer2013", "test"),
    ("rafdb", "test"),
    ("ckplus", "test"),
    ("sfew", "test"),
    ("affectnet", "val"),
)
#: earlier bundled models, read from git history: label -> (commit that shipped it, path there)
PREVIOUS = {
    "emolens v2 (3f42902)": ("3f42902", "src/emolens/weights/fernet_v2.pt"),
    "emolens v1 (b85cbfd)": ("b85cbfd", "src/emolens/weights/fernet_ferplus.pt"),
}
FER_PEER_CLASSES = {"angry": "anger", "happy": "happiness", "sad": "sadness"}


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


def _previous_model(commit: str, path: str) -> Path | None:
    """An earlier bundled model, extracted from git history into benchmarks/_work/."""
    import subprocess

    out = Path(__file__).resolve().parent / "_work" / f"{Path(path).stem}_{commit}.pt"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, check=False)
        if r.returncode:
            print(f"SKIP previous model: git show {commit}:{path} failed ({r.stderr.decode().strip()})")
            return None
        out.write_bytes(r.stdout)
    return out


def _scored(labels, pred, classes) -> dict:
    """n, accuracy, balanced accuracy, macro-F1 and the recall of each class present, of predictions ``pred``."""
    from emolens.evaluation.metrics import classification_metrics

    m = classification_metrics(labels, pred, classes)
    recall = {c: round(v["recall"], 3) for c, v in m["per_class"].items() if v["support"]}
    return {"n": m["n"], **{k: round(m[k], 4) for k in ("accuracy", "balanced_accuracy", "macro_f1")}, "recall": recall}


def _scores(labels, probs, classes) -> dict:
    return _scored(labels, probs.argmax(1), classes)


def _peer_scores(labels, probs, classes) -> dict:
    """A peer's scores; a 7-class peer on a set with contempt is scored on the other faces (``contempt_masked``)."""
    labels = np.asarray(labels)
    if "contempt" in classes and not probs[:, list(classes).index("contempt")].any():
        keep = labels != list(classes).index("contempt")
        kept = [c for c in classes if c != "contempt"]
        remap = np.array([kept.index(c) if c in kept else -1 for c in classes])
        cols = [list(classes).index(c) for c in kept]
        return {**_scores(remap[labels[keep]], probs[keep][:, cols], kept), "contempt_masked": True}
    return _scores(labels, probs, classes)


def _user_scores(labels, probs, model_classes: list[str], classes) -> dict:
    """:func:`_scores` of the model's plain argmax over all its classes; a class the dataset lacks is wrong."""
    names = [model_classes[i] for i in probs.argmax(1)]
    other = len(classes)  # one extra column for answers outside the dataset's classes: never a true label, so
    # it lowers accuracy and recall but is left out of the balanced accuracy's and macro-F1's class averages
    pred = np.array([list(classes).index(n) if n in classes else other for n in names])
    return {**_scored(labels, pred, [*classes, "(other)"]), "answers_outside_classes": int((pred == other).sum())}


def _peer_probs(python: str, script: Path, faces, classes) -> np.ndarray:
    """Run a peer script on uint8 crops in its own interpreter; its probabilities in ``classes`` order."""
    import subprocess
    import tempfile

    from emolens.labels import canonical_name

    with tempfile.TemporaryDirectory() as d:
        np.savez(Path(d) / "in.npz", faces=faces)
        subprocess.run([python, str(script), f"{d}/in.npz", f"{d}/out.npz"], check=True, capture_output=True)
        out = np.load(Path(d) / "out.npz")
        probs, names = out["probs"], [canonical_name(FER_PEER_CLASSES.get(str(c), str(c))) for c in out["classes"]]
    return columns_as(probs, names, classes)


#: peers that find and align the face themselves (benchmarks/peers/README.md): given each image file and
#: the dataset's face box, run in this interpreter (they need only OpenCV and numpy)
SCRIPT_PEERS = {
    "OpenCV Zoo FER (peer, MobileFaceNet int8)": "opencv_zoo_fer.py",
    "face-api.js (peer, expression net)": "faceapi_peer.py",
}


def _script_peer_env() -> dict[str, str]:
    from emolens.live.detectors import BUNDLED_YUNET

    env = dict(os.environ)
    env.setdefault("EMOLENS_YUNET", str(BUNDLED_YUNET))
    zoo = SHARED / "models" / "opencv_zoo_fer" / "facial_expression_recognition_mobilefacenet_2022july_int8.onnx"
    env.setdefault("EMOLENS_ZOO_FER", str(zoo))
    return env


def rafdb_mean_landmarks(step: int = 12) -> np.ndarray:
    """The mean of YuNet's 5 landmarks (the peers' detector) over every ``step``-th RAF-DB training crop, in pixels
    of the 100x100 aligned crop: one fixed alignment for crops that are already aligned."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
    import cv2
    from yunet_faces import YuNet

    from emolens.data.rafdb import rafdb_samples

    det = YuNet(_script_peer_env()["EMOLENS_YUNET"])
    points = []
    for smp in rafdb_samples(shared(ROOTS["rafdb"]), "train")[::step]:
        img = cv2.imread(smp.path)
        found = det.best(img)
        if found is not None:
            points.append(np.asarray(found.landmarks, np.float64).reshape(5, 2) * (100.0 / img.shape[1]))
    return np.mean(points, axis=0)


def _script_peer_probs(script: str, ds, classes, landmarks: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """A self-aligning peer on every image file of ``ds`` (with its face box); probabilities in ``classes``
    order and how many images it found no face in. ``landmarks`` (5x2) aligns every image with that one template
    instead of detected landmarks."""
    import subprocess
    import tempfile

    from emolens.labels import canonical_name

    paths, boxes = [], []
    for smp in ds.samples:
        paths.append(smp.path)
        boxes.append(smp.face if smp.face is not None else (np.nan,) * 4)
    with tempfile.TemporaryDirectory() as d:
        inp = {"paths": np.array(paths), "boxes": np.array(boxes, np.float32)}
        if landmarks is not None:
            inp["landmarks"] = np.repeat(np.asarray(landmarks, np.float32)[None], len(paths), axis=0)
        np.savez(Path(d) / "in.npz", **inp)
        r = subprocess.run(
            [sys.executable, str(Path(__file__).resolve().parent / "peers" / script), f"{d}/in.npz", f"{d}/out.npz"],
            capture_output=True,
            text=True,
            env=_script_peer_env(),
            check=False,
        )
        if r.returncode:
            raise RuntimeError(f"{script} failed: {r.stderr.strip()[-500:]}")
        out = np.load(Path(d) / "out.npz")
        probs, names, detected = out["probs"], [canonical_name(str(c)) for c in out["classes"]], out["detected"]
    return columns_as(probs, names, classes), int((~detected).sum())


def cross(models: dict[str, str], peer_python: str | None, script_peers: bool = True) -> list[dict]:
    """Every model on every cross-dataset column, single pass and flip TTA, on the same crops."""

    from emolens.checkpoint import build_from_checkpoint, load_checkpoint
    from emolens.data import open_dataset
    from emolens.evaluation.inference import predict_loader
    from emolens.transforms import eval_transform

    rows = []
    peer = Path(__file__).resolve().parent / "peers" / "fer_peer.py"
    entries = [(name, path) for name, path in models.items()]
    if peer_python:
        entries.append(("fer (peer, mini-Xception 2018)", "peer"))
    if script_peers:
        for name, script in SCRIPT_PEERS.items():
            if script == "faceapi_peer.py" and not os.environ.get("EMOLENS_FACEAPI_DIR"):
                print(f"SKIP {name}: set $EMOLENS_FACEAPI_DIR (benchmarks/peers/README.md)")
                continue
            entries.append((name, "script:" + script))
    for name, path in entries:
        for tta in (False, True):
            if tta and path.startswith("script:"):
                continue  # the self-aligning peers are run as their authors run them: one view
            row = {"model": name, "tta": tta, "checkpoint": path}
            for kind, split in CROSS:
                if path.startswith("script:"):
                    ds = open_dataset(kind, shared(ROOTS[kind]), split, 48, 1, cache=False)
                    script = path.split(":", 1)[1]
                    fixed = None
                    if kind == "rafdb" and script == "opencv_zoo_fer.py":
                        fixed = rafdb_mean_landmarks()
                    probs, missed = _script_peer_probs(script, ds, ds.classes, fixed)
                    row[kind] = {**_peer_scores(ds.targets, probs, ds.classes), "no_face_found": missed}
                    if fixed is not None:
                        row[kind]["fixed_alignment"] = np.round(fixed, 2).tolist()
                    continue
                if path == "peer":
                    ds = open_dataset(kind, shared(ROOTS[kind]), split, 48, 1, cache=False)
                    faces = np.stack([ds.load_face(i) for i in range(len(ds))])
                    probs = _peer_probs(peer_python, peer, faces, ds.classes)
                    if tta:
                        probs = (probs + _peer_probs(peer_python, peer, faces[:, :, ::-1].copy(), ds.classes)) / 2
                    row[kind] = _peer_scores(ds.targets, probs, ds.classes)
                    continue
                ckpt = load_checkpoint(path)
                model, pre = build_from_checkpoint(ckpt, path)
                ds = open_dataset(
                    kind, shared(ROOTS[kind]), split, pre.image_size, pre.channels, eval_transform(pre), cache=False
                )
                loader = torch.utils.data.DataLoader(ds, batch_size=256)
                probs, labels, _ = predict_loader(model, loader, torch.device("cpu"), tta=tta)
                mine = list(ckpt["classes"])
                # as the user sees it: the argmax over all the model's classes, so on a set without
                # contempt (FER2013, RAF-DB, SFEW) or neutral (CK+) an answer of that class is wrong
                row[f"{kind}"] = _user_scores(labels, probs, mine, ds.classes)
                # masked: only the dataset's classes compete (the model's other outputs dropped); a class the
                # model lacks (contempt for a 7-class model on AffectNet) is left out with its faces
                if mine != list(ds.classes):
                    kept = [c for c in ds.classes if c in mine]
                    keep = np.isin(labels, [list(ds.classes).index(c) for c in kept])
                    remap = np.array([kept.index(c) if c in kept else -1 for c in ds.classes])
                    masked = probs[keep][:, [mine.index(c) for c in kept]]
                    row[f"{kind}_masked"] = _scores(remap[np.asarray(labels)[keep]], masked, kept)
            rows.append(row)
            print(
                f"{name:34s} tta={tta!s:5s} "
                + "  ".join(
                    f"{k}: {row[k]['accuracy']:.3f}/{row[k]['balanced_accuracy']:.3f}/{row[k]['macro_f1']:.3f}"
                    for k, _ in CROSS
                ),
                flush=True,
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", required=True, choices=["ferplus", "fer2013", "paper", "cross"])
    ap.add_argument("--model", nargs="+", metavar="NAME=CKPT", help="cross: more checkpoints to compare")
    ap.add_argument(
        "--peer-python",
        default=os.environ.get("EMOLENS_PEER_PYTHON"),
        help="cross: python of the venv holding the fer peer (benchmarks/peers/README.md)",
    )
    ap.add_argument("--no-script-peers", action="store_true", help="cross: skip the OpenCV Zoo and face-api.js peers")
    ap.add_argument("--runs", default="runs", help="folder for run directories")
    ap.add_argument("--reuse", action="store_true", help="evaluate an existing run instead of training again")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--image-size", type=int)
    ap.add_argument("--max-samples", type=int)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--pretrained", action="store_true", help="resnet18 with ImageNet weights (needs download)")
    a = ap.parse_args()
    over = dict(epochs=a.epochs, image_size=a.image_size, max_samples=a.max_samples)
    runs = Path(a.runs)
    if a.exp == "cross":
        from emolens.checkpoint import BUNDLED, DEFAULT_BUNDLED, bundled_checkpoint

        models = {
            f"emolens {name} ({'default' if name == DEFAULT_BUNDLED else 'opt-in'})": str(bundled_checkpoint(name))
            for name in BUNDLED
        }
        for label, (commit, path) in PREVIOUS.items():
            prev = _previous_model(commit, path)
            if prev:
                models[label] = str(prev)
        for name, run_dir in (("paper_cnn (paper)", "paper_cnn"), ("resnet18 (paper)", "paper_resnet18")):
            if (runs / run_dir / "best.pt").is_file():
                models[name] = str(runs / run_dir / "best.pt")
            else:
                print(f"SKIP {name}: {runs / run_dir / 'best.pt'} not found (run --exp paper first)")
        models.update(dict(m.split("=", 1) for m in a.model or []))
        if not a.peer_python:
            print("SKIP peer fer: no --peer-python / $EMOLENS_PEER_PYTHON (benchmarks/peers/README.md)")
        torch.set_num_threads(a.threads)
        rows = cross(models, a.peer_python, not a.no_script_peers)
        table = [
            {
                "model": r["model"],
                "tta": r["tta"],
                **{
                    f"{k}_{m}": r[k][key]
                    for k, _ in CROSS
                    for m, key in (("acc", "accuracy"), ("bal", "balanced_accuracy"), ("f1", "macro_f1"))
                },
            }
            for r in rows
        ]
        print_table(table, list(table[0]))
        save("accuracy_cross", {"command": " ".join(sys.argv), "columns": [f"{k}:{s}" for k, s in CROSS], "rows": rows})
        return
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
