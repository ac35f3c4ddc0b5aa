"""CSV validation: every bad input gets one clear NervusInputError before any training."""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.preprocessing import StandardScaler

from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.schema import NervusInputError, load_table, validate_for_prediction
from nervus_lightning.models.tabular import TabularMLP
from nervus_lightning.tasks import ClassificationTask


def _edit(csv, fn):
    df = pd.read_csv(csv, dtype=str)
    df = fn(df)
    df.to_csv(csv, index=False)
    return csv


def _error(csv, task="classification", **kwargs) -> str:
    with pytest.raises(NervusInputError) as info:
        NervusDataModule(csv, task=task, **kwargs)
    return str(info.value)


def test_valid_csv_builds_schema(dataset):
    csv = dataset(group=True)
    frame, schema = load_table(csv, task=ClassificationTask)
    assert [s.name for s in schema.labels] == ["label_cls", "label_three"]
    assert schema.labels[0].classes == ["no", "yes"]
    assert schema.input_columns == ["input_a", "input_b"]
    assert schema.image_column == "imgpath" and schema.group_column == "group"
    train = frame[frame.split == "train"]["input_b"].astype(float)
    assert schema.input_mean[1] == pytest.approx(train.mean())
    assert schema.input_std[1] == pytest.approx(train.std(ddof=0))


def test_scaler_uses_training_rows_only(dataset):
    csv = _edit(
        dataset(images=False),
        lambda d: d.assign(
            input_b=[
                1000.0 if s != "train" else float(v)
                for s, v in zip(d.split, d.input_b, strict=True)
            ]
        ),
    )
    frame, schema = load_table(csv, task=ClassificationTask)
    # The statistics of scikit-learn's StandardScaler fitted on the training rows alone.
    train = pd.read_csv(csv).query("split == 'train'")[["input_a", "input_b"]]
    scaler = StandardScaler().fit(train.to_numpy())
    assert schema.input_columns == ["input_a", "input_b"]
    np.testing.assert_allclose(schema.input_mean, scaler.mean_, rtol=1e-12)
    np.testing.assert_allclose(schema.input_std, scaler.scale_, rtol=1e-12)


