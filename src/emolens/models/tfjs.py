"""Read TensorFlow.js graph models (``model.json`` + ``.bin`` shards) with numpy: no TensorFlow needed.

A TFJS graph model is a JSON file holding the graph (``modelTopology``) and a weights manifest
(``weightsManifest``: shard file names, then every tensor's name, shape, dtype and optional
quantisation). The shards are one byte stream, tensors in manifest order. :func:`read_weights` decodes
it into float32/int32 arrays, dequantising ``float16`` and affine ``uint8``/``uint16`` tensors the way
``tfjs-core``'s ``decodeWeights`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_QUANT = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}


class TFJSError(ValueError):
    """A TFJS model file that cannot be read: the message names the file."""


def read_model_json(path: str | Path) -> dict:
    """The parsed ``model.json`` of a TFJS graph model."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise TFJSError(f"{p}: not a readable TFJS model.json ({e})") from None
    if "weightsManifest" not in d or "modelTopology" not in d:
        raise TFJSError(f"{p}: no modelTopology/weightsManifest: not a TFJS graph model")
    return d


def read_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Every weight tensor of the TFJS model at ``path`` (its ``.json``), by name, dequantised."""
    p = Path(path)
    model = read_model_json(p)
    out: dict[str, np.ndarray] = {}
    for group in model["weightsManifest"]:
        blob = b"".join((p.parent / shard).read_bytes() for shard in group["paths"])
        offset = 0
        for w in group["weights"]:
            shape = [int(s) for s in w["shape"]]
            n = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            if q:
                if q["dtype"] not in _QUANT:
                    raise TFJSError(f"{p}: {w['name']}: unsupported quantisation {q['dtype']!r}")
                raw_dtype = _QUANT[q["dtype"]]
            else:
                if w["dtype"] not in _DTYPES:
                    raise TFJSError(f"{p}: {w['name']}: unsupported dtype {w['dtype']!r}")
                raw_dtype = _DTYPES[w["dtype"]]
            size = n * np.dtype(raw_dtype).itemsize
            if offset + size > len(blob):
                raise TFJSError(f"{p}: weights file too short for {w['name']} (truncated download?)")
            arr = np.frombuffer(blob, raw_dtype, count=n, offset=offset)
            offset += size
            if q and q["dtype"] == "float16":
                arr = arr.astype(np.float32)
            elif q:  # affine: value = stored * scale + min
                arr = arr.astype(np.float32) * np.float32(q["scale"]) + np.float32(q["min"])
            out[w["name"]] = arr.reshape(shape).astype(_DTYPES.get(w["dtype"], np.float32), copy=False)
        if offset != len(blob):
            raise TFJSError(f"{p}: {len(blob) - offset} bytes left over after the last weight (wrong shard?)")
    return out


def graph_nodes(path: str | Path) -> list[dict]:
    """The graph's nodes (``name``, ``op``, ``input``, ``attr``) in file order."""
    return read_model_json(path)["modelTopology"]["node"]


def node_attr(node: dict, key: str):
    """A decoded attribute of a graph node: ints lists, strings (``padding``) or floats; ``None`` if absent."""
    a = node.get("attr", {}).get(key)
    if a is None:
        return None
    if "list" in a:
        lst = a["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "s" in lst:
            import base64

            return [base64.b64decode(v).decode() for v in lst["s"]]
        return []
    if "s" in a:
        import base64

        return base64.b64decode(a["s"]).decode()
    if "i" in a:
        return int(a["i"])
    if "f" in a:
        return float(a["f"])
    if "b" in a:
        return bool(a["b"])
    return a
