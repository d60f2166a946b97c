"""Crop geometry: where the detector's box sits in a training crop, and accuracy through detection.

Part 1 (``--fit``): YuNet and Haar run on FER+ training faces (48 px, upscaled 4x onto a 480 px grey
canvas); the FER crop's side and centre are fitted relative to the detected box. This gives the
constants of ``emolens.geometry`` (``FER_CROP_SCALE``) and each detector's ``crop_scale``.

Part 2 (default): a checkpoint classifies the **real image files** of held-out CK+ subjects and SFEW films
through the same code as ``emolens predict`` (``emolens.live.images.predict_images``), once per crop
variant, next to the reference crops (what the dataset loader feeds training and ``emolens evaluate``):

  reference      the dataset's own crop (CK+: the 48 px image; SFEW: the fixed aligned-face box)
  whole-image    ``emolens predict --whole-image`` (the image resized to the model input)
  detect         ``emolens predict`` defaults: YuNet + the FER-like crop (margin 0)
  detect-m0.1 .. wider crops (``--margin``), ``detect-align`` (``--align``)
  old-crop       the crop emolens used before (square of 1.2 x the longer box side, replicated edges)
  fill-replicate / fill-reflect / shift-inside
                 the FER-like crop with other answers for a crop that leaves the frame: replicated or
                 mirrored edge pixels, or the square shifted (and shrunk if needed) to lie inside the frame

An image where the detector finds no face counts as wrong (a user gets no label for it).

    python benchmarks/crop_geometry.py --fit
    python benchmarks/crop_geometry.py --fit-dataset affectnet   # YuNet's median box in the re-pack's crops
    python benchmarks/crop_geometry.py [--checkpoint PATH] [--datasets ckplus sfew] [--tta scale] [--variants detect]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save, shared  # noqa: E402

ROOTS = {"ckplus": "data/ckplus", "sfew": "data/sfew"}


def fit_geometry(n: int = 1500, seed: int = 0) -> list[dict]:
    """Detector box -> FER crop transform, measured on ``n`` FER+ training faces per detector."""
    from emolens.live.detectors import HaarDetector, YuNetDetector

    files = sorted((shared("data/ferplus") / "data" / "FER2013Train").glob("*.png"))
    files = [files[i] for i in np.random.default_rng(seed).choice(len(files), n, replace=False)]
    S, C = 192, 480
    pad = (C - S) // 2
    rows = []
    for det in (YuNetDetector(str(shared("models/face_detection_yunet_2026may.onnx"))), HaarDetector()):
        fits = []
        for f in files:
            up = cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (S, S), interpolation=cv2.INTER_CUBIC)
            canvas = cv2.cvtColor(cv2.copyMakeBorder(up, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=128), 8)
            faces = det.detect(canvas)
            if not faces:
                continue
            x, y, w, h = max(faces, key=lambda fc: fc.box[2] * fc.box[3]).box
            fits.append([S / np.sqrt(w * h), (C / 2 - (x + w / 2)) / w, (C / 2 - (y + h / 2)) / h, w / h])
        q = [np.percentile(col, [25, 50, 75]) for col in np.asarray(fits).T]
        rows.append(
            {
                "detector": det.name,
                "found": f"{len(fits)}/{n}",
                "scale_median": round(float(q[0][1]), 3),
                "scale_iqr": f"{q[0][0]:.3f}-{q[0][2]:.3f}",
                "dx_median": round(float(q[1][1]), 3),
                "dy_median": round(float(q[2][1]), 3),
                "aspect_w_h": round(float(q[3][1]), 3),
                "emolens_crop_scale": det.crop_scale,
            }
        )
    return rows


def fit_dataset_face(kind: str, step: int = 8) -> list[dict]:
    """YuNet's face box inside a dataset's face crops, as fractions (cx, cy, w, h) of the crop: every ``step``-th
    training image, upscaled 2x and padded by half its side with black (so a face touching the crop's edge is
    boxed as in a wider frame, not clipped), median and quartiles. Gives ``AFFECTNET_FACE``."""
    from emolens.live.detectors import YuNetDetector

    if kind != "affectnet":
        raise SystemExit(f"--fit-dataset: only affectnet is measured here, not {kind!r}")
    files = sorted((shared("data/affectnet_yolo") / "YOLO_format" / "train" / "images").glob("*.jpg"))[::step]
    det = YuNetDetector(str(shared("models/face_detection_yunet_2026may.onnx")))
    fr = []
    for f in files:
        img = cv2.imread(str(f))
        img = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
        H, W = img.shape[:2]
        p = W // 2
        faces = det.detect(cv2.copyMakeBorder(img, p, p, p, p, cv2.BORDER_CONSTANT, value=0))
        if faces:
            x, y, w, h = max(faces, key=lambda fc: fc.box[2] * fc.box[3]).box
            fr.append([(x - p + w / 2) / W, (y - p + h / 2) / H, w / W, h / H])
    q = np.percentile(np.asarray(fr), [25, 50, 75], axis=0).round(3)
    return [
        {
            "dataset": kind,
            "found": f"{len(fr)}/{len(files)}",
            "stat": name,
            **dict(zip(("cx", "cy", "w", "h"), row, strict=True)),
        }
        for name, row in zip(("q25", "median", "q75"), q.tolist(), strict=True)
    ]


def _old_crop(frame_bgr: np.ndarray, faces, pre, margin: float = 0.1) -> np.ndarray:
    """The crop of emolens <= 0.1 (commit b85cbfd), kept here to measure the change."""
    img = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
    out = []
    for f in faces:
        x, y, w, h = (float(v) for v in f.box)
        side = max(1, round(max(w, h) * (1 + 2 * margin)))
        x0, y0 = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
        H, W = img.shape[:2]
        p = max(0, -x0, -y0, x0 + side - W, y0 + side - H)
        src = cv2.copyMakeBorder(img, p, p, p, p, cv2.BORDER_REPLICATE) if p else img
        crop = src[y0 + p : y0 + p + side, x0 + p : x0 + p + side]
        s = pre.image_size
        out.append(cv2.resize(crop, (s, s), interpolation=cv2.INTER_AREA if side > s else cv2.INTER_LINEAR))
    return np.stack(out) if out else np.zeros((0, pre.image_size, pre.image_size), np.uint8)


def _policy_crop(frame_bgr: np.ndarray, face, pre, policy: str, scale: float) -> np.ndarray:
    """The FER-like square with another out-of-frame policy than emolens' black fill."""
    from emolens.geometry import face_square, square_affine

    img = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
    H, W = img.shape
    cx, cy, side = face_square(face.box, 0.0, scale)
    if policy == "shift-inside":
        side = min(side, H, W)
        cx = min(max(cx, side / 2), W - side / 2)
        cy = min(max(cy, side / 2), H - side / 2)
    f = min(1.0, 2 * pre.image_size / side)
    small = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else img
    border = {"fill-replicate": cv2.BORDER_REPLICATE, "fill-reflect": cv2.BORDER_REFLECT_101}.get(
        policy, cv2.BORDER_CONSTANT
    )
    m = square_affine(cx * f, cy * f, side * f, pre.image_size)
    return cv2.warpAffine(small, m, (pre.image_size,) * 2, flags=cv2.INTER_LINEAR, borderMode=border)[None]


