"""Image extractors: every configured backbone, channel adaptation, offline pretrained weights."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.models import get_model

from nervus_lightning.config import config_dir
from nervus_lightning.data.schema import NervusInputError
from nervus_lightning.models.extractors import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GrayStem,
    ImageExtractor,
    adapt_first_conv,
    build_image_extractor,
    pretrained_weights_file,
)

_CONFIGS = {
    p.stem: yaml.safe_load(p.read_text())
    for p in (Path(config_dir()) / "model" / "extractor").glob("*.yaml")
}
# The torchvision backbones offered as YAMLs (small_cnn is the project's own network).
BACKBONES = sorted(
    c["name"]
    for c in _CONFIGS.values()
    if c.get("_target_") == "nervus_lightning.models.extractors.TorchvisionExtractor"
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


def _normalised_rgb(gray: torch.Tensor) -> torch.Tensor:
    """What the RGB network is fed: the gray image repeated 3x, normalised per channel."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=gray.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=gray.dtype).view(1, 3, 1, 1)
    return (gray.repeat(1, 3, 1, 1) - mean) / std


def _randomise_batch_norm(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-trivial running statistics and affine terms, as pretrained weights have."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


def _without_classifier(model: torch.nn.Module) -> torch.nn.Module:
    name = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, torch.nn.Identity())
    return model


def _random_rgb_network(name: str, size: int) -> torch.nn.Module:
    """Random stand-in for pretrained weights: every parameter and BN statistic non-trivial."""
    torch.manual_seed(0)
    model = get_model(name, weights=None, **({"image_size": size} if "vit" in name else {}))
    with torch.no_grad():
        _randomise_batch_norm(model, torch.Generator().manual_seed(1))
        for param in model.parameters():  # zero-initialised biases too (convnext's stem has one)
            if param.ndim == 1 and not param.any():
                param.add_(torch.randn(param.shape) * 0.1)
    return model


def _gray_image(size: int) -> torch.Tensor:
    # A bright border, so that wrong padding (raw zeros instead of normalised zeros) would show.
    x = torch.rand(
        2, 1, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(4)
    )
    x[:, :, :2], x[:, :, :, -3:] = 1.0, 0.9
    return x


# (name, input size): stems with padding 3 (resnet, densenet) or 1 (efficientnet), without
# padding but with a bias (convnext), and vit's patch projection. Float64, so that the check is
# of the algebra, not of float32 rounding (which is about 5e-6 on these features).
STEMS = [
    ("resnet18", 40),
    pytest.param("densenet121", 40, marks=pytest.mark.slow),
    ("efficientnet_b0", 37),
    ("convnext_tiny", 32),
    ("vit_b_16", 32),
]


