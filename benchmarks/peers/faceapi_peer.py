"""Peer model: face-api.js's expression net (``@vladmandic/face-api``), run in Node by ``faceapi_peer.mjs``.

face-api's ``FaceExpressionNet`` (weights ``model/face_expression_model*`` of the npm package, MIT) on the
pure-JS CPU backend of ``@tensorflow/tfjs`` 4 (``tfjs-node`` cannot be installed offline and is not needed).
Images are decoded here, in Python; the face crops go to one Node process per batch as raw RGB pixels (one
``.u8`` file, all crops concatenated, plus a JSON header of their shapes) and the probabilities come back as
float32. Node's start and the model load take about 0.5 s, so give it hundreds of faces at a time.

What face-api itself does, and what is replicated here:

* **crop** (Python, ``crop_like_faceapi``): face-api's pipeline on a tensor input (``extractFaceTensors``)
  clips the detection box at the image borders (``Box.clipAtImageBorders``: x, y, w, h each floored) and
  slices it out: no margin, no squaring. We do the same with YuNet's box (face-api's own detector, SSD
  MobileNet v1 by default, is not run: its boxes differ a little from YuNet's). With 68-point landmarks face-api
  would crop ``alignedRect`` instead; the plain ``detectAllFaces().withFaceExpressions()`` pipeline uses the
  detection box, as here.
* **everything after the crop** (Node, face-api's own code, untouched): ``NetInput.toBatchTensor(112, true)``
  zero-pads the crop to a centred square and resizes it bilinearly to 112x112 (tf ``resizeBilinear``, no
  align-corners); ``FaceFeatureExtractor`` subtracts the mean RGB (122.782, 117.001, 104.298) and divides by
  255; the net ends in a softmax over neutral, happy, sad, angry, fearful, disgusted, surprised.

Detection (``predict_images`` and the CLI): YuNet via ``yunet_faces.YuNet`` (zoo thresholds; frames under
200 px upscaled, a black border as a second try; see that module), largest face, or with a given box the face
overlapping it most. When YuNet finds none, the given box, or else the whole image, is the crop; such images
are flagged (``detected`` False) and counted.

Install (any folder; the wrapper never installs anything):

    mkdir -p ~/faceapi && cd ~/faceapi && npm install @tensorflow/tfjs@4 @vladmandic/face-api
    export EMOLENS_FACEAPI_DIR=~/faceapi      # or its node_modules/

tfjs backend (``backend=`` / ``--backend`` / ``$EMOLENS_FACEAPI_BACKEND``): ``cpu``, tfjs' pure-JS kernels
(about 0.15-0.4 s a face on a busy 2-core machine), or ``wasm`` (``npm install @tensorflow/tfjs-backend-wasm@4``
in the same folder; about 8x faster, probabilities equal to ``cpu``'s within about 1e-6); the default ``auto``
takes ``wasm`` when it is installed.

Tested with Node 20.20, @tensorflow/tfjs 4.22.0, @vladmandic/face-api 1.7.15, opencv-python 4.14, numpy 2.4.

CLI, same files as ``opencv_zoo_fer.py``:

    python faceapi_peer.py IN.npz OUT.npz --yunet YUNET.onnx [--faceapi-dir DIR]

IN.npz:  ``images`` (or ``faces``) uint8 N x H x W (grey) or N x H x W x 3 (BGR; ``--rgb`` if RGB), the
         original images; or ``paths``; optional ``boxes`` N x 4
         (x, y, w, h; NaN row = none); with ``--no-detect`` the boxes (or whole images) are the crops.
OUT.npz: ``probs`` float32 N x 7 in face-api's order; ``classes`` canonical names in that order;
         ``faceapi_classes`` face-api's names; ``detected`` bool N; ``boxes`` float32 N x 4, the crops used.
``--yunet`` / ``--faceapi-dir`` / ``--backend`` default to ``$EMOLENS_YUNET`` / ``$EMOLENS_FACEAPI_DIR`` /
``$EMOLENS_FACEAPI_BACKEND``, so ``python faceapi_peer.py IN OUT`` works with them set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "faceapi_peer.mjs"
ENV_DIR = "EMOLENS_FACEAPI_DIR"

#: face-api's output order (``FACE_EXPRESSION_LABELS``).
FACEAPI_CLASSES = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
#: The same order in emolens' canonical names.
CLASSES = ("neutral", "happiness", "sadness", "anger", "fear", "disgust", "surprise")

INSTALL_HINT = (
    "install it with `npm install @tensorflow/tfjs@4 @vladmandic/face-api` in a folder of your choice and "
    f"point ${ENV_DIR} (or node_modules_dir=) at that folder"
)


def find_node_modules(node_modules_dir: str | os.PathLike | None = None) -> Path:
    """The ``node_modules`` folder holding ``@vladmandic/face-api`` and ``@tensorflow/tfjs``: from the
    argument, else ``$EMOLENS_FACEAPI_DIR``; either may name ``node_modules`` itself or the folder above it."""
    d = node_modules_dir or os.environ.get(ENV_DIR)
    if not d:
        raise RuntimeError(f"face-api peer: no face-api installation given; {INSTALL_HINT}")
    d = Path(d).expanduser().resolve()
    for cand in (d / "node_modules", d):
        if (cand / "@vladmandic" / "face-api" / "package.json").is_file():
            if not (cand / "@tensorflow" / "tfjs" / "package.json").is_file():
                raise RuntimeError(f"face-api peer: {cand} has face-api but not @tensorflow/tfjs; {INSTALL_HINT}")
            return cand
    raise RuntimeError(f"face-api peer: {d} holds no @vladmandic/face-api; {INSTALL_HINT}")


def model_dir(node_modules: Path) -> Path:
    """The installed package's ``model/`` folder (``face_expression_model-weights_manifest.json`` and ``.bin``)."""
    return node_modules / "@vladmandic" / "face-api" / "model"


