"""Tests for nervus_lightning.data.demo: the embedded demo data set built from sklearn digits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LinearRegression
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_censored
from sksurv.util import Surv

from nervus_lightning import NervusDataModule
from nervus_lightning.data import demo
from nervus_lightning.data.demo import build_demo_dataset
from nervus_lightning.data.images import read_image

COLUMNS = [
    "uniqID",
    "imgpath",
    "input_age",
    "input_sex",
    "input_marker",
    "label_parity",
    "label_size",
    "label_value",
    "label_death",
    "period_death",
    "true_loghazard_death",
    "split",
    "group",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    csv = build_demo_dataset(root, seed=0)
    return root, csv, pd.read_csv(csv)


@pytest.fixture(scope="module")
def digits():
    return load_digits().target


def test_layout_and_columns(built):
    root, csv, table = built
    assert csv == root / f"demo_v{demo.DEMO_VERSION}" / "seed_0" / "demo.csv"
    assert list(table.columns) == COLUMNS
    assert len(table) == 1797
    assert table["uniqID"].is_unique
    assert table["uniqID"].iloc[0] == "demo_0000"
    assert not table.isna().any().any()
    # no staging folder left behind
    assert [p.name for p in (root / f"demo_v{demo.DEMO_VERSION}").iterdir()] == ["seed_0"]


def test_labels_follow_the_digit(built, digits):
    _, _, table = built
    expected_parity = np.where(digits % 2 == 0, "even", "odd")
    np.testing.assert_array_equal(table["label_parity"], expected_parity)
    expected_size = np.select([digits <= 3, digits <= 6], ["small", "medium"], "large")
    np.testing.assert_array_equal(table["label_size"], expected_size)
    assert set(table["input_sex"]) == {0, 1}
    assert set(table["group"]) == {"site_a", "site_b"}


def test_regression_target_uses_digit_and_marker(built, digits):
    _, _, table = built
    features = np.column_stack([digits, table["input_marker"]])
    fit = LinearRegression().fit(features, table["label_value"])
    np.testing.assert_allclose(fit.coef_, [1.0, 1.5], atol=0.05)
    residual = table["label_value"] - fit.predict(features)
    assert residual.std() == pytest.approx(0.5, abs=0.05)


def test_survival_target_follows_the_cox_model(built, digits):
    _, _, table = built
    assert (table["period_death"] > 0).all()
    assert set(table["label_death"]) == {0, 1}
    assert 1 - table["label_death"].mean() == pytest.approx(0.30, abs=0.04)
    outcome = Surv.from_arrays(table["label_death"].astype(bool), table["period_death"])
    features = np.column_stack([digits, table["input_age"] / 10.0])
    cox = CoxPHSurvivalAnalysis().fit(features, outcome)
    # true log hazard ratios 0.25 per digit and 0.4 per 10 years (about 4 standard errors here)
    assert cox.coef_[0] == pytest.approx(0.25, abs=0.05)
    assert cox.coef_[1] == pytest.approx(0.4, abs=0.1)


def test_true_log_hazard_follows_its_formula(built, digits):
    _, _, table = built
    expected = (
        np.log(np.log(2.0) / 5.0) + 0.25 * (digits - 4.5) + 0.4 * (table["input_age"] - 60) / 10
    )
    np.testing.assert_allclose(table["true_loghazard_death"], expected, rtol=0, atol=1e-6)
    # It is the risk that generated the times: a Cox fit on it alone has a slope near 1, and no
    # fit on digit and age orders the cases better (Harrell C from scikit-survival).
    outcome = Surv.from_arrays(table["label_death"].astype(bool), table["period_death"])
    cox = CoxPHSurvivalAnalysis().fit(table[["true_loghazard_death"]], outcome)
    assert cox.coef_[0] == pytest.approx(1.0, abs=0.1)
    event, time = outcome["event"], outcome["time"]
    true_c = concordance_index_censored(event, time, table["true_loghazard_death"])[0]
    assert true_c > concordance_index_censored(event, time, digits.astype(float))[0] + 0.01
    assert true_c > concordance_index_censored(event, time, table["input_age"])[0] + 0.05


def test_true_log_hazard_is_not_fed_to_the_model(built):
    _, csv, _ = built
    datamodule = NervusDataModule(csv, task="survival", labels=["label_death"], image_size=16)
    datamodule.setup("fit")
    schema = datamodule.schema
    assert schema.input_columns == ["input_age", "input_sex", "input_marker"]
    assert [spec.name for spec in schema.labels] == ["label_death"]
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["tabular"].shape[1] == 3


def test_split_proportions_and_stratification(built, digits):
    _, _, table = built
    shares = table["split"].value_counts(normalize=True)
    expected = {"train": 0.6, "val": 0.2, "test": 0.1, "external": 0.1}
    assert set(shares.index) == set(expected)
    for name, share in expected.items():
        assert shares[name] == pytest.approx(share, abs=0.01)
    per_digit = pd.crosstab(digits, table["split"])
    assert (per_digit > 0).all().all()


def test_every_image_exists_and_matches_the_digit(built):
    _, csv, table = built
    paths = [csv.parent / p for p in table["imgpath"]]
    assert not any(str(p).startswith("/") for p in table["imgpath"])  # relative paths
    assert all(p.is_file() for p in paths)
    modes = [Image.open(p).mode for p in paths]
    assert set(modes) == {"L", "I;16"}
    assert modes.count("I;16") == 1797 // 3
    upscaled = torch.nn.functional.interpolate(
        torch.from_numpy(load_digits().images[:, None] / 16.0).float(),
        size=(32, 32),
        mode="bilinear",
        align_corners=False,
    )
    for index in [i for i, m in enumerate(modes) if m == "I;16"][:5] + [
        i for i, m in enumerate(modes) if m == "L"
    ][:5]:
        image = read_image(paths[index], in_channels=1)
        tolerance = 0.5 / 255 + 1e-6 if modes[index] == "L" else 0.5 / 65535 + 1e-6
        np.testing.assert_allclose(image.numpy(), upscaled[index].numpy(), atol=tolerance)


def test_deterministic_for_a_seed(built, tmp_path):
    _, csv, _ = built
    again = build_demo_dataset(tmp_path / "other", seed=0)
    assert again.read_bytes() == csv.read_bytes()
    for name in ["demo_0000.png", "demo_0777.png", "demo_1796.png"]:
        assert (again.parent / "images" / name).read_bytes() == (
            csv.parent / "images" / name
        ).read_bytes()
    different = build_demo_dataset(tmp_path / "other", seed=1)
    assert different.parent.name == "seed_1"
    assert different.read_bytes() != csv.read_bytes()


def test_reuse_does_not_rebuild(built, monkeypatch):
    root, csv, _ = built

    def fail(*args, **kwargs):
        raise AssertionError("the complete data set was rebuilt")

    monkeypatch.setattr(demo, "_write_dataset", fail)
    assert build_demo_dataset(root, seed=0) == csv


def test_incomplete_build_is_replaced(tmp_path):
    csv = build_demo_dataset(tmp_path, seed=0)
    reference = csv.read_bytes()
    (csv.parent / "images" / "demo_0005.png").unlink()
    rebuilt = build_demo_dataset(tmp_path, seed=0)
    assert rebuilt == csv
    assert (csv.parent / "images" / "demo_0005.png").is_file()
    assert rebuilt.read_bytes() == reference
    assert sorted(p.name for p in (tmp_path / f"demo_v{demo.DEMO_VERSION}").iterdir()) == ["seed_0"]


def test_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NERVUS_LIGHTNING_CACHE", str(tmp_path / "env_cache"))
    assert demo.default_cache_root() == tmp_path / "env_cache"
    monkeypatch.delenv("NERVUS_LIGHTNING_CACHE")
    assert demo.default_cache_root().parts[-2:] == (".cache", "nervus_lightning")
