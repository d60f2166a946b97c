"""Emotion classifier for face crops: a PyTorch checkpoint or its ONNX export, batched over all faces."""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import CheckpointError, build_from_checkpoint, load_checkpoint, resolve_checkpoint
from ..runtime import resolve_device
from ..transforms import Preprocess

#: Batches of at most this many faces run on one thread when the thread count is automatic: splitting so little
#: work gains nothing on an idle machine and loses on a busy one (docs/performance.md).
SMALL_BATCH = 2


def onnx_available() -> bool:
    """Whether ONNX Runtime and the ``onnx`` package (which PyTorch's exporter needs) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def default_threads(processes: int = 1) -> int:
    """Most PyTorch threads for inference: ``$OMP_NUM_THREADS`` if set (as Ray sets it for its workers), else the
    cores shared out among ``processes`` (e.g. server workers), at least 1, so N processes never run more than
    one thread per core between them."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 1) // max(1, processes))


def for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (in eval mode) with each BatchNorm folded into the convolution before it and weights in
    ``channels_last``: the same outputs (to float rounding), fewer passes over memory (docs/performance.md). A
    model that ``torch.fx`` cannot trace is returned unfused. The fused graph keeps whether the model reads other input
    sizes (:func:`emolens.models.accepts_other_sizes`, for ``tta="scale"``)."""
    from torch.fx.experimental.optimization import fuse

    from ..models import accepts_other_sizes

    model.eval()
    any_size = accepts_other_sizes(model)
    try:
        model = fuse(model)
        model.accepts_other_sizes = any_size
    except Exception:  # noqa: BLE001 - tracing is an optimisation only; the plain model is always right
        pass
    return model.to(memory_format=torch.channels_last)


class EmotionClassifier:
    """Probabilities over ``classes`` for a batch of uint8 face crops prepared per :attr:`preprocess`.

    ``backend``: who runs the network. ``"torch"`` runs the checkpoint in PyTorch; ``"onnx"`` runs ``onnx_path``
    (from ``emolens export``; the classes and preprocessing come from its metadata) or, without one, the
    checkpoint's export made once and cached (:func:`emolens.export.cached_export`) in ONNX Runtime;
    ``"auto"`` (the default) is ``"onnx"`` on the CPU when ``onnx`` and ``onnxruntime`` are installed
    and no test-time augmentation is asked for, else ``"torch"`` (and ``"torch"`` too if the export fails,
    with a warning). ONNX Runtime halves the classifier's time of a 112 px colour model on a CPU
    (docs/performance.md).
    :attr:`backend` says which one runs.
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        backend: str = "auto",
        onnx_path: str | Path | None = None,
        device: str = "cpu",
        threads: int | None = None,
        tta: str = "none",
        max_threads: int | None = None,
    ) -> None:
        """``threads``: PyTorch/ONNX Runtime intra-op threads; ``None`` or 0 chooses: PyTorch one thread for
        up to :data:`SMALL_BATCH` faces, else ``max_threads`` (default :func:`default_threads`), close to the
        best fixed count on idle and busy machines alike; ONNX Runtime ``max_threads`` with idle threads
        sleeping (docs/performance.md). ``device``: ``cpu``, ``cuda``, ``auto``.
        ``tta``: ``none``, or a view set of :data:`emolens.tta.VIEWS` whose answers are averaged
        (``flip``: the mirror image too; ``shift-flip``: ten views, ten times the classifier's cost; ``scale``: the
        face also read at 8/7 of its side, for models with global pooling)."""
        from ..tta import VIEWS

        self.views = "single" if tta == "none" else tta
        if self.views not in VIEWS:
            raise ValueError(f"tta={tta!r}: choose none, flip, shift-flip or scale")
        if backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"unknown backend {backend!r}; use 'auto', 'torch' or 'onnx'")
        if self.views != "single" and backend == "onnx":
            raise ValueError("test-time augmentation (tta) runs with the PyTorch backend, not ONNX")
        self.device = resolve_device(device)
        self.threads = threads or max_threads or default_threads()
        auto = backend == "auto"
        if auto:
            backend = "onnx" if self.views == "single" and self.device.type == "cpu" and onnx_available() else "torch"
        source = None  # the checkpoint behind a cached export (what :attr:`checkpoint` then names)
        if backend == "onnx" and onnx_path is None:
            from ..export import cached_export

            source = resolve_checkpoint(checkpoint)
            try:
                onnx_path = cached_export(source)
            except CheckpointError:
                raise  # a damaged or refused checkpoint: PyTorch could not load it either
            except Exception as e:  # noqa: BLE001 - auto's fast path falls back to PyTorch; asked-for ONNX raises
                if not auto:
                    raise
                warnings.warn(f"ONNX Runtime not used ({e}); the classifier runs in PyTorch", stacklevel=2)
                backend = "torch"
        self.backend = backend
        self.adaptive = not threads and self.device.type == "cpu" and backend == "torch"
        torch.set_num_threads(self.threads)
        if backend == "torch":
            path = source or resolve_checkpoint(checkpoint)
            ckpt = load_checkpoint(path)
            self.checkpoint = path
            self.classes: list[str] = list(ckpt["classes"])
            self.model_name: str = ckpt["model"]
            self.preprocess: Preprocess = Preprocess.from_dict(ckpt["preprocess"])
            model, _ = build_from_checkpoint(ckpt, str(path))
            self.model = for_inference(model.to(self.device))
        else:
            import onnxruntime as ort

            from ..export import metadata_preprocess, open_onnx

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            # idle worker threads sleep instead of spinning (as OMP_WAIT_POLICY=PASSIVE does for PyTorch)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            # the export describes itself: no checkpoint needed
            self.session, meta = open_onnx(onnx_path, opts)
            self.checkpoint = source or Path(onnx_path)
            self.classes = list(meta["classes"])
            self.model_name = meta["model"]
            self.preprocess = metadata_preprocess(meta)
        p = self.preprocess
        self._mean = np.asarray(p.mean, np.float32).reshape(1, -1, 1, 1)
        self._std = np.asarray(p.std, np.float32).reshape(1, -1, 1, 1)

    def to_input(self, faces: np.ndarray) -> np.ndarray:
        """uint8 N x S x S (x 3) -> normalised float32 N x C x S x S, exactly as at training."""
        x = faces.astype(np.float32) / 255.0
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray((x - self._mean) / self._std)

    @torch.no_grad()
    def predict(self, faces: np.ndarray) -> np.ndarray:
        """Class probabilities, N x len(classes), for a uint8 batch of crops (N may be 0)."""
        if len(faces) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        x = self.to_input(faces)
        if self.backend == "onnx":
            logits = self.session.run(None, {self.session.get_inputs()[0].name: x})[0]
            e = np.exp(logits - logits.max(1, keepdims=True))
            return (e / e.sum(1, keepdims=True)).astype(np.float32)
        if self.adaptive:
            torch.set_num_threads(1 if len(faces) <= SMALL_BATCH else self.threads)
        x = torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
        if self.views != "single":
            from ..tta import multi_view_log_probs

            return multi_view_log_probs(self.model, x, self.views).exp().cpu().numpy()
        return self.model(x).softmax(1).cpu().numpy()
