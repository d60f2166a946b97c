"""The multi-view distillation teacher: exact views, averaged probabilities, held answers."""

import numpy as np
import pytest
import torch
from conftest import make_folder_dataset
from torch import nn
from torch.utils.data import DataLoader

from emolens.data import FaceDataset, Sample
from emolens.training.teacher import precompute_targets
from emolens.tta import VIEWS, multi_view_log_probs, view_batch


def test_view_batch_shifts_by_whole_pixels_and_mirrors():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 2] = 1.0
    right = view_batch(x, 1 / 8, 0.0, False)  # one pixel of an 8 px side
    assert right[0, 0, 3, 3] == pytest.approx(1.0) and right.sum() == pytest.approx(1.0)
    up = view_batch(x, 0.0, -2 / 8, False)
    assert up[0, 0, 1, 2] == pytest.approx(1.0)
    assert torch.equal(view_batch(x, 0.0, 0.0, True)[0, 0, 3], x[0, 0, 3].flip(0))
    assert torch.equal(view_batch(x, 0.0, 0.0, False), x)


def test_view_batch_scale_resizes_the_whole_face_in_place():
    x = torch.zeros(1, 1, 7, 7)
    x[..., :3] = 1.0  # bright left three columns of seven
    up = view_batch(x, 0.0, 0.0, False, 8 / 7)
    assert up.shape == (1, 1, 8, 8)
    # the whole face, resized (not cropped): bright left, dark right, the edge where 3/7 of the side lands
    assert torch.allclose(up[..., :3], torch.ones(1, 1, 8, 3), atol=1e-6) and up[..., 4:].abs().max() < 1e-6
    assert 0.0 < float(up[0, 0, 0, 3]) < 1.0
    flat = view_batch(torch.full((2, 3, 112, 112), 0.3), 0.0, 0.0, False, 8 / 7)
    assert flat.shape == (2, 3, 128, 128) and torch.allclose(flat, torch.full_like(flat, 0.3))
    assert torch.equal(view_batch(x, 0.0, 0.0, False, 1.0), x)