def clip_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    """face-api's ``Box.clipAtImageBorders``: clip x, y, w, h to the image, then floor each."""
    x, y, w, h = (float(v) for v in box)
    cx, cy = max(x, 0.0), max(y, 0.0)
    cw = min(x + w - cx, width - cx)
    ch = min(y + h - cy, height - cy)
    return int(np.floor(cx)), int(np.floor(cy)), int(np.floor(cw)), int(np.floor(ch))


def crop_like_faceapi(image_rgb: np.ndarray, box) -> np.ndarray:
    """The crop face-api's ``extractFaceTensors`` slices out of ``image_rgb`` for the box x, y, w, h."""
    h, w = image_rgb.shape[:2]
    x, y, cw, ch = clip_box(box, w, h)
    if cw <= 0 or ch <= 0:
        raise ValueError(f"box {tuple(box)} lies outside the {w}x{h} image")
    return image_rgb[y : y + ch, x : x + cw]


def _to_rgb(image: np.ndarray, bgr: bool) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        g = image.reshape(image.shape[:2])
        return np.repeat(g[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        image = image[:, :, :3]
        return image[:, :, ::-1] if bgr else image
    raise ValueError(f"expected H x W or H x W x 1/3/4, got {image.shape}")


class FaceApiExpression:
    """face-api.js's expression net through one Node process per ``predict_batch`` call.

    ``predict_batch`` returns N x 7 softmax probabilities in face-api's order (``FACEAPI_CLASSES``;
    canonical names in ``CLASSES``). ``n_detected`` / ``n_fallback`` count ``predict_images``' faces.
    """

    def __init__(
        self,
        node_modules_dir: str | os.PathLike | None = None,
        node: str | None = None,
        batch: int = 32,
        backend: str | None = None,
    ):
        self.node_modules = find_node_modules(node_modules_dir)
        backend = backend or os.environ.get("EMOLENS_FACEAPI_BACKEND") or "auto"
        has_wasm = (self.node_modules / "@tensorflow" / "tfjs-backend-wasm" / "package.json").is_file()
        if backend == "auto":
            backend = "wasm" if has_wasm else "cpu"
        if backend not in ("cpu", "wasm"):
            raise ValueError(f"face-api peer: backend must be auto, cpu or wasm, not {backend!r}")
        if backend == "wasm" and not has_wasm:
            raise RuntimeError(
                "face-api peer: backend wasm needs `npm install @tensorflow/tfjs-backend-wasm@4` in "
                f"{self.node_modules.parent}"
            )
        self.backend = backend
        self.node = node or os.environ.get("EMOLENS_NODE") or shutil.which("node")
        if not self.node:
            raise RuntimeError("face-api peer: `node` (Node.js >= 18) is not on PATH; set $EMOLENS_NODE")
        if not (model_dir(self.node_modules) / "face_expression_model-weights_manifest.json").is_file():
            raise RuntimeError(f"face-api peer: {model_dir(self.node_modules)} lacks face_expression_model")
        self.batch = batch
        self.n_detected = 0
        self.n_fallback = 0
        self.last_log = ""

    def predict_batch(self, crops, bgr: bool = False) -> np.ndarray:
        """N face crops (uint8 H x W x 3 RGB, or grey H x W; any sizes) -> float32 N x 7 probabilities.
        ``bgr=True`` if the crops are in OpenCV's BGR order."""
        crops = [np.ascontiguousarray(_to_rgb(c, bgr)) for c in crops]
        if not crops:
            return np.zeros((0, len(CLASSES)), np.float32)
        for c in crops:
            if c.shape[0] < 1 or c.shape[1] < 1:
                raise ValueError(f"empty crop {c.shape}")
        with tempfile.TemporaryDirectory(prefix="faceapi_peer_") as d:
            header, pixels, out = Path(d) / "in.json", Path(d) / "in.u8", Path(d) / "out.f32"
            header.write_text(json.dumps({"shapes": [list(c.shape[:2]) for c in crops]}))
            with open(pixels, "wb") as f:
                for c in crops:
                    f.write(c.tobytes())
            cmd = [self.node, str(SCRIPT), str(self.node_modules), str(header), str(pixels), str(out)]
            cmd += ["--batch", str(self.batch), "--backend", self.backend]
            res = subprocess.run(cmd, capture_output=True, text=True)
            self.last_log = (res.stderr or "").strip()
            if res.returncode != 0:
                raise RuntimeError(f"face-api peer: node failed ({res.returncode}):\n{res.stderr[-3000:]}")
            probs = np.fromfile(out, dtype="<f4")
        if probs.size != len(crops) * len(CLASSES):
            raise RuntimeError(f"face-api peer: got {probs.size} numbers for {len(crops)} faces")
        return probs.reshape(len(crops), len(CLASSES))

    def crops_for(self, images, detector=None, boxes=None, bgr: bool = True):
        """Crops for whole images: YuNet's face (``detector``: a ``yunet_faces.YuNet``), else the given box,
        else the whole image. Returns (crops RGB, detected bool N, boxes float32 N x 4 as clipped)."""
        crops, detected, used = [], np.zeros(len(images), bool), np.zeros((len(images), 4), np.float32)
        for i, img in enumerate(images):
            rgb = _to_rgb(img, bgr)
            h, w = rgb.shape[:2]
            given = None if boxes is None else np.asarray(boxes[i], dtype=np.float64)
            if given is not None and not np.isfinite(given).all():
                given = None
            det = None
            if detector is not None:
                det = detector.best(rgb[:, :, ::-1], given)
            if det is not None:
                box, detected[i] = det.box, True
                self.n_detected += 1
            else:
                box = given if given is not None else (0, 0, w, h)
                if detector is not None:
                    self.n_fallback += 1
            used[i] = clip_box(box, w, h)
            crops.append(crop_like_faceapi(rgb, box))
        return crops, detected, used

    def predict_images(self, images, yunet_path: str | None = None, boxes=None, bgr: bool = True, detector=None):
        """Whole images (BGR uint8 by default, or grey) -> (probs N x 7, detected bool N): YuNet's box
        cropped as face-api crops it, all faces through one Node process."""
        if detector is None and yunet_path is not None:
            sys.path.insert(0, str(HERE))
            from yunet_faces import YuNet

            detector = YuNet(yunet_path)
        crops, detected, _ = self.crops_for(images, detector, boxes, bgr)
        return self.predict_batch(crops), detected


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inp", help="IN.npz with `images` or `paths` (optional `boxes`)")
    ap.add_argument("out", help="OUT.npz to write `probs`, `classes`, `detected`, `boxes` to")
    ap.add_argument("--yunet", default=os.environ.get("EMOLENS_YUNET"), help="YuNet ONNX file")
    ap.add_argument("--faceapi-dir", default=None, help=f"face-api install folder (default ${ENV_DIR})")
    ap.add_argument("--backend", default=None, help="tfjs backend: auto (wasm if installed, else cpu), cpu, wasm")
    ap.add_argument("--no-detect", action="store_true", help="crop the given boxes (or whole images), no YuNet")
    ap.add_argument("--rgb", action="store_true", help="3-channel `images`/`faces` are RGB (default: BGR)")
    ap.add_argument("--threads", type=int, default=1, help="cv2.setNumThreads for YuNet")
    args = ap.parse_args(argv)

    import cv2

    cv2.setNumThreads(args.threads)
    try:
        model = FaceApiExpression(args.faceapi_dir, backend=args.backend)
    except RuntimeError as e:
        sys.exit(str(e))
    detector = None
    if not args.no_detect:
        if not args.yunet:
            sys.exit("faceapi_peer: give --yunet (or set $EMOLENS_YUNET), or --no-detect")
        sys.path.insert(0, str(HERE))
        from yunet_faces import YuNet

        detector = YuNet(args.yunet)
    sys.path.insert(0, str(HERE))
    from yunet_faces import load_inputs

    images, boxes, _ = load_inputs(args.inp, args.rgb, "faceapi_peer")
    t0 = time.perf_counter()
    crops, detected, used = model.crops_for(images, detector, boxes, bgr=True)
    probs = model.predict_batch(crops)
    np.savez(
        args.out,
        probs=probs.astype(np.float32),
        classes=np.array(CLASSES),
        faceapi_classes=np.array(FACEAPI_CLASSES),
        detected=detected,
        boxes=used,
    )
    print(
        f"faceapi_peer: {len(images)} images in {time.perf_counter() - t0:.2f}s, "
        f"{model.n_fallback} without a YuNet face -> {args.out}\n{model.last_log}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
