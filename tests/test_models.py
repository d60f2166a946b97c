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