def score(labels: list[int], preds: list[int | None], classes: list[str]) -> dict:
    """Metrics where ``None`` (no face found) counts as a wrong answer."""
    from emolens.evaluation.metrics import classification_metrics

    none = len(classes)  # an extra "no face" column that is never a true label
    m = classification_metrics(labels, [none if p is None else p for p in preds], [*classes, "(no face)"])
    present = [c for c in classes if m["per_class"][c]["support"] > 0]
    return {
        "n": m["n"],
        "no_face": sum(p is None for p in preds),
        "accuracy": round(m["accuracy"], 4),
        "balanced_accuracy": round(m["balanced_accuracy"], 4),
        "macro_f1": round(m["macro_f1"], 4),
        "recall": {c: round(m["per_class"][c]["recall"], 3) for c in present},
    }


def through_detection(
    checkpoint: str | None, kind: str, split: str, yunet: str, tta: str = "none", only: list[str] | None = None
) -> list[dict]:
    from torch.utils.data import DataLoader

    from emolens.data import open_dataset
    from emolens.evaluation.inference import predict_loader
    from emolens.live.classifier import EmotionClassifier
    from emolens.live.detectors import create_detector
    from emolens.live.images import predict_images
    from emolens.live.pipeline import Pipeline
    from emolens.live.smoothing import Smoother
    from emolens.transforms import eval_transform

    clf = EmotionClassifier(checkpoint, tta=tta)
    classes = clf.classes
    pre = clf.preprocess
    ds = open_dataset(kind, shared(ROOTS[kind]), split, pre.image_size, pre.channels, eval_transform(pre))
    paths = [Path(s.path) for s in ds.samples]
    labels = [classes.index(ds.classes[s.label]) for s in ds.samples]
    rows = []
    probs, _, _ = predict_loader(clf.model, DataLoader(ds, batch_size=256), clf.device, tta=clf.views)
    rows.append({"variant": "reference", **score(labels, list(probs.argmax(1)), classes)})

    det = create_detector("yunet", model=yunet)
    variants = {
        "whole-image": dict(whole=True),
        "detect": dict(),
        "detect-m0.1": dict(margin=0.1),
        "detect-m0.2": dict(margin=0.2),
        "detect-align": dict(align=True),
    }
    if only:
        variants = {k: v for k, v in variants.items() if k in only}
    for name, v in variants.items():
        pipe = Pipeline(clf, det, Smoother("none"), margin=v.get("margin", 0.0), align=v.get("align", False))
        preds = []
        for rec in predict_images(pipe, paths, whole_image=v.get("whole", False), progress=False):
            faces = rec["faces"]
            best = max(faces, key=lambda f: f["box"]["w"] * f["box"]["h"]) if faces else None
            preds.append(None if best is None else classes.index(best["label"]))
        rows.append({"variant": name, **score(labels, preds, classes)})

    cutters = {
        "old-crop": lambda frame, face: _old_crop(frame, [face], pre),
        **{
            p: (lambda frame, face, p=p: _policy_crop(frame, face, pre, p, det.crop_scale))
            for p in ("fill-replicate", "fill-reflect", "shift-inside")
        },
    }
    if only:
        cutters = {k: v for k, v in cutters.items() if k in only}
    preds = {k: [] for k in cutters}
    for p in paths if cutters else []:
        frame = cv2.imread(str(p))
        faces = det.detect(frame)
        face = max(faces, key=lambda f: f.box[2] * f.box[3]) if faces else None
        for k, cut in cutters.items():
            preds[k].append(None if face is None else int(clf.predict(cut(frame, face)).argmax(1)[0]))
    rows += [{"variant": k, **score(labels, v, classes)} for k, v in preds.items()]
    for r in rows:
        r["dataset"] = f"{kind}:{split}"
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", action="store_true", help="fit the detector-box -> FER-crop geometry")
    ap.add_argument("--fit-dataset", choices=["affectnet"], help="measure YuNet's face box in a dataset's crops")
    ap.add_argument("--checkpoint", help="default: the bundled model")
    ap.add_argument("--datasets", nargs="+", default=["ckplus", "sfew"], choices=list(ROOTS))
    ap.add_argument("--split", default="test", help="held-out subjects/films (test) or val/train")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (OpenCV's too)")
    ap.add_argument("--name", default="crop_geometry", help="results/<name>.json")
    ap.add_argument("--tta", default="none", help="the classifier's test-time views (emolens predict --tta)")
    ap.add_argument("--variants", nargs="+", help="only these crop variants (default: all); the reference always")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    yunet = str(shared("models/face_detection_yunet_2026may.onnx"))
    os.environ.setdefault("EMOLENS_YUNET", yunet)
    if a.fit_dataset:
        rows = fit_dataset_face(a.fit_dataset)
        print_table(rows, list(rows[0]))
        save(f"crop_geometry_fit_{a.fit_dataset}", {"command": " ".join(sys.argv), "rows": rows})
        return
    if a.fit:
        rows = fit_geometry()
        print_table(rows, list(rows[0]))
        save("crop_geometry_fit", {"command": " ".join(sys.argv), "rows": rows})
        return
    rows = [r for k in a.datasets for r in through_detection(a.checkpoint, k, a.split, yunet, a.tta, a.variants)]
    print_table(rows, ["dataset", "variant", "n", "no_face", "accuracy", "balanced_accuracy", "macro_f1"])
    for r in rows:
        recall = " ".join(f"{c[:4]} {v:.2f}" for c, v in r["recall"].items())
        print(f"{r['dataset']:12s} {r['variant']:12s} recall {recall}")
    save(
        a.name,
        {
            "command": " ".join(sys.argv),
            "checkpoint": a.checkpoint or "bundled",
            "split": a.split,
            "tta": a.tta,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
