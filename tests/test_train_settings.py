"""TrainSettings: the plain values the training workflow reads, built from a plain config."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
from conftest import FAST, compose_config, make_dataset
from omegaconf import OmegaConf

from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.sources import resolve_data
from nervus_lightning.workflows.settings import MISSING, DataSettings, TrainSettings


def _plain(overrides: list[str]) -> dict:
    """The composed config as JSON-able builtins only (what a Python user may write by hand)."""
    cfg = compose_config(overrides)
    return json.loads(json.dumps(OmegaConf.to_container(cfg, resolve=True)))


def test_from_config_reads_every_group():
    config = _plain(
        [
            "data.csv=trial.csv",
            "task=survival",
            "model/extractor=none",
            "checkpoint.every_n_train_steps=50",
            "explain.after_training=true",
            "ckpt_path=last.ckpt",
            "seed=7",
            "model.ensemble=3",
        ]
    )
    settings = TrainSettings.from_config(config)
    assert settings.data.csv == "trial.csv" and not settings.data.is_demo
    assert settings.data.image_size == config["data"]["image_size"]
    assert settings.task["name"] == "survival" and settings.extractor["name"] == "none"
    assert settings.tabular == config["model"]["tabular"]
    assert settings.optimizer == config["optimizer"] and settings.trainer == config["trainer"]
    assert settings.augmentation == "none" and settings.sampler == "none"
    assert (settings.checkpoint_policy, settings.every_n_train_steps) == ("best", 50)
    assert settings.explain["after_training"] is True
    assert (settings.seed, settings.ckpt_path, settings.ensemble) == (7, "last.ckpt", 3)
    assert settings.evaluation == config["evaluation"]
    assert settings.run_config == config  # what every checkpoint records


def test_the_command_lines_conversion_equals_a_plain_dicts():
    overrides = [*FAST, "task=regression"]
    assert train_settings(compose_config(overrides)) == TrainSettings.from_config(_plain(overrides))


def test_a_value_never_set_is_absent():
    """``data=csv`` leaves ``data.csv: ???``: absent for the run, recorded as written."""
    config = _plain(["data=csv"])
    assert config["data"]["csv"] == MISSING
    settings = TrainSettings.from_config(config)
    assert settings.data.csv is None and settings.data.is_demo
    assert settings.run_config["data"]["csv"] == MISSING


def test_settings_are_frozen_and_training_leaves_them_as_given(tmp_path):
    from nervus_lightning.workflows.train import build_datamodule, build_module

    csv = make_dataset(tmp_path, n=16, images=False)
    settings = TrainSettings.from_config(_plain([f"data.csv={csv}", *FAST, "model/extractor=none"]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 1  # type: ignore[misc]
    before = copy.deepcopy(settings)
    datamodule = build_datamodule(settings)
    module = build_module(settings, datamodule.schema)
    module.hparams["run_config"]["seed"] = -1
    assert settings == before


def test_resolve_data_takes_plain_values(tmp_path):
    assert resolve_data("a.csv", ["label_x"]) == ("a.csv", ["label_x"], False)
    csv, labels, demo = resolve_data(None, demo_root=tmp_path, demo_labels=["label_parity"])
    assert demo and labels == ["label_parity"] and csv.is_file()
    data = DataSettings(demo_root=str(tmp_path))
    assert data.is_demo and DataSettings(csv="a.csv").is_demo is False
