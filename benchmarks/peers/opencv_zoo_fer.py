"""Peer model: OpenCV Zoo's facial expression recognition (MobileFaceNet, int8), run as the zoo's demo runs it.

Model: ``facial_expression_recognition_mobilefacenet_2022july_int8.onnx`` from opencv/opencv_zoo
``models/facial_expression_recognition/`` (Apache-2.0; RAF-DB accuracy 88.27 % reported by the zoo), loaded
with ``cv2.dnn.readNet``. The reference for everything below is the zoo's ``facial_fer_model.py`` (class
``FacialExpressionRecog``, helper ``FaceAlignment``) and ``demo.py``:

* **detection**: YuNet (``cv2.FaceDetectorYN``, score 0.6, NMS 0.3, top-k 5000, as the zoo's ``yunet.py``),
  via ``yunet_faces.YuNet``, which upscales frames whose shorter side is under 200 px (48x48 FER/CK+ faces,
  100x100 RAF-DB faces) and, if that finds nothing, tries again with a black border; see that module.
  Boxes and landmarks are mapped back to the original image, and the alignment warps the original image.
* **alignment**: the 5 YuNet landmarks (right eye, left eye, nose tip, right and left mouth corner) are
  mapped onto the zoo's 112x112 template ``TEMPLATE`` (the ArcFace / insightface 5-point template) by the
  demo's *non-reflective similarity*: a least-squares fit of the similarity taking the template points to
  the landmarks (MATLAB ``cp2tform`` style, ``FaceAlignment.__findNonreflectiveSimilarity``), inverted, then
  ``cv2.warpAffine(image, M, (112, 112))`` with its defaults (bilinear, black border). This is *not*
  ``cv2.estimateAffinePartial2D`` (RANSAC, fitted the other way round), which gives a slightly different
  matrix; ``similarity_matrix`` reproduces the demo's arithmetic.
* **preprocessing**: BGR -> RGB (the demo's ``cv.cvtColor(image, cv.COLOR_BGR2RGB)``; some descriptions of
  the model say "BGR input", the demo's code is followed here), ``/255``, ``(x - 0.5) / 0.5`` per channel,
  NCHW (``cv.dnn.blobFromImage`` with its defaults: no scaling, no swap).
* **output**: the network's ``label`` output holds 7 logits (they do not sum to 1); the demo takes the arg
  max, this peer returns their softmax. Order: angry, disgust, fearful, happy, neutral, sad, surprised.

Fallback: when no landmarks are given and YuNet finds no face (or, with ``face_box``, none overlapping it),
the template's own points, scaled from 112x112 into ``face_box`` (or into the whole image), stand in for
the landmarks. Such an image is counted in ``OpenCVZooFER.n_fallback`` and flagged by ``info["detected"]``
of ``predict_with_info`` (and by ``detected`` in the CLI's output).

Measured (RAF-DB basic test, the Kaggle repack's 100x100 aligned JPEGs, every 5th image from the 3rd, N=600):
accuracy 0.738 as above; 0.727 with the channels left in BGR order; 0.740 with the block-quantised
``_int8bq.onnx``. On the first 300 of them, shrinking or enlarging the template about its centre (x0.8, 0.9,
1.1) scores 0.773, 0.797, 0.763 against 0.800 for the zoo's template, so the template is the one the model
expects. The zoo's 88.27 % is for its own RAF-DB protocol (probably the fp32 model on the original images),
not for re-aligned 100x100 crops.

Grey images are replicated to 3 channels (``cv2.COLOR_GRAY2BGR``) before detection and alignment.

Needs only ``opencv-python(-headless) >= 4.8`` and numpy (no emolens, no torch). Tested with
opencv-python 4.14.0 and numpy 2.4.6.

CLI, in the convention of ``fer_peer.py`` but on whole images:

    python opencv_zoo_fer.py IN.npz OUT.npz --model FER_INT8.onnx --yunet YUNET.onnx

IN.npz:  either ``images`` (or ``faces``, the key ``accuracy.py``'s ``_peer_probs`` writes) uint8 N x H x W
         (grey) or N x H x W x 3 (BGR; ``--rgb`` if RGB): the *original* images, not 48 px crops; or ``paths``
         (N image files, read with ``cv2.imread``); optional ``boxes`` float N x 4 (x, y, w, h; a row of NaN =
         no box) to pick the face and bound the fallback; optional ``landmarks`` float N x 5 x 2 (NaN = detect).
OUT.npz: ``probs`` float32 N x 7 (softmax, zoo order); ``classes`` the 7 canonical names in that order;
         ``zoo_classes`` the zoo's own names; ``detected`` bool N (False = template fallback); ``landmarks``
         float32 N x 5 x 2, the points the alignment used.
``--model`` / ``--yunet`` default to ``$EMOLENS_ZOO_FER`` / ``$EMOLENS_YUNET``, so ``python opencv_zoo_fer.py IN OUT``
(what ``_peer_probs`` runs) works with both variables set.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from yunet_faces import YuNet, as_bgr, load_inputs  # noqa: E402

#: The zoo's output order (``FacialExpressionRecog.getDesc``).
ZOO_CLASSES = ("angry", "disgust", "fearful", "happy", "neutral", "sad", "surprised")
#: The same order in emolens' canonical names.
CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")

#: The zoo's 112x112 five-point template (``FaceAlignment._std_points``): right eye, left eye, nose tip,
#: right mouth corner, left mouth corner (image left to right: the subject's right eye comes first).
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
INPUT_SIZE = 112
MEAN = 0.5
STD = 0.5


def similarity_matrix(landmarks: np.ndarray, template: np.ndarray = TEMPLATE) -> np.ndarray:
    """2x3 ``cv2.warpAffine`` matrix taking ``landmarks`` (5x2, image pixels) onto ``template``.

    The demo's non-reflective similarity: solve, in least squares over the image coordinates,
    ``u = a*x + b*y + c`` and ``v = -b*x + a*y + d`` for the template points (x, y) and the landmarks
    (u, v); that map (template -> image) is inverted to give image -> template.
    """
    uv = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    xy = np.asarray(template, dtype=np.float64).reshape(-1, 2)
    x, y = xy[:, :1], xy[:, 1:]
    one, zero = np.ones_like(x), np.zeros_like(x)
    a = np.vstack([np.hstack([x, y, one, zero]), np.hstack([y, -x, zero, one])])
    b = np.vstack([uv[:, :1], uv[:, 1:]])
    if np.linalg.matrix_rank(a) < 4:
        raise ValueError("similarity_matrix: needs at least two distinct landmarks")
    sc, ss, tx, ty = np.linalg.lstsq(a, b, rcond=-1)[0][:, 0]
    # row-vector form [x y 1] @ t_inv = [u v 1] (the demo's Tinv); the image -> template map is its inverse
    t_inv = np.array([[sc, -ss, 0.0], [ss, sc, 0.0], [tx, ty, 1.0]])
    t = np.linalg.inv(t_inv)
    t[:, 2] = [0.0, 0.0, 1.0]
    return t[:, :2].T.copy()


def align(image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 112x112 BGR face the zoo's ``FaceAlignment.get_align_image`` would cut from ``image_bgr``."""
    return cv2.warpAffine(as_bgr(image_bgr), similarity_matrix(landmarks), (INPUT_SIZE, INPUT_SIZE))