def test_an_input_constant_in_training_is_named_and_ignored(dataset):
    """One value on every training row: nothing to learn from it, so the model standardises it
    to 0 everywhere; another value in a validation or test row (a site absent from training)
    must not reach weights that never trained. Other inputs and older checkpoints (sd 1 there)
    are standardised as before."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when every input varies in training
        load_table(dataset(images=False), task=ClassificationTask)
    csv = _edit(
        dataset(images=False),
        lambda d: d.assign(
            input_b=["3" if s == "train" else str(i) for i, s in enumerate(d.split)]
        ),
    )
    with pytest.warns(
        UserWarning, match=r"'input_b' \(3 on every training row, other values at line"
    ):
        frame, schema = load_table(csv, task=ClassificationTask)
    assert schema.input_std[1] == 0.0 and schema.input_mean[1] == 3.0
    raw = torch.tensor(frame[["input_a", "input_b"]].to_numpy(float), dtype=torch.float32)
    assert (raw[:, 1] != 3).any()
    tabular = TabularMLP(schema.input_mean, schema.input_std, hidden=[4])
    standard = tabular.standardise(raw)
    assert (standard[:, 1] == 0).all()
    mean, std = schema.input_mean[0], schema.input_std[0]
    assert torch.equal(standard[:, 0], (raw[:, 0] - mean) / torch.tensor(std))
    before = TabularMLP(schema.input_mean, [std, 1.0], hidden=[4]).standardise(raw)
    assert torch.equal(before[:, 1], raw[:, 1] - 3.0)
    # Predicting on rows that give it another value: the model ignores it there too, and says
    # so, naming the lines; rows with the training value, or an older schema (sd 1), say nothing.
    external = csv.parent / "external.csv"
    rows = pd.DataFrame({"uniqID": ["e1", "e2", "e3"], "input_a": [0.1, 0.2, 0.3]})
    rows.assign(input_b=[3.0, 3.0, 3.0]).to_csv(external, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_for_prediction(external, schema, ClassificationTask)
    rows.assign(input_b=[3.0, 7.0, 3.0]).to_csv(external, index=False)
    with pytest.warns(UserWarning, match=r"'input_b' \(3 in training; other values at line 3\)"):
        validate_for_prediction(external, schema, ClassificationTask)
    older = dataclasses.replace(schema, input_std=[std, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_for_prediction(external, older, ClassificationTask)


def test_missing_file(tmp_path):
    msg = _error(tmp_path / "nope.csv")
    assert "nope.csv" in msg and "not found" in msg


def test_broken_csv(tmp_path):
    csv = tmp_path / "broken.csv"
    csv.write_text('uniqID,label_a,split\n1,"x,train\n2,y,train,extra,fields\n')
    assert "broken.csv" in _error(csv)


def test_missing_required_columns(dataset):
    csv = dataset()
    _edit(csv, lambda d: d.drop(columns=["split"]))
    assert "'split'" in _error(csv)
    csv = dataset()
    _edit(csv, lambda d: d.drop(columns=["uniqID"]))
    assert "'uniqID'" in _error(csv)


def test_no_label_column(dataset):
    csv = _edit(dataset(), lambda d: d.drop(columns=["label_cls", "label_three"]))
    assert "no label column" in _error(csv)


def test_duplicate_ids_name_lines(dataset):
    csv = _edit(dataset(), lambda d: d.assign(uniqID=["dup"] * 2 + list(d.uniqID[2:])))
    msg = _error(csv)
    assert "'dup'" in msg and "lines 2, 3" in msg


def test_invalid_split_suggests_closest(dataset):
    csv = _edit(dataset(), lambda d: d.assign(split=["tarin"] + list(d.split[1:])))
    msg = _error(csv)
    assert "'tarin'" in msg and "Did you mean 'train'" in msg and "line 2" in msg


def test_external_and_exclude_splits_are_valid(dataset):
    csv = dataset(extra_splits={"exclude": 2, "external_siteb": 3})
    dm = NervusDataModule(csv, task="classification")
    assert "exclude" not in set(dm.frame.split)
    assert "external_siteb" in dm.split_names()


def test_no_training_rows(dataset):
    csv = _edit(dataset(), lambda d: d.assign(split=["test"] * len(d)))
    assert "no training rows" in _error(csv)


def test_one_class_in_training_split(dataset):
    csv = _edit(
        dataset(),
        lambda d: d.assign(
            label_cls=[
                "yes" if s == "train" else v for s, v in zip(d.split, d.label_cls, strict=True)
            ]
        ),
    )
    msg = _error(csv)
    assert "label_cls" in msg and "only one class" in msg


def test_unseen_class_outside_training(dataset):
    csv = dataset()
    df = pd.read_csv(csv, dtype=str)
    row = df.index[df.split == "test"][0]
    df.loc[row, "label_cls"] = "maybe"
    df.to_csv(csv, index=False)
    msg = _error(csv)
    assert "'maybe'" in msg and f"line {row + 2}" in msg


def test_number_read_as_classes_is_one_short_message(dataset):
    # The demo CSV as one's own: a measurement (label_value) taken for ~1,000 classes used to stop
    # with a 15,000-character list of "classes" never seen in training.
    csv = dataset(images=False, n=400)
    values = np.round(np.random.default_rng(1).normal(5, 2, 400), 3)
    _edit(csv, lambda d: d.drop(columns="label_three").assign(label_value=values))
    msg = _error(csv, use_images=False)
    train_values = len(set(values[:200]))
    assert len(msg) < 400, msg
    assert f"label 'label_value' has {train_values} distinct values in 200 training cases" in msg
    assert f"(e.g. {values[0]}, {values[1]}, {values[2]}, ...)" in msg
    assert "task=regression data.labels=[label_value]" in msg
    assert "leave it out with data.labels=[label_cls]" in msg


def test_ids_read_as_classes_are_refused_without_regression_hint(dataset):
    csv = _edit(
        dataset(images=False, n=120),
        lambda d: d.drop(columns="label_three").assign(label_code=[f"c{i}" for i in range(120)]),
    )
    msg = _error(csv, use_images=False)
    assert "label 'label_code' has 60 distinct values in 60 training cases" in msg
    assert "too many to be classes" in msg and "regression" not in msg


def test_many_classes_with_cases_enough_are_classes(dataset):
    # 25 classes of 60 training cases (more than 2 each on average): a real many-class problem.
    csv = _edit(
        dataset(images=False, n=120),
        lambda d: d.assign(label_three=[f"k{i % 25}" for i in range(120)]),
    )
    _, schema = load_table(csv, task=ClassificationTask, use_images=False)
    assert len(schema.labels[1].classes) == 25


def test_nan_label_in_training_split(dataset):
    csv = dataset()
    df = pd.read_csv(csv, dtype=str)
    df.loc[3, "label_cls"] = None
    df.to_csv(csv, index=False)
    msg = _error(csv)
    assert "label_cls" in msg and "missing" in msg and "line 5" in msg


def test_non_numeric_input(dataset):
    csv = dataset()
    df = pd.read_csv(csv, dtype=str)
    df.loc[[4, 9], "input_a"] = "high"
    df.to_csv(csv, index=False)
    msg = _error(csv)
    assert "input_a" in msg and "'high'" in msg and "lines 6, 11" in msg


def test_nan_input(dataset):
    csv = dataset()
    df = pd.read_csv(csv, dtype=str)
    df.loc[7, "input_b"] = None
    df.to_csv(csv, index=False)
    msg = _error(csv)
    assert "input_b" in msg and "line 9" in msg


def test_missing_and_corrupt_images_listed_together(dataset, tmp_path):
    csv = dataset()
    (tmp_path / "img/case001.png").unlink()
    (tmp_path / "img/case005.png").write_bytes(b"not an image at all")
    msg = _error(csv)
    assert "2 image file(s)" in msg
    assert "case001.png" in msg and "case005.png" in msg
    assert re.search(r"CSV line 3: .*case001\.png", msg)


def test_image_named_on_several_lines_is_reported_with_each_line(dataset, tmp_path):
    # Lines 3 and 9 name the same missing file, line 12 another one: each line is reported, not
    # the last line of a path for every occurrence.
    csv = _edit(
        dataset(),
        lambda d: d.assign(
            imgpath=[
                "img/gone.png" if i in (1, 7) else "img/lost.png" if i == 10 else p
                for i, p in enumerate(d.imgpath)
            ]
        ),
    )
    msg = _error(csv)
    assert re.search(r"\n  CSV lines 3, 9: \S*img/gone\.png: ", msg), msg
    assert re.search(r"\n  CSV line 12: \S*img/lost\.png: ", msg), msg
    assert "2 image file(s) in column 'imgpath', named on 3 CSV line(s)" in msg


def test_lines_count_the_excluded_rows_above(dataset, tmp_path):
    # Excluded rows are dropped before the checks; the lines named are still the CSV's own.
    csv = dataset()
    schema = NervusDataModule(csv, task="classification").schema

    def edit(d):
        d.loc[[0, 2], "split"] = "exclude"
        d.loc[5, "imgpath"] = "img/gone.png"  # CSV line 7
        return d

    _edit(csv, edit)
    assert re.search(r"\n  CSV line 7: \S*img/gone\.png: ", _error(csv))
    assert re.search(r"\n  CSV line 7: \S*img/gone\.png: ", _error(csv, schema=schema))
    _edit(csv, lambda d: d.assign(input_b=[None if i == 8 else v for i, v in enumerate(d.input_b)]))
    assert "input_b" in (msg := _error(csv)) and "at line 10." in msg


def test_many_bad_images_are_listed_up_to_five(dataset, tmp_path):
    csv = dataset()
    for i in range(8):
        (tmp_path / f"img/case{i:03d}.png").unlink()
    msg = _error(csv)
    assert msg.count("\n  CSV line ") == 5 and "... and 3 more file(s)" in msg


def test_images_off_ignores_imgpath(dataset, tmp_path):
    csv = dataset()
    (tmp_path / "img/case001.png").unlink()
    dm = NervusDataModule(csv, task="classification", use_images=False)
    assert dm.schema.image_column is None
    batch = next(iter(dm.predict_dataloader()))
    assert "image" not in batch and batch["tabular"].shape[1] == 2


def test_no_inputs_at_all(dataset):
    csv = dataset(images=False)
    msg = _error(csv, use_tabular=False)
    assert "no input" in msg


def test_regression_target_non_numeric(dataset):
    csv = _edit(
        dataset(task="regression"),
        lambda d: d.assign(label_value=["n/a-ish"] + list(d.label_value[1:])),
    )
    assert "label_value" in _error(csv, task="regression")


def test_bad_config_values(dataset):
    csv = dataset()
    assert "in_channels" in _error(csv, in_channels=2)
    assert "sampler" in _error(csv, sampler="balanced")
    assert "weighted" in _error(dataset(task="regression"), task="regression", sampler="weighted")


def test_classes_sorted_numerically_when_numbers(dataset):
    csv = _edit(
        dataset(), lambda d: d.assign(label_three=[["2", "10", "1"][i % 3] for i in range(len(d))])
    )
    _, schema = load_table(csv, task=ClassificationTask)
    assert schema.labels[1].classes == ["1", "2", "10"]


def test_label_names_do_not_collide_by_substring(dataset):
    csv = _edit(dataset(), lambda d: d.assign(label_clsx=d.label_cls))
    _, schema = load_table(csv, task=ClassificationTask, labels=["label_cls"])
    assert [s.name for s in schema.labels] == ["label_cls"]


@pytest.mark.parametrize("workers", [0, 2])
def test_image_failing_to_decode_later_names_its_file(dataset, tmp_path, workers):
    from nervus_lightning.data.images import ImageReadError

    csv = dataset()
    dm = NervusDataModule(csv, task="classification", num_workers=workers, batch_size=8)
    broken = tmp_path / "img" / "case000.png"
    broken.write_bytes(broken.read_bytes()[:60])  # header intact, pixels truncated
    with pytest.raises(ImageReadError) as info:
        for _ in dm.predict_dataloader():
            pass
    assert "case000.png" in str(info.value) and "Traceback" not in str(info.value)
    assert isinstance(info.value, NervusInputError)
