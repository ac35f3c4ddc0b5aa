"""What may leave the hospital holds no training patient's value (docs/privacy.md, and DESIGN's
privacy rule): every checkpoint of a run, its ``schema.json`` and the
export contract are scanned, number by number, for training follow-up times, input values and
regression labels.

The scan (:func:`find_patient_values`) fails on *any* subset of :data:`MIN_LEAK` or more distinct
stored values that equal patients' values: a sorted list of the censored patients' times is as
much a leak as the whole time vector. The training times here have two decimals, as real data
do, and the stored grids are rounded to a coarse step, so a stored time can equal a patient's
time only by the coincidence of rounding, a handful of times at most.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config, make_dataset

from nervus_lightning.cli.train import train_settings
from nervus_lightning.module import NervusModule
from nervus_lightning.workflows.export import deployment_contract
from nervus_lightning.workflows.train import train

#: A leak is this many distinct stored values equal to patients' values, in one array (or among
#: the scalars of one file).
MIN_LEAK = 10

QUICK = [
    "model/extractor=none",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.num_workers=0",
    "evaluation.n_bootstrap=0",
]


# --- the scan ---------------------------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool | np.bool_)


def _real(value: Any) -> bool:
    """A stored real number: integers (counters, indices, random-number-generator states) can
    hold no patient's value that an integer-valued input would not match by chance."""
    return isinstance(value, float | np.floating)


