"""Image extractors: every configured backbone, channel adaptation, offline pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torchvision.models import get_model

from nervus_lightning.config import config_dir
from nervus_lightning.data.schema import NervusInputError
from nervus_lightning.models.extractors import (
    adapt_first_conv,
    build_image_extractor,
    pretrained_weights_file,
)

BACKBONES = sorted(
    yaml.safe_load(p.read_text())["name"]
    for p in (Path(config_dir()) / "model" / "extractor").glob("*.yaml")
    if p.stem != "none"
)


def test_every_issue_backbone_has_a_config():
    required = {
        "resnet18",
        "resnet50",
        "densenet121",
        "efficientnet_b0",
        "efficientnet_v2_s",
        "convnext_tiny",
        "vit_b_16",
    }
    assert required <= set(BACKBONES)


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_features_without_classifier(name):
    size = 32
    model, features = build_image_extractor(name, in_channels=1, image_size=size)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, size, size))
    assert out.flatten(1).shape == (2, features)
    reference = get_model(name, weights=None, **({"image_size": size} if "vit" in name else {}))
    n_out = [m for m in reference.modules() if isinstance(m, torch.nn.Linear)][-1].out_features
    assert n_out == 1000 and features != 1000  # the 1000-class ImageNet layer is gone


def test_grayscale_conv_equals_rgb_network_on_replicated_image():
    torch.manual_seed(0)
    rgb = get_model("resnet18", weights=None).eval()
    gray = get_model("resnet18", weights=None).eval()
    gray.load_state_dict(rgb.state_dict())
    adapt_first_conv(gray, 1)
    assert gray.conv1.in_channels == 1
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


def test_three_channels_left_unchanged():
    model, _ = build_image_extractor("resnet18", in_channels=3)
    assert model.conv1.in_channels == 3


def test_pretrained_offline_message_names_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache, url = pretrained_weights_file("resnet18")
    with pytest.raises(NervusInputError) as info:
        build_image_extractor("resnet18", pretrained=True)
    msg = str(info.value)
    assert str(cache) in msg and url in msg and "weights_path" in msg


def test_pretrained_from_weights_path(tmp_path):
    torch.manual_seed(1)
    source = get_model("resnet18", weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model, _ = build_image_extractor(
        "resnet18", in_channels=1, pretrained=True, weights_path=str(path)
    )
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_unknown_backbone_suggests_names():
    with pytest.raises(NervusInputError, match="resnet18"):
        build_image_extractor("resnet81")
