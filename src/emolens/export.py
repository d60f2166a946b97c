"""Export a checkpoint to ONNX (dynamic batch) and check it against PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .checkpoint import build_from_checkpoint, load_checkpoint


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17, check: bool = True) -> dict:
    """Write ``out`` (input ``faces``: N x C x S x S normalised float32; output ``logits``).

    With ``check``, runs both models on the same random batch in ONNX Runtime and PyTorch and
    returns the largest absolute difference of the probabilities.
    """
    ckpt = load_checkpoint(checkpoint)
    model, pre = build_from_checkpoint(ckpt, str(checkpoint))
    x = torch.randn(2, pre.channels, pre.image_size, pre.image_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (x,),
        str(out),
        input_names=["faces"],
        output_names=["logits"],
        dynamic_axes={"faces": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    info = {"onnx": str(out), "model": ckpt["model"], "classes": ckpt["classes"], "preprocess": ckpt["preprocess"]}
    if check:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        xb = torch.randn(5, pre.channels, pre.image_size, pre.image_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = model(xb).softmax(1).numpy()
        got = torch.from_numpy(sess.run(None, {"faces": xb.numpy()})[0]).softmax(1).numpy()
        info["max_abs_diff"] = float(np.abs(ref - got).max())
    return info
