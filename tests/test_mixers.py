"""The fusion choices of ``model/mixer=``: contract, documented behaviour, and training."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, compose_config, write_png
from hydra.utils import get_class
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from nervus_lightning.cli.train import train_settings
from nervus_lightning.config import config_dir
from nervus_lightning.data.schema import NervusInputError
from nervus_lightning.models.mixers import (
    MIXERS,
    AttentionMixer,
    FiLMMixer,
    GatedMixer,
    default_modalities,
)
from nervus_lightning.models.plugins import build_component
from nervus_lightning.module import NervusModule
from nervus_lightning.workflows.train import train

BLOCKS = {
    2: ([24, 6], ["image/frontal", "tabular"]),
    3: ([24, 24, 6], ["image/frontal", "image/lateral", "tabular"]),
}
# Small options so that the tests stay fast; each mixer's defaults are exercised by its YAML.
SMALL = {
    "concat": {"hidden": [16]},
    "gated": {"width": 8, "hidden": [16]},
    "film": {"width": 8, "hidden": [16]},
    "attention": {"d_model": 8, "heads": 2, "hidden": [16]},
}


def _features(widths, batch=5, seed=0, grad=False):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, w, generator=gen, requires_grad=grad) for w in widths]


def _build(name, widths, modalities, seed=0, **options):
    torch.manual_seed(seed)
    return MIXERS[name](widths, modalities, **{**SMALL[name], **options})


@pytest.mark.parametrize("n_blocks", sorted(BLOCKS))
@pytest.mark.parametrize("name", sorted(MIXERS))
@pytest.mark.parametrize("named", [True, False], ids=["modalities", "default"])
def test_shapes_in_training_and_with_one_case_in_eval(name, n_blocks, named):
    widths, modalities = BLOCKS[n_blocks]
    mixer = _build(name, widths, modalities if named else None)
    out = mixer(_features(widths, batch=5))
    assert out.shape == (5, mixer.out_features) == (5, 16)
    mixer.eval()
    assert mixer(_features(widths, batch=1)).shape == (1, 16)


@pytest.mark.parametrize("name", sorted(MIXERS))
@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_norm_option_and_empty_mlp(name, norm):
    widths, modalities = BLOCKS[3]
    mixer = _build(name, widths, modalities, norm=norm)
    norms = {type(m).__name__ for m in mixer.net}
    expected = {"batch": {"BatchNorm1d"}, "layer": {"LayerNorm"}, "none": set()}[norm]
    assert norms & {"BatchNorm1d", "LayerNorm"} == expected
    bare = _build(name, widths, modalities, hidden=[])
    bare.eval()
    assert bare(_features(widths)).shape == (5, bare.out_features)
    assert len(bare.net) == 0


def test_default_modalities_read_images_first_then_tabular():
    assert default_modalities(1) == ["image/0"]
    assert default_modalities(2) == ["image/0", "tabular"]
    assert default_modalities(3) == ["image/0", "image/1", "tabular"]
    assert FiLMMixer([24, 6]).modalities == ["image/0", "tabular"]


def test_film_starts_as_the_identity_modulation():
    widths, modalities = BLOCKS[3]
    film = _build("film", widths, modalities)
    film.eval()
    feats = _features(widths)
    frontal, lateral, tab = feats
    plain = torch.cat([film.projections[0](frontal), film.projections[1](lateral), tab], dim=1)
    torch.testing.assert_close(film(feats), film.net(plain), rtol=0, atol=0)


def test_film_scales_and_shifts_each_image_channel_by_the_tabular_features():
    widths, modalities = BLOCKS[3]
    film = _build("film", widths, modalities)
    film.eval()
    torch.nn.init.normal_(film.film.weight)
    torch.nn.init.normal_(film.film.bias)
    feats = _features(widths)
    frontal, lateral, tab = feats
    w = film.width
    raw = tab @ film.film.weight.T + film.film.bias  # (B, 2 * views * width)
    gamma = 1 + raw[:, : 2 * w].reshape(-1, 2, w)
    beta = raw[:, 2 * w :].reshape(-1, 2, w)
    views = [
        gamma[:, k] * proj(x) + beta[:, k]
        for k, (proj, x) in enumerate(zip(film.projections, (frontal, lateral), strict=True))
    ]
    expected = film.net(torch.cat([*views, tab], dim=1))
    torch.testing.assert_close(film(feats), expected)
    plain = torch.cat([film.projections[0](frontal), film.projections[1](lateral), tab], dim=1)
    assert not torch.allclose(film(feats), film.net(plain))


def test_film_without_tabular_features_is_refused_with_the_reason():
    with pytest.raises(NervusInputError, match=r"model/mixer=film needs .*tabular"):
        FiLMMixer([24, 24], ["image/frontal", "image/lateral"])
    # Built the way the model builds it: still one user error naming the choice.
    options = OmegaConf.to_container(OmegaConf.load(config_dir() + "/model/mixer/film.yaml"))
    with pytest.raises(NervusInputError, match=r"model\.mixer.*model/mixer=film needs"):
        build_component(
            "model.mixer",
            options,
            MIXERS,
            in_features=[24, 24],
            modalities=["image/frontal", "image/lateral"],
        )


@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_gates_are_per_sample_in_0_1_and_weigh_the_projected_blocks(combine):
    widths, modalities = BLOCKS[3]
    gated = _build("gated", widths, modalities, combine=combine, hidden=[])
    gated.eval()
    feats = _features(widths)
    torch.testing.assert_close(gated.gates(feats), torch.full((5, 3), 0.5))  # even mix at start
    torch.nn.init.normal_(gated.gate.weight)
    gates = gated.gates(feats)
    assert gates.shape == (5, 3)
    assert ((gates > 0) & (gates < 1)).all()
    assert not torch.allclose(gates, gates[:1].expand_as(gates))  # they differ between cases
    projected = [proj(x) for proj, x in zip(gated.projections, feats, strict=True)]
    weighted = [gates[:, i : i + 1] * p for i, p in enumerate(projected)]
    expected = sum(weighted) if combine == "sum" else torch.cat(weighted, dim=1)
    torch.testing.assert_close(gated(feats), expected)  # hidden=[]: no MLP after the combination
    assert gated.out_features == (8 if combine == "sum" else 24)


def test_gated_rejects_an_unknown_combination():
    with pytest.raises(ValueError, match="combine 'mean'"):
        GatedMixer([4, 4], combine="mean")


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_attention_ignores_token_order_but_knows_which_block_is_which(pool):
    widths, modalities = BLOCKS[3]
    attention = _build("attention", widths, modalities, pool=pool)
    attention.eval()
    feats = _features(widths)
    tokens = attention.tokens(feats)
    pooled = attention.encode(tokens)
    torch.testing.assert_close(attention.encode(tokens[:, [2, 0, 1]]), pooled)
    # Swapping the two views' features (same width) changes the result: identity is learned.
    swapped = attention([feats[1], feats[0], feats[2]])
    assert not torch.allclose(swapped, attention(feats), atol=1e-4)


def test_attention_checks_its_options():
    with pytest.raises(ValueError, match="divisible"):
        AttentionMixer([4, 4], d_model=10, heads=4)
    with pytest.raises(ValueError, match="pool 'max'"):
        AttentionMixer([4, 4], pool="max")


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_gradients_reach_every_block_and_every_parameter(name):
    widths, modalities = BLOCKS[3]
    mixer = _build(name, widths, modalities)
    feats = _features(widths, grad=True)
    (mixer(feats) ** 2).sum().backward()
    for i, x in enumerate(feats):
        assert x.grad is not None and x.grad.abs().sum() > 0, f"block {i}"
    for pname, param in mixer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_same_seed_same_mixer(name):
    widths, modalities = BLOCKS[3]
    feats = _features(widths)
    first, second = (_build(name, widths, modalities, seed=3).eval() for _ in range(2))
    torch.testing.assert_close(first(feats), second(feats), rtol=0, atol=0)
    other = _build(name, widths, modalities, seed=4).eval()
    assert not torch.allclose(first(feats), other(feats))


def test_blocks_and_names_must_agree():
    with pytest.raises(ValueError, match="2 modalities"):
        GatedMixer([4, 4, 4], ["image/a", "tabular"])
    with pytest.raises(ValueError, match="'clinical'"):
        GatedMixer([4, 4], ["image/a", "clinical"])


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_each_yaml_names_its_class_and_its_options_build(name):
    options = OmegaConf.to_container(OmegaConf.load(f"{config_dir()}/model/mixer/{name}.yaml"))
    assert options["name"] == name
    assert get_class(options["_target_"]) is MIXERS[name]
    mixer = build_component("model.mixer", options, MIXERS, in_features=[512, 64])
    assert isinstance(mixer, MIXERS[name]) and mixer.out_features == options["hidden"][-1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["film", "attention"])
def test_mixer_trains_and_its_checkpoint_predicts(dataset, tmp_path, name):
    csv = dataset()
    run = tmp_path / "run"
    cfg = compose_config([f"data.csv={csv}", *FAST, f"model/mixer={name}"])
    train(train_settings(cfg), run)
    best = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    module = NervusModule.load_from_checkpoint(best, map_location="cpu")
    assert type(module.net.mixer) is MIXERS[name]
    pred = pd.read_csv(run / "predictions.csv")
    assert np.isfinite(pred.prob_label_cls_yes).all()


def test_gated_mixer_from_the_command_line(dataset, tmp_path):
    """The user's command: ``python -m nervus_lightning model/mixer=gated`` on images + table."""
    csv = dataset()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nervus_lightning",
            f"data.csv={csv}",
            "model/mixer=gated",
            "model.mixer.combine=concat",
            "hydra.run.dir=run",
            *FAST,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert config.model.mixer.name == "gated" and config.model.mixer.combine == "concat"
    metrics = json.loads((run / "metrics.json").read_text())
    pred = pd.read_csv(run / "predictions.csv")
    test = pred[pred.split == "test"]
    assert metrics["test"]["label_cls"]["auroc"] == pytest.approx(
        roc_auc_score(test.label_cls == "yes", test.prob_label_cls_yes)
    )