def preprocess(aligned_bgr: np.ndarray) -> np.ndarray:
    """112x112 BGR uint8 -> 1 x 3 x 112 x 112 float32, as ``FacialExpressionRecog._preprocess``."""
    x = cv2.cvtColor(aligned_bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def template_landmarks(box) -> np.ndarray:
    """The template's points scaled from 112x112 into ``box`` (x, y, w, h): the no-detection fallback."""
    x, y, w, h = (float(v) for v in box)
    return TEMPLATE * np.array([w / INPUT_SIZE, h / INPUT_SIZE]) + np.array([x, y])


class OpenCVZooFER:
    """OpenCV Zoo's MobileFaceNet expression model, with YuNet landmarks and the zoo's alignment.

    ``predict`` returns softmax probabilities in the zoo's order (``ZOO_CLASSES``; canonical names in
    ``CLASSES``). ``n_detected`` / ``n_fallback`` count the images whose landmarks came from YuNet / from
    the template fallback (images with landmarks passed in count in neither).
    """

    def __init__(self, model_path: str, yunet_path: str | None = None, **yunet_kw):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"{model_path}: OpenCV Zoo FER model not found")
        self.net = cv2.dnn.readNet(str(model_path))
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self.detector = None
        if yunet_path is not None:
            if not os.path.isfile(yunet_path):
                raise FileNotFoundError(f"{yunet_path}: YuNet model not found")
            self.detector = YuNet(str(yunet_path), **yunet_kw)
        self.n_detected = 0
        self.n_fallback = 0

    def landmarks_for(self, image_bgr: np.ndarray, face_box=None) -> tuple[np.ndarray, bool]:
        """5x2 landmarks for the alignment and whether YuNet found them (False = template fallback)."""
        det = self.detector.best(image_bgr, face_box) if self.detector is not None else None
        if det is not None:
            return det.landmarks, True
        h, w = image_bgr.shape[:2]
        return template_landmarks(face_box if face_box is not None else (0, 0, w, h)), False

    def predict_with_info(self, image_bgr: np.ndarray, face_box=None, landmarks=None) -> tuple[np.ndarray, dict]:
        """Probabilities (7,) and ``{"detected": bool | None, "landmarks": 5x2, "aligned": 112x112x3}``;
        ``detected`` is None when ``landmarks`` were given."""
        image = as_bgr(image_bgr)
        if face_box is not None and not np.isfinite(np.asarray(face_box, dtype=np.float64)).all():
            face_box = None
        if landmarks is not None and np.isfinite(np.asarray(landmarks, dtype=np.float64)).all():
            lm, detected = np.asarray(landmarks, dtype=np.float64).reshape(5, 2), None
        else:
            lm, detected = self.landmarks_for(image, face_box)
            if detected:
                self.n_detected += 1
            else:
                self.n_fallback += 1
        aligned = align(image, lm)
        self.net.setInput(preprocess(aligned), "data")
        logits = self.net.forward("label")
        probs = softmax(np.asarray(logits).reshape(-1))
        return probs, {"detected": detected, "landmarks": lm, "aligned": aligned}

    def predict(self, image_bgr: np.ndarray, face_box=None, landmarks=None) -> np.ndarray:
        """Softmax probabilities (7,) in ``ZOO_CLASSES`` order for the face in ``image_bgr`` (uint8 BGR or
        grey, the original image: this model aligns the face itself). ``face_box`` (x, y, w, h) picks the
        YuNet face overlapping it and bounds the fallback; ``landmarks`` (5x2, YuNet order) skip detection."""
        return self.predict_with_info(image_bgr, face_box, landmarks)[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inp", help="IN.npz with `images` or `paths` (optional `boxes`, `landmarks`)")
    ap.add_argument("out", help="OUT.npz to write `probs`, `classes`, `detected`, ... to")
    ap.add_argument("--model", default=os.environ.get("EMOLENS_ZOO_FER"), help="the zoo's _int8.onnx file")
    ap.add_argument("--yunet", default=os.environ.get("EMOLENS_YUNET"), help="YuNet ONNX file")
    ap.add_argument("--rgb", action="store_true", help="3-channel `images`/`faces` are RGB (default: BGR)")
    ap.add_argument("--threads", type=int, default=1, help="cv2.setNumThreads")
    args = ap.parse_args(argv)
    if not args.model or not args.yunet:
        sys.exit("opencv_zoo_fer: give --model and --yunet (or set $EMOLENS_ZOO_FER and $EMOLENS_YUNET)")
    cv2.setNumThreads(args.threads)

    images, boxes, lms = load_inputs(args.inp, args.rgb, "opencv_zoo_fer")
    t0 = time.perf_counter()
    model = OpenCVZooFER(args.model, args.yunet)
    probs = np.zeros((len(images), len(CLASSES)), np.float32)
    detected = np.zeros(len(images), bool)
    used = np.zeros((len(images), 5, 2), np.float32)
    for i, img in enumerate(images):
        p, info = model.predict_with_info(img, None if boxes is None else boxes[i], None if lms is None else lms[i])
        probs[i], used[i] = p, info["landmarks"]
        detected[i] = info["detected"] is not False
    np.savez(
        args.out,
        probs=probs,
        classes=np.array(CLASSES),
        zoo_classes=np.array(ZOO_CLASSES),
        detected=detected,
        landmarks=used,
    )
    print(
        f"opencv_zoo_fer: {len(images)} images in {time.perf_counter() - t0:.2f}s, "
        f"{model.n_fallback} without a YuNet face (template fallback) -> {args.out}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
