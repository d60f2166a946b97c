import copy

import pytest
import torch
import torchvision
from torch import nn

from emolens import models


@pytest.mark.parametrize("name", models.available())
def test_every_model_gives_logits_for_its_input(name):
    s = models.spec(name)
    m = models.create(name, num_classes=8).eval()
    with torch.no_grad():
        out = m(torch.randn(2, s.channels, s.image_size, s.image_size))
    assert out.shape == (2, 8)


def test_paper_cnn_is_the_papers_architecture():
    m = models.create("paper_cnn", num_classes=8)
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    linears = [x for x in m.modules() if isinstance(x, nn.Linear)]
    assert len(convs) == 5 and all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(x, nn.MaxPool2d) for x in m.modules()) == 5
    assert sum(isinstance(x, nn.ReLU) for x in m.modules()) == 5
    assert len(linears) == 1 and linears[0].out_features == 8
    small = models.create("paper_cnn", num_classes=7, image_size=64, in_channels=1)
    assert small(torch.randn(1, 1, 64, 64)).shape == (1, 7)
    with pytest.raises(ValueError, match="divisible by 32"):
        models.create("paper_cnn", image_size=48)


def test_resnet18_loads_local_weights(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    m = models.create("resnet18", num_classes=8, weights=str(path))
    assert torch.equal(m.conv1.weight, ref.conv1.weight) and m.fc.out_features == 8
    grey = models.create("resnet18", num_classes=8, weights=str(path), in_channels=1)
    assert torch.allclose(grey.conv1.weight, ref.conv1.weight.sum(1, keepdim=True))
    torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth: weights do not fit"):
        models.create("resnet18", weights=str(tmp_path / "bad.pth"))
    with pytest.raises(ValueError, match="no pretrained weights"):
        models.create("paper_cnn", pretrained=True)


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'vgg99'"):
        models.create("vgg99")


@pytest.mark.parametrize("name", ["fernet", "fernet_wide", "fernet_x2", "resnet18_small"])
def test_for_inference_folds_batchnorm_without_changing_outputs(name):
    from emolens.live.classifier import for_inference

    torch.manual_seed(0)
    model = models.create(name, num_classes=8)
    model.train()
    for _ in range(3):  # give BatchNorm non-trivial running statistics
        model(torch.randn(16, 1, 48, 48) * 2 + 0.5)
    model.eval()
    x = torch.randn(5, 1, 48, 48)
    with torch.no_grad():
        ref = model(x)
        fast = for_inference(copy.deepcopy(model))
        out = fast(x.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())  # folded into the convs
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()


def test_for_inference_keeps_a_model_it_cannot_trace():
    from emolens.live.classifier import for_inference

    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return self.bn(self.conv(x)).mean((2, 3))

    m = Branchy().eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        ref = m(x)
        fast = for_inference(m)  # no exception: the plain model comes back
        assert any(isinstance(k, torch.nn.BatchNorm2d) for k in fast.modules())
        assert torch.allclose(fast(x), ref, atol=1e-6)


def test_input_adapter_repeats_the_loaders_grey_conversion_and_resize():
    """A 112 px colour face through the adapter == the same face made 48 px grey by cv2, as loaders do."""
    import cv2
    import numpy as np

    from emolens.models import InputAdapter
    from emolens.transforms import Preprocess, eval_transform

    rgb = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    src, dst = Preprocess.for_channels(112, 3), Preprocess.for_channels(48, 1)
    x = eval_transform(src)(torch.from_numpy(rgb).permute(2, 0, 1))[None]
    grey = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), (48, 48), interpolation=cv2.INTER_AREA)
    want = (torch.from_numpy(grey / 255.0)[None, None] - 0.5) / 0.25
    got = InputAdapter(src, dst)(x)
    assert got.shape == (1, 1, 48, 48)
    # the loaders round the grey face to uint8 before resizing: within half a grey level (0.5/255/0.25)
    assert (got - want).abs().max() < 0.01
    with pytest.raises(ValueError, match="grey input"):
        InputAdapter(dst, src)