class _Size(nn.Module):
    """Logits = (side / 8, 0): the answer depends only on the size the face is read at."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = torch.full((len(x),), x.shape[-1] / 8.0)
        return torch.stack([side, torch.zeros_like(side)], 1)


def test_scale_views_average_the_face_read_at_its_size_and_at_eight_sevenths():
    x = torch.zeros(3, 1, 56, 56)
    got = multi_view_log_probs(_Size(), x, "scale").exp()
    p56, p64 = torch.tensor([56 / 8, 0.0]).softmax(0), torch.tensor([64 / 8, 0.0]).softmax(0)
    assert torch.allclose(got, ((p56 + p64) / 2).expand(3, 2), atol=1e-6)


def test_scale_views_refuse_a_model_of_fixed_input_size_by_name():
    from emolens import models

    net = models.create("paper_cnn", num_classes=8, in_channels=1, image_size=224).eval()  # flattens 7x7 maps
    x = torch.zeros(1, 1, 224, 224)
    assert multi_view_log_probs(net, x, "flip").shape == (1, 8)
    with pytest.raises(ValueError, match="reads 224 px faces only.*256 px view of test-time augmentation 'scale'"):
        multi_view_log_probs(net, x, "scale")
    # at 64 px the 73 px view floors to the same 2x2 map and would run, reading only part of the face: refused too
    small = models.create("paper_cnn", num_classes=8, in_channels=1, image_size=64).eval()
    with pytest.raises(ValueError, match="reads 64 px faces only.*73 px view"):
        multi_view_log_probs(small, torch.zeros(1, 1, 64, 64), "scale")


class _Columns(nn.Module):
    """Logits = brightness of the left half, the right half and the whole: easy to work out by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        return torch.stack([x[..., : w // 2].mean((1, 2, 3)), x[..., w // 2 :].mean((1, 2, 3)), x.mean((1, 2, 3))], 1)


def test_multi_view_log_probs_average_probabilities_over_views():
    x = torch.zeros(2, 1, 8, 8)
    x[0, ..., :4] = 4.0  # bright left half
    x[1] = 1.0
    model = _Columns()
    assert torch.allclose(multi_view_log_probs(model, x, "single"), model(x).log_softmax(1), atol=1e-6)
    want = (model(x).softmax(1) + model(x.flip(3)).softmax(1)).div(2).log()
    got = multi_view_log_probs(model, x, "flip")
    assert torch.allclose(got, want, atol=1e-6)
    assert got[0, 0] == pytest.approx(got[0, 1])  # mirrored, the halves trade places: both equally likely
    assert len(VIEWS["shift-flip"]) == 10


def test_precomputed_targets_are_kept_per_teacher_views_and_faces(tmp_path):
    faces = [Sample(label=i % 2, pixels=torch.full((8, 8), 40 * i, dtype=torch.uint8).numpy()) for i in range(5)]
    ds = FaceDataset(faces, ("a", "b"), image_size=8)
    teacher_file = tmp_path / "teacher.pt"
    teacher_file.write_bytes(b"one")
    calls = []

    class Counting(_Columns):
        def forward(self, x):
            calls.append(len(x))
            return super().forward(x)

    def run(views="flip"):
        to_float = lambda t: t.float() / 255  # noqa: E731
        return precompute_targets(
            Counting(), teacher_file, ds, to_float, views, tmp_path / "t.pt", torch.device("cpu"), progress=False
        )

    first = run()
    assert first.shape == (5, 3) and sum(calls) == 10  # five faces, two views each
    assert torch.equal(run(), first) and sum(calls) == 10  # held: the teacher is not asked again
    run("single")
    assert sum(calls) == 15  # other views: asked again
    teacher_file.write_bytes(b"two")
    run("single")
    assert sum(calls) == 20  # another teacher file: asked again


def test_split_log_probs_with_flip_views_is_flip_tta(tmp_path):
    """The multi-view path of ``split_log_probs`` (how a teacher is scored) agrees with evaluation's flip TTA."""
    from emolens import models
    from emolens.checkpoint import model_payload, save_atomic
    from emolens.data import open_dataset
    from emolens.evaluation.inference import predict_loader
    from emolens.evaluation.prior import split_log_probs
    from emolens.labels import CLASSES
    from emolens.transforms import Preprocess, eval_transform

    root = make_folder_dataset(tmp_path / "d", classes=("happy", "sad"), per_class=6, size=32, split_dirs=True)
    torch.manual_seed(0)
    net = models.create("fernet_tiny", num_classes=8, in_channels=1, image_size=32).eval()
    pre = Preprocess.for_channels(32, 1)
    save_atomic(model_payload(net, "fernet_tiny", CLASSES, pre, train_counts=[1] * 8), tmp_path / "m.pt")
    run = split_log_probs(tmp_path / "m.pt", "folder", root, "val", progress=False, views="flip")
    ds = open_dataset("folder", root, "val", 32, 1, eval_transform(pre), cache=False)
    probs, labels, _ = predict_loader(net, DataLoader(ds, batch_size=256), torch.device("cpu"), tta=True)
    assert np.array_equal(run["labels"], labels)
    assert np.allclose(np.exp(run["log_probs"]), probs, atol=1e-5)


class _Constant(nn.Module):
    """Logits that name one class, whatever the face: which teacher answered shows in the answer."""

    def __init__(self, k: int, calls: list) -> None:
        super().__init__()
        self.k, self.calls = k, calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        out = torch.zeros(len(x), 3)
        out[:, self.k] = 5.0
        return out


def test_routed_targets_give_each_dataset_of_a_mix_its_own_teacher(tmp_path):
    from emolens.training.config import parse_routes
    from emolens.training.teacher import routed_targets

    faces = [Sample(label=0, pixels=np.full((8, 8), 10 * i, np.uint8)) for i in range(7)]
    ds = FaceDataset(faces, ("a", "b", "c"), image_size=8)
    ds.parts = [("rafdb", 0, 3), ("ferplus", 3, 5), ("sfew", 5, 7)]
    files = {}
    for name in ("default", "fer"):
        files[name] = tmp_path / f"{name}.pt"
        files[name].write_bytes(name.encode())
    default_calls, fer_calls, loaded = [], [], []

    def load(path):
        loaded.append(path)
        return _Constant(2, fer_calls)

    def run(routes):
        to_float = lambda t: t.float() / 255  # noqa: E731
        out = tmp_path / "run"
        out.mkdir(exist_ok=True)
        default = _Constant(0, default_calls)
        return routed_targets(default, files["default"], routes, load, ds, to_float, "single", out,
                              torch.device("cpu"), progress=False)  # fmt: skip

    routes = parse_routes([f"ferplus={files['fer']}"])
    got = run(routes).argmax(1).tolist()
    assert got == [0, 0, 0, 2, 2, 0, 0]  # FER+'s two faces answered by its own teacher, the rest by the default
    assert sum(default_calls) == 5 and sum(fer_calls) == 2 and loaded == [str(files["fer"])]  # each its own faces
    assert (tmp_path / "run" / "teacher_targets_ferplus.pt").is_file()
    assert run(routes).argmax(1).tolist() == got and sum(default_calls) == 5 and sum(fer_calls) == 2  # held
    assert run({}).argmax(1).tolist() == [0] * 7 and sum(default_calls) == 12  # no routes: one teacher, all faces
    with pytest.raises(ValueError, match=r"names \['affectnet'\], not datasets of this mix \['rafdb', 'ferplus'"):
        run({"affectnet": str(files["fer"])})
    with pytest.raises(ValueError, match="DATASET=CHECKPOINT, not 'ferplus'"):
        parse_routes(["ferplus"])
    with pytest.raises(ValueError, match="'ferplus' twice"):
        parse_routes(["ferplus=a.pt", "ferplus=b.pt"])


def test_teacher_for_needs_an_offline_teacher():
    from emolens.training import TrainConfig

    with pytest.raises(ValueError, match="set teacher and teacher_offline"):
        TrainConfig(root="x", teacher="t.pt", teacher_for=["ferplus=f.pt"]).validate()
    with pytest.raises(ValueError, match="DATASET=CHECKPOINT"):
        TrainConfig(root="x", teacher="t.pt", teacher_offline=True, teacher_for=["f.pt"]).validate()
    TrainConfig(root="x", teacher="t.pt", teacher_offline=True, teacher_for=["ferplus=f.pt"]).validate()