def numeric_arrays(obj: Any, where: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """Every floating-point tensor or array, and every list of real numbers, anywhere inside
    ``obj`` (dicts, lists, OmegaConf / AttributeDict hyper-parameters), flattened; single
    numbers are collected by :func:`scalar_numbers`."""
    if isinstance(obj, torch.Tensor):
        if obj.dim() > 0 and obj.is_floating_point():
            yield where, obj.detach().cpu().double().reshape(-1).numpy()
    elif isinstance(obj, np.ndarray):
        if obj.ndim > 0 and obj.dtype.kind == "f":
            yield where, obj.astype(np.float64).reshape(-1)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from numeric_arrays(value, f"{where}/{key}")
    elif isinstance(obj, list | tuple):
        if obj and all(_number(v) for v in obj):
            reals = [v for v in obj if _real(v)]
            if reals:
                yield where, np.asarray(reals, dtype=np.float64)
        else:
            for k, value in enumerate(obj):
                yield from numeric_arrays(value, f"{where}[{k}]")
    elif hasattr(obj, "items"):
        yield from numeric_arrays(dict(obj.items()), where)


def scalar_numbers(obj: Any) -> list[float]:
    """Every single real number inside ``obj`` (0-d tensors included), outside the arrays."""
    if isinstance(obj, torch.Tensor):
        return [float(obj)] if obj.dim() == 0 and obj.is_floating_point() else []
    if _real(obj):
        return [float(obj)]
    if isinstance(obj, dict) or (hasattr(obj, "items") and not isinstance(obj, str)):
        return [x for value in dict(obj.items()).values() for x in scalar_numbers(value)]
    if isinstance(obj, list | tuple) and not (obj and all(_number(v) for v in obj)):
        return [x for value in obj for x in scalar_numbers(value)]
    return []


def _keys(values: np.ndarray) -> set[str]:
    """Values as float32 then 6 significant digits: a stored float32 copy of a patient's value
    matches it."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)].astype(np.float32).astype(np.float64)
    return set(np.char.mod("%.6g", np.unique(values)).tolist())


def find_patient_values(
    obj: Any, patients: dict[str, np.ndarray], min_count: int = MIN_LEAK
) -> list[str]:
    """``"<where>: <n> <kind>"`` for every array in ``obj`` (and for the scalars of ``obj`` as a
    whole) that holds ``min_count`` or more distinct values equal to the patients' values of a
    kind (``patients``: kind -> values, e.g. ``{"training times": ...}``)."""
    wanted = {kind: _keys(values) for kind, values in patients.items()}
    places = list(numeric_arrays(obj)) + [("<scalars>", np.asarray(scalar_numbers(obj)))]
    found = []
    for where, values in places:
        stored = _keys(values)
        for kind, keys in wanted.items():
            hits = len(stored & keys)
            if hits >= min_count:
                found.append(f"{where}: {hits} {kind}")
    return found


def run_files(run: Path) -> dict[str, Any]:
    """What of a run may leave the site: every checkpoint (as ``torch.load(weights_only=True)``
    reads it), ``schema.json`` and the export contract of the best checkpoint (built by the
    exporter's own :func:`~nervus_lightning.workflows.export.deployment_contract`, without the ONNX
    graph, and read back from JSON)."""
    files: dict[str, Any] = {}
    checkpoints = sorted(run.rglob("*.ckpt"))
    assert checkpoints, f"no checkpoint in {run}"
    for path in checkpoints:
        files[str(path.relative_to(run))] = torch.load(path, map_location="cpu", weights_only=True)
    files["schema.json"] = json.loads((run / "schema.json").read_text())
    best = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    module = NervusModule.load_from_checkpoint(best, map_location="cpu")
    contract = deployment_contract(module, Path("model.onnx"), "onnx", 17)
    files["model.onnx.json"] = json.loads(json.dumps(contract, default=str))
    return files


def scan_run(run: Path, patients: dict[str, np.ndarray]) -> list[str]:
    """:func:`find_patient_values` of every file of :func:`run_files`, prefixed by the file."""
    return [
        f"{name}{place}"
        for name, obj in run_files(run).items()
        for place in find_patient_values(obj, patients)
    ]


# --- the scan can fail ------------------------------------------------------------------------


def test_scan_finds_a_subset_of_patient_values():
    rng = np.random.default_rng(0)
    times = np.round(rng.exponential(30, 300), 2)
    patients = {"training times": times}
    censored = np.sort(times[:12])
    for leak in (censored, censored.astype(np.float32), times):
        assert find_patient_values({"a": [{"b": torch.tensor(leak)}]}, patients)
        assert find_patient_values({"a": leak.tolist()}, patients)
    # Twelve single numbers spread over a file are a leak too.
    assert find_patient_values({f"k{i}": float(t) for i, t in enumerate(censored)}, patients)
    # Nine are tolerated (a coincidence of rounding), and so is a coarse grid.
    assert not find_patient_values({"a": censored[:9].tolist()}, patients)
    assert not find_patient_values({"a": np.linspace(0, 200, 101)}, patients)


# --- survival runs: Cox and discrete-time -----------------------------------------------------


def survival_csv(folder: Path, n: int = 240, seed: int = 0) -> Path:
    """Follow-up times with two decimals (as real data), two continuous inputs."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 1, n), rng.normal(50, 10, n)
    event_time = rng.exponential(20 * np.exp(-0.8 * a))
    censor = rng.uniform(5, 60, n)
    frame = pd.DataFrame(
        {
            "uniqID": [f"p{i:04d}" for i in range(n)],
            "input_a": a,
            "input_b": b,
            "period_death": np.round(np.maximum(np.minimum(event_time, censor), 0.01), 2),
            "label_death": (event_time <= censor).astype(int),
            "split": np.where(
                np.arange(n) % 5 < 3, "train", np.where(np.arange(n) % 5 == 3, "val", "test")
            ),
        }
    )
    csv = folder / "survival.csv"
    frame.to_csv(csv, index=False)
    return csv


def _patients(csv: Path, inputs: list[str], targets: dict[str, str]) -> dict[str, np.ndarray]:
    frame = pd.read_csv(csv)
    train_rows = frame[frame.split == "train"]
    out = {"training input values": train_rows[inputs].to_numpy(np.float64).reshape(-1)}
    for kind, column in targets.items():
        out[kind] = train_rows[column].to_numpy(np.float64)
    return out


@pytest.fixture(scope="module")
def survival_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("privacy_survival")
    csv = survival_csv(folder)
    patients = _patients(csv, ["input_a", "input_b"], {"training follow-up times": "period_death"})
    frame = pd.read_csv(csv)
    train_rows = frame[frame.split == "train"]
    patients["training censoring times"] = train_rows.period_death[train_rows.label_death == 0]
    patients["training event times"] = train_rows.period_death[train_rows.label_death != 0]
    return folder, csv, patients


@pytest.mark.parametrize("model", ["cox", "logistic_hazard"])
def test_survival_run_stores_no_patient_value(survival_data, model):
    folder, csv, patients = survival_data
    run = folder / f"run_{model}"
    cfg = compose_config(
        [f"data.csv={csv}", "task=survival", f"task.model={model}", "data.batch_size=64", *QUICK]
    )
    train(train_settings(cfg), run)
    assert scan_run(run, patients) == []


def test_competing_risk_run_stores_no_patient_value(tmp_path):
    """DeepHit with two causes: its head starts at the training Aalen-Johansen incidences on
    the grid (grid-level counts), and its stored null incidences are aggregated curves."""
    frame = pd.read_csv(survival_csv(tmp_path))
    cause = np.random.default_rng(1).integers(1, 3, len(frame))
    frame["label_death"] = np.where(frame.label_death != 0, cause, 0)
    csv = tmp_path / "competing.csv"
    frame.to_csv(csv, index=False)
    patients = _patients(csv, ["input_a", "input_b"], {"training follow-up times": "period_death"})
    cfg = compose_config(
        [f"data.csv={csv}", "task=survival", "task.model=deephit", "data.batch_size=64", *QUICK]
    )
    train(train_settings(cfg), tmp_path / "run")
    assert scan_run(tmp_path / "run", patients) == []


# --- classification and regression runs ------------------------------------------------------


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_classification_and_regression_runs_store_no_patient_value(tmp_path, task):
    csv = make_dataset(tmp_path, task=task, n=200, images=False)
    targets = {"training labels": "label_value"} if task == "regression" else {}
    patients = _patients(csv, ["input_a", "input_b"], targets)
    run = tmp_path / "run"
    cfg = compose_config([f"data.csv={csv}", f"task={task}", "data.batch_size=32", *QUICK])
    train(train_settings(cfg), run)
    assert scan_run(run, patients) == []
    # What is kept of the inputs and labels: means and standard deviations of the training rows.
    schema = json.loads((run / "schema.json").read_text())
    rows = pd.read_csv(csv).query("split == 'train'")
    np.testing.assert_allclose(schema["input_mean"], rows[["input_a", "input_b"]].mean())
    np.testing.assert_allclose(schema["input_std"], rows[["input_a", "input_b"]].std(ddof=0))
    if task == "regression":
        (label,) = schema["labels"]
        assert label["mean"] == pytest.approx(rows.label_value.mean())
        assert not {"min", "max", "median"} & set(label)
