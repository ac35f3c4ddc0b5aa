"""Preset clinical survival CSVs: schema, leakage, imputation, deterministic stratified split."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from sksurv.datasets import load_flchain, load_gbsg2, load_whas500

from nervus_lightning.survival import presets
from nervus_lightning.survival.presets import (
    PRESETS,
    preset_endpoint,
    preset_frame,
    write_preset_csv,
)

LOADERS = {"whas500": load_whas500, "gbsg2": load_gbsg2, "flchain": load_flchain}


@pytest.fixture(scope="module", params=PRESETS)
def preset(request, tmp_path_factory):
    name = request.param
    path = write_preset_csv(name, tmp_path_factory.mktemp(name) / f"{name}.csv", seed=0)
    return name, path, pd.read_csv(path)


def test_schema_and_no_missing(preset):
    name, _, frame = preset
    endpoint = preset_endpoint(name)
    assert frame.columns[0] == "uniqID" and frame["uniqID"].is_unique
    assert list(frame.columns[-3:]) == [f"label_{endpoint}", f"period_{endpoint}", "split"]
    inputs = [c for c in frame.columns if c.startswith("input_")]
    assert len(inputs) == frame.shape[1] - 4
    assert not frame.isna().any().any()
    assert all(pd.api.types.is_numeric_dtype(frame[c]) for c in inputs)
    assert set(frame[f"label_{endpoint}"].unique()) == {0, 1}
    assert (frame[f"period_{endpoint}"] >= 0).all()
    assert set(frame["split"]) == {"train", "val", "test"}

    features, outcome = LOADERS[name]()
    assert frame.shape[0] == features.shape[0]
    event_field, time_field = outcome.dtype.names
    np.testing.assert_array_equal(frame[f"label_{endpoint}"], outcome[event_field].astype(int))
    np.testing.assert_allclose(frame[f"period_{endpoint}"], outcome[time_field])


def test_split_proportions_and_event_balance(preset):
    name, _, frame = preset
    event = frame[f"label_{preset_endpoint(name)}"]
    for value in (0, 1):
        counts = frame.loc[event == value, "split"].value_counts()
        n = counts.sum()
        assert abs(counts["train"] - 0.6 * n) <= 1
        assert abs(counts["val"] - 0.2 * n) <= 1
        assert abs(counts["test"] - 0.2 * n) <= 1
    rates = event.groupby(frame["split"]).mean()
    assert rates.max() - rates.min() < 0.02


def test_deterministic_and_seed_dependent(preset, tmp_path):
    name, path, _ = preset
    again = write_preset_csv(name, tmp_path / "again.csv", seed=0)
    assert again.read_bytes() == path.read_bytes()
    other = preset_frame(name, seed=1)
    assert not np.array_equal(other["split"].to_numpy(), pd.read_csv(path)["split"].to_numpy())


def test_categoricals_one_hot_without_reference_level():
    frame = preset_frame("gbsg2")
    features, _ = load_gbsg2()
    assert "input_tgrade_I" not in frame
    np.testing.assert_array_equal(
        frame["input_tgrade_II"], (features["tgrade"] == "II").astype(int)
    )
    np.testing.assert_array_equal(
        frame["input_tgrade_III"], (features["tgrade"] == "III").astype(int)
    )
    np.testing.assert_array_equal(
        frame["input_horTh_yes"], (features["horTh"] == "yes").astype(int)
    )
    np.testing.assert_allclose(frame["input_age"], features["age"])


def test_flchain_leak_dropped_and_imputed_from_train_median():
    frame = preset_frame("flchain", seed=0)
    assert not any("chapter" in column for column in frame.columns)
    assert {"input_flc_grp_10", "input_sample_yr_2003", "input_sex_M"} <= set(frame.columns)

    features, _ = load_flchain()
    creatinine = features["creatinine"].to_numpy()
    missing = np.isnan(creatinine)
    assert missing.any()
    np.testing.assert_array_equal(frame["input_creatinine_missing"], missing.astype(int))
    train = (frame["split"] == "train").to_numpy()
    np.testing.assert_allclose(
        frame.loc[missing, "input_creatinine"], np.median(creatinine[train & ~missing])
    )
    np.testing.assert_allclose(frame.loc[~missing, "input_creatinine"], creatinine[~missing])


def test_imputation_ignores_val_and_test_values(monkeypatch):
    reference = preset_frame("flchain", seed=0)
    not_train = (reference["split"] != "train").to_numpy()

    def shifted_loader():
        features, outcome = load_flchain()
        features.loc[not_train, "creatinine"] *= 100.0
        return features, outcome

    original = presets._PRESETS["flchain"]
    monkeypatch.setitem(
        presets._PRESETS, "flchain", dataclasses.replace(original, loader=shifted_loader)
    )
    shifted = preset_frame("flchain", seed=0)
    imputed = reference["input_creatinine_missing"].to_numpy() == 1
    np.testing.assert_array_equal(shifted["split"], reference["split"])
    np.testing.assert_allclose(
        shifted.loc[imputed, "input_creatinine"], reference.loc[imputed, "input_creatinine"]
    )
    assert not np.allclose(shifted["input_creatinine"], reference["input_creatinine"])


def test_unknown_preset():
    with pytest.raises(ValueError, match="whas500"):
        preset_frame("metabric")
