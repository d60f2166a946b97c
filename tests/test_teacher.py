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
