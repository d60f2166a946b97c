"""Export a checkpoint to ONNX (dynamic batch) that describes itself, and read that description back.

The file's metadata (key ``emolens``, a JSON object) records everything a runtime needs besides the graph:
the input size, channels and colour order, the normalisation, the class names in output order and the face-crop
rule. ``emolens predict/live/batch/serve --onnx FILE`` read it and need no checkpoint. :func:`cached_export` is
the export the pipeline runs on the CPU by default (``--runtime auto``), made once per checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .checkpoint import build_from_checkpoint, load_checkpoint
from .download import default_cache_dir, sha256_of
from .geometry import FER_CROP_SCALE
from .transforms import Preprocess

#: Metadata key of an emolens ONNX export, and the version of its JSON layout.
META_KEY = "emolens"
META_VERSION = 1
_REQUIRED = ("model", "classes", "input", "crop")
_INPUT = ("size", "channels", "colour", "mean", "std")
#: Largest difference of any class probability between an export and its checkpoint that :func:`cached_export`
#: accepts (measured: below 1e-6 for the bundled models).
PARITY_TOLERANCE = 1e-4


class OnnxMetadataError(ValueError):
    """An ONNX file without (complete) emolens metadata: the message names the file and what is missing."""


def onnx_metadata(ckpt: dict) -> dict:
    """The self-description written into an export of checkpoint ``ckpt``."""
    pre = Preprocess.from_dict(ckpt["preprocess"])
    return {
        "version": META_VERSION,
        "model": ckpt["model"],
        "classes": list(ckpt["classes"]),
        "input": {
            "name": "faces",
            "layout": "NCHW float32: pixels / 255, then (x - mean) / std per channel",
            "size": pre.image_size,
            "channels": pre.channels,
            "colour": "RGB" if pre.channels == 3 else "grey",
            "mean": list(pre.mean),
            "std": list(pre.std),
        },
        "output": {"name": "logits", "meaning": "unnormalised log-probabilities, one per class, softmax for p"},
        "crop": {
            "rule": "fer-square",
            "scale": FER_CROP_SCALE,
            "about": "square centred on the face box, side scale * sqrt(w * h), outside pixels black",
        },
    }


def open_onnx(path: str | Path, options=None):
    """An ONNX Runtime session of an emolens export and its checked metadata, the file loaded once;
    :class:`OnnxMetadataError` names a missing or unreadable file or what the metadata lacks."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise OnnxMetadataError(f"{path}: ONNX file not found")
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types for broken files
        raise OnnxMetadataError(f"{path}: not a readable ONNX model ({e})") from None
    return session, parse_metadata(session.get_modelmeta().custom_metadata_map, str(path))


def read_onnx_metadata(path: str | Path) -> dict:
    """The emolens metadata of an ONNX file; :class:`OnnxMetadataError` names what is missing."""
    return open_onnx(path)[1]


def parse_metadata(props: dict[str, str], source: str) -> dict:
    """Check and return the ``emolens`` entry of an ONNX file's metadata map."""
    hint = "re-export it with `emolens export --checkpoint CKPT --output FILE`"
    if META_KEY not in props:
        raise OnnxMetadataError(
            f"{source}: no emolens metadata (input size, channels, colour order, normalisation, classes, crop); {hint}"
        )
    try:
        meta = json.loads(props[META_KEY])
    except json.JSONDecodeError:
        raise OnnxMetadataError(f"{source}: emolens metadata is not JSON; {hint}") from None
    missing = [k for k in _REQUIRED if k not in meta]
    missing += [f"input.{k}" for k in _INPUT if k not in meta.get("input", {})]
    if missing:
        raise OnnxMetadataError(f"{source}: emolens metadata lacks {', '.join(missing)}; {hint}")
    if meta["crop"].get("rule") != "fer-square":
        raise OnnxMetadataError(f"{source}: unknown crop rule {meta['crop'].get('rule')!r}; {hint}")
    return meta


def metadata_preprocess(meta: dict) -> Preprocess:
    """The :class:`Preprocess` an export's metadata describes."""
    i = meta["input"]
    return Preprocess(int(i["size"]), int(i["channels"]), tuple(i["mean"]), tuple(i["std"]))


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17, check: bool = True) -> dict:
    """Write ``out`` (input ``faces``: N x C x S x S normalised float32; output ``logits``) with its metadata.

    With ``check``, runs both models on the same random batch in ONNX Runtime and PyTorch and
    returns the largest absolute difference of the probabilities.
    """
    import warnings

    import onnx

    ckpt = load_checkpoint(checkpoint)
    model, pre = build_from_checkpoint(ckpt, str(checkpoint))
    x = torch.randn(2, pre.channels, pre.image_size, pre.image_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # tracing warns about Python-side shape arithmetic (e.g. the input size a global pool reads); the graph
        # is checked against PyTorch below and with a batch of another size, so the warning says nothing here
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # PyTorch marks its TorchScript-based exporter deprecated; it is the one that exports these models exactly
        warnings.filterwarnings("ignore", category=DeprecationWarning)
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
    proto = onnx.load(str(out))
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(onnx_metadata(ckpt))
    proto.doc_string = f"emolens {ckpt['model']}: facial expression classifier ({', '.join(ckpt['classes'])})"
    onnx.save(proto, str(out))
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


def cached_export(checkpoint: str | Path, cache_dir: str | Path | None = None, opset: int = 17) -> Path:
    """The ONNX export of ``checkpoint``, written once under ``cache_dir`` (default ``$EMOLENS_CACHE/onnx``) and
    reused while the checkpoint's bytes, PyTorch's version and ``opset`` stay the same.

    The export is checked against PyTorch before it is kept: a difference of class probabilities above
    :data:`PARITY_TOLERANCE` raises :class:`RuntimeError` and leaves nothing in the cache. The file appears
    atomically, so processes that start together never read half an export.
    """
    checkpoint = Path(checkpoint)
    key = f"{sha256_of(checkpoint)[:16]}-torch{torch.__version__.split('+')[0]}-opset{opset}"
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "onnx"
    target = folder / f"{checkpoint.stem}-{key}.onnx"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{target.name}.{os.getpid()}.tmp"
    try:
        info = export_onnx(checkpoint, tmp, opset=opset)
        if not info["max_abs_diff"] <= PARITY_TOLERANCE:
            raise RuntimeError(
                f"{checkpoint}: its ONNX export differs from PyTorch by {info['max_abs_diff']:.2e} in a class "
                f"probability (more than {PARITY_TOLERANCE:g}); run it with --runtime torch"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
