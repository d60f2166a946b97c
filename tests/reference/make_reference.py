"""Make ``face_backbones.npz``: the original TFJS graphs' outputs on a real face, computed by TensorFlow.js.

Run once (needs Node.js and ``npm install @tensorflow/tfjs@4`` in ``--node-modules``'s parent folder):

    python tests/reference/make_reference.py --models ../shared/models/human-models --node-dir /tmp/tfjsref

It decodes ``src/emolens/assets/astronaut_face.jpg``, resizes it to each model's input size, hands the raw
RGB bytes to ``tfjs_reference.mjs`` (TensorFlow.js's own graph executor) and stores, per model, the input
pixels and the output of the node the PyTorch rebuild is compared against.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
FACE = HERE.parents[1] / "src" / "emolens" / "assets" / "astronaut_face.jpg"
#: model -> (input size, output node, pixel offset, pixel scale) as the original graph expects its input
CASES = {
    "faceres-deep": (224, "global_pooling/Mean", 0.0, 1.0),
    "mobilefacenet": (112, "MobileFaceNet/Logits/SeparableConv2d/depthwise", 127.5, 1 / 128),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="folder with the human-models .json/.bin files")
    ap.add_argument("--node-dir", required=True, help="folder whose node_modules holds @tensorflow/tfjs")
    a = ap.parse_args()
    face = cv2.cvtColor(cv2.imread(str(FACE)), cv2.COLOR_BGR2RGB)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        script = Path(a.node_dir) / "tfjs_reference.mjs"
        shutil.copy(HERE / "tfjs_reference.mjs", script)
        for key, (size, node, offset, scale) in CASES.items():
            name = key.split("@")[0]
            px = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)
            (Path(d) / "px.u8").write_bytes(px.tobytes())
            cmd = ["node", str(script), str(Path(a.models) / f"{name}.json"), f"{d}/px.u8", str(size), node,
                   f"{d}/out.f32", str(offset), str(scale)]  # fmt: skip
            subprocess.run(cmd, check=True)
            out[f"{key}/pixels"] = px
            out[f"{key}/output"] = np.fromfile(f"{d}/out.f32", np.float32)
    np.savez_compressed(HERE / "face_backbones.npz", **out)
    print("wrote", HERE / "face_backbones.npz")


if __name__ == "__main__":
    main()