@pytest.mark.parametrize(("name", "size"), STEMS)
def test_gray_network_gives_the_rgb_networks_features_exactly(name, size):
    rgb = _without_classifier(_random_rgb_network(name, size)).double().eval()
    gray = copy.deepcopy(rgb)
    adapt_first_conv(gray, 1)  # the step build_image_extractor takes after loading weights
    assert any(isinstance(m, GrayStem) for m in gray.modules())
    extractor = ImageExtractor(gray, 0, in_channels=1).eval()
    x = _gray_image(size)
    with torch.no_grad():
        expected = rgb(_normalised_rgb(x)).flatten(1)
        got = extractor(x)
    assert expected.std() > 1e-2  # the features are not degenerate
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_gray_stem_handles_the_border_a_plain_folded_conv_gets_wrong():
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1, bias=True).double()
    stem = GrayStem(conv, IMAGENET_MEAN, IMAGENET_STD)
    x = torch.rand(3, 1, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        expected = conv(_normalised_rgb(x))
        torch.testing.assert_close(stem(x), expected, rtol=0, atol=1e-12)
        # A single folded conv with a constant offset: right inside, wrong on the border.
        folded = stem.gray(x) - stem.offset.weight.sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
    inside = (..., slice(1, -1), slice(1, -1))
    torch.testing.assert_close(folded[inside], expected[inside])
    assert (folded[..., 0, :] - expected[..., 0, :]).abs().max() > 1e-2
    assert (folded[..., :, -1] - expected[..., :, -1]).abs().max() > 1e-2
    assert all(p.requires_grad for p in stem.parameters()) and len(list(stem.parameters())) == 3


def test_gray_stem_under_bf16_autocast_is_no_less_precise_than_the_rgb_layer():
    torch.manual_seed(5)
    conv = get_model("resnet18", weights=None).conv1
    stem = GrayStem(conv, IMAGENET_MEAN, IMAGENET_STD)
    x = (0.45 + 0.15 * torch.randn(4, 1, 48, 48)).clamp(0, 1)  # a typical radiograph's range
    rgb_input = _normalised_rgb(x)
    with torch.no_grad():
        exact = torch.nn.functional.conv2d(rgb_input.double(), conv.weight.double(), None, 2, 3)

    def error(out: torch.Tensor) -> float:
        return float((out.double() - exact).abs().mean() / exact.abs().mean())

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        rgb_error, stem_out = error(conv(rgb_input)), stem(x)
    assert stem_out.dtype == torch.float32
    assert error(stem_out) < rgb_error / 10  # the stem runs in float32 inside autocast


def test_checkpoints_of_the_former_plain_gray_conv_load_with_the_same_outputs():
    # Before the stem, a 1-channel model was a plain conv on images normalised with the averaged
    # ImageNet mean and std; its state dict must load and give the same features.
    torch.manual_seed(6)
    model, features = build_image_extractor("resnet18", in_channels=1)
    former = _without_classifier(get_model("resnet18", weights=None)).eval()
    former.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.load_state_dict(former.state_dict())  # strict: every key matched
    extractor = ImageExtractor(model, features, in_channels=1).eval()
    x = torch.rand(2, 1, 32, 32)
    mean, std = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
    with torch.no_grad():
        torch.testing.assert_close(extractor(x), former((x - mean) / std), rtol=1e-5, atol=1e-5)


def test_gray_stem_float32_and_gradients():
    torch.manual_seed(3)
    model, _ = build_image_extractor("resnet18", in_channels=1)
    extractor = ImageExtractor(model, 512, in_channels=1)
    extractor(torch.rand(4, 1, 32, 32)).sum().backward()
    stem = model.conv1
    assert isinstance(stem, GrayStem)
    assert stem.gray.weight.grad is not None and stem.offset.weight.grad is not None
    assert stem.gray.weight.grad.abs().sum() > 0 and stem.offset.weight.grad.abs().sum() > 0


def test_three_channels_left_unchanged_and_normalised_per_channel():
    model, features = build_image_extractor("resnet18", in_channels=3)
    assert isinstance(model.conv1, torch.nn.Conv2d) and model.conv1.in_channels == 3
    extractor = ImageExtractor(model, features, in_channels=3).eval()
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(extractor(x), model((x - mean) / std).flatten(1))


def test_pretrained_offline_message_names_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache, url = pretrained_weights_file("resnet18")
    with pytest.raises(NervusInputError) as info:
        build_image_extractor("resnet18", pretrained=True)
    msg = str(info.value)
    assert str(cache) in msg and url in msg and "weights_path" in msg


def test_pretrained_from_weights_path(tmp_path):
    # A saved random state dict stands in for torchvision's file; the full route (load, drop the
    # classifier, gray stem) gives the RGB network's features on the normalised repeated image.
    source = _random_rgb_network("resnet18", 40)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model, features = build_image_extractor(
        "resnet18", in_channels=1, pretrained=True, weights_path=str(path)
    )
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    folded = (source.conv1.weight / std).sum(1, keepdim=True)
    torch.testing.assert_close(model.conv1.gray.weight, folded)
    torch.testing.assert_close(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    extractor = ImageExtractor(model, features, in_channels=1).double().eval()
    rgb = _without_classifier(source).double().eval()
    x = _gray_image(40)
    with torch.no_grad():
        torch.testing.assert_close(extractor(x), rgb(_normalised_rgb(x)), rtol=1e-5, atol=1e-5)


def test_unknown_backbone_suggests_names():
    with pytest.raises(NervusInputError, match="resnet18"):
        build_image_extractor("resnet81")


def test_small_cnn_shapes_weights_and_config():
    from nervus_lightning.models.extractors import SmallCNN
    from nervus_lightning.models.plugins import build_component

    config = dict(_CONFIGS["small_cnn"])
    assert config["_target_"] == "nervus_lightning.models.extractors.SmallCNN"
    config.pop("shared")
    torch.manual_seed(0)
    model = build_component("model.extractor", config, {}, in_channels=1, image_size=16)
    assert isinstance(model, SmallCNN) and model.out_features == 128
    # 3x3 convs without bias + batch norm: 9*(1*32 + 32*32 + 32*64 + 64*64 + 64*128 + 128*128)
    # conv weights and 2 * (2*32 + 2*64 + 2*128) batch-norm weights.
    assert sum(p.numel() for p in model.parameters()) == 9 * 31776 + 2 * 448
    for size in (8, 16, 17, 64):  # any size that survives the two 2x2 pools
        assert model.eval()(torch.rand(3, 1, size, size)).shape == (3, 128)
    rgb = SmallCNN(in_channels=3, widths=[4], convs_per_stage=1)
    assert rgb.normalise and rgb(torch.rand(2, 3, 5, 5)).shape == (2, 4)
    with pytest.raises(NervusInputError, match="widths"):
        build_component("model.extractor", {**config, "widths": []}, {}, in_channels=1)