@pytest.mark.slow
def test_gated_mixer_on_the_demo_data_from_the_command_line(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nervus_lightning",
            "model/mixer=gated",
            "data.labels=[label_parity]",
            f"data.demo_root={tmp_path / 'demo'}",
            "hydra.run.dir=run",
            *FAST,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["label_parity"]["auroc"] > 0.7  # the images carry parity


# -- benchmarks/fusion.py, so that it never goes stale --------------------------------------------
FUSION = Path(__file__).resolve().parents[1] / "benchmarks" / "fusion.py"


@pytest.fixture
def fusion(monkeypatch, tmp_path):
    """The benchmark module, its demo replaced by 40 tiny cases with the demo's columns."""
    spec = importlib.util.spec_from_file_location("fusion_benchmark", FUSION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        odd = i % 2
        rel = f"images/demo_{i:04d}.png"
        write_png(tmp_path / "demo" / rel, np.full((8, 8), 60 + 120 * odd, np.uint8))
        rows.append(
            {
                "uniqID": f"demo_{i:04d}",
                "imgpath": rel,
                "input_age": rng.normal(60, 12),
                "input_sex": i % 3 % 2,
                "input_marker": rng.normal(),
                "label_parity": "odd" if odd else "even",
                "split": ["train", "train", "val", "test"][i // 2 % 4],
            }
        )
    demo_csv = tmp_path / "demo" / "demo.csv"
    pd.DataFrame(rows).to_csv(demo_csv, index=False)
    monkeypatch.setattr(module, "build_demo_dataset", lambda root=None: demo_csv)
    return module


def test_fusion_benchmark_label_needs_both_inputs(fusion, tmp_path):
    frame = pd.read_csv(fusion.fusion_csv(tmp_path))
    expected = (frame.label_parity == "odd") & (frame.input_marker > 0)
    assert list(frame.label_both == "yes") == list(expected)
    assert 0 < expected.sum() < len(frame)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in frame.imgpath)


@pytest.mark.slow
def test_fusion_benchmark_runs(fusion, tmp_path, capsys):
    out = tmp_path / "fusion.csv"
    args = ["--mixers", "concat", "film", "--seeds", "0", "--epochs", "1", "--image-size", "8"]
    results = fusion.main([*args, "--batch-size", "8", "--csv", str(out)])
    assert list(results.mixer) == ["concat", "film"]
    assert pd.read_csv(out).shape == results.shape
    assert results.filter(like="auroc").stack().between(0, 1).all()
    assert "| film |" in capsys.readouterr().out
