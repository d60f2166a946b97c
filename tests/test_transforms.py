"""BatchAugment: the training augmentation for whole batches on the device, checked against known geometry
and against the per-image pipeline (``train_transform``) a CPU run uses."""

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from emolens.transforms import BatchAugment, Preprocess, eval_transform, train_transform

PRE = Preprocess()


def _square(n: int = 256, size: int = 48, half: int = 8) -> torch.Tensor:
    x = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    c = size // 2
    x[:, :, c - half : c + half, c - half : c + half] = 255
    return x


def _only(aug: BatchAugment, **keep) -> BatchAugment:
    """Switch every operation off except those in ``keep``."""
    aug.degrees, aug.translate, aug.scale, aug.jitter, aug.erase_p = 0.0, 0.0, (1.0, 1.0), 0.0, 0.0
    for k, v in keep.items():
        setattr(aug, k, v)
    return aug


def _denorm(x: torch.Tensor) -> torch.Tensor:
    return x * PRE.std[0] + PRE.mean[0]


def test_identity_settings_leave_only_flips():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (256, 1, 48, 48), dtype=torch.uint8)
    out = _only(BatchAugment(PRE))(x)
    ref = torch.stack([eval_transform(PRE)(xi) for xi in x])
    same = (out - ref).abs().amax((1, 2, 3)) < 1e-4
    flipped = (out - ref.flip(-1)).abs().amax((1, 2, 3)) < 1e-4
    assert bool((same | flipped).all())  # every image is either untouched or mirrored, exactly
    assert 0.35 < flipped.float().mean() < 0.65  # p = 0.5


def test_strength_none_is_the_eval_transform():
    x = torch.randint(0, 256, (8, 1, 48, 48), dtype=torch.uint8)
    ref = torch.stack([eval_transform(PRE)(xi) for xi in x])
    assert torch.allclose(BatchAugment(PRE, "none")(x), ref, atol=1e-6)


def test_shift_and_scale_stay_in_their_ranges():
    torch.manual_seed(1)
    aug = _only(BatchAugment(PRE), translate=0.08, scale=(0.9, 1.1))
    out = _denorm(aug(_square()))[:, 0]
    mass = out.sum((1, 2))
    ys, xs = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    cy, cx = (out * ys).sum((1, 2)) / mass, (out * xs).sum((1, 2)) / mass
    shift = torch.stack([cx - 23.5, cy - 23.5])
    assert shift.abs().max() <= 0.08 * 48 + 0.5  # ±8 % of the side
    assert shift.abs().max() > 0.06 * 48  # and the range is used
    area = mass / 256.0  # the square's area is 16 x 16 = 256 px
    assert area.min() > 0.9**2 - 0.05 and area.max() < 1.1**2 + 0.05
    assert area.min() < 0.85 and area.max() > 1.15


def test_rotation_stays_in_its_range():
    torch.manual_seed(2)
    x = torch.zeros(256, 1, 48, 48, dtype=torch.uint8)
    x[:, :, 23:25, 6:42] = 255  # a horizontal bar through the centre
    out = _denorm(_only(BatchAugment(PRE), degrees=12.0)(x))[:, 0]
    ys, xs = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    angles = []
    for im in out:
        w = im / im.sum()
        mx, my = (w * xs).sum(), (w * ys).sum()
        cxx, cyy, cxy = (w * (xs - mx) ** 2).sum(), (w * (ys - my) ** 2).sum(), (w * (xs - mx) * (ys - my)).sum()
        angles.append(0.5 * math.degrees(math.atan2(2 * cxy, cxx - cyy)))  # principal axis of the bar
    angles = np.abs(angles)
    assert angles.max() <= 12.5 and angles.max() > 10


def test_brightness_and_contrast_keep_pixels_in_range():
    torch.manual_seed(3)
    x = torch.randint(0, 256, (256, 1, 48, 48), dtype=torch.uint8)
    out = _denorm(_only(BatchAugment(PRE), jitter=0.3)(x))
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    ratio = out.mean((1, 2, 3)) / (x.float() / 255).mean((1, 2, 3))
    assert ratio.min() < 0.8 and ratio.max() > 1.2  # brightness ±30 %


@pytest.mark.parametrize("strength,expected_p", [("default", 0.25), ("light", 0.0)])
def test_random_erasing_share_and_area(strength, expected_p):
    torch.manual_seed(4)
    aug = BatchAugment(PRE, strength)
    x = torch.zeros(2000, 1, 48, 48)
    m = aug.erase_masks(x)[:, 0]
    erased = m.any((1, 2))
    assert abs(erased.float().mean().item() - expected_p) < 0.04
    if expected_p:
        share = m[erased].float().mean((1, 2))
        assert share.min() >= 0.02 - 0.01 and share.max() <= 0.15 + 0.01
        rows, cols = m[erased].any(2), m[erased].any(1)
        assert torch.equal(m[erased].sum((1, 2)), rows.sum(1) * cols.sum(1))  # one rectangle each


def test_per_image_and_batch_pipelines_resample_alike():
    """A CPU run (``train_transform``, per image) and a GPU run (``BatchAugment``) must show the network the
    same kind of faces: with nearest-neighbour resampling the per-image affine left jagged edges, 15-18 % more
    pixel-to-pixel contrast than the batch pipeline's bilinear one, and a model's BatchNorm statistics
    re-measured on it cost a point of accuracy. Measured on a real face, 1,024 draws each."""
    face = cv2.imread(str(Path(__file__).parents[1] / "src/emolens/assets/astronaut_face.jpg"), cv2.IMREAD_GRAYSCALE)
    x = torch.from_numpy(cv2.resize(face, (48, 48), interpolation=cv2.INTER_AREA))[None]
    torch.manual_seed(5)
    per_image = torch.stack([train_transform(PRE)(x) for _ in range(1024)])
    batch = BatchAugment(PRE)(x[None].expand(1024, -1, -1, -1).contiguous())

    def edges(out: torch.Tensor) -> tuple[float, float]:
        d = _denorm(out)
        return float((d[..., 1:] - d[..., :-1]).abs().mean()), float((d[..., 1:, :] - d[..., :-1, :]).abs().mean())

    for a, b in zip(edges(per_image), edges(batch), strict=True):
        assert abs(a / b - 1) < 0.05
