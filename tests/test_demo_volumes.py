"""The demo's volume set (``data=demo_volumes``): built offline, reproducibly and atomically as
the 2D demo is; its labels follow their formulas; every case, whichever of its four storages
(NIfTI in three orientations, DICOM series), shows its sphere where the table says it is; and
``python -m nervus_lightning data=demo_volumes`` runs end to end."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("nibabel")
pytest.importorskip("pydicom")

from conftest import compose_config, run_command  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from nervus_lightning.data import demo_volumes  # noqa: E402
from nervus_lightning.data.demo_volumes import (  # noqa: E402
    VOLUME_DEMO_CSV_NAME,
    VOLUME_DEMO_VERSION,
    build_volume_demo,
)
from nervus_lightning.data.sources import DEMO_BUILDERS, resolve_data  # noqa: E402
from nervus_lightning.data.volume_input import (  # noqa: E402
    VolumeSettings,
    read_training_volume,
)
from nervus_lightning.errors import NervusInputError  # noqa: E402
from nervus_lightning.workflows.settings import DEMO_PRESETS, TrainSettings  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("volume_demo")
    csv = build_volume_demo(root, seed=0)
    return root, csv, pd.read_csv(csv)


def superior_half(table: pd.DataFrame) -> np.ndarray:
    """Whether each sphere lies in the superior half, solved from the true log-hazard
    ``log h0 + 1.6 * superior + 0.6 * (age - 60) / 10`` (the module docstring)."""
    rest = np.log(np.log(2.0) / 5.0) + 0.6 * (table["input_age"] - 60.0) / 10.0
    superior = (table["true_loghazard_death"] - rest) / 1.6
    np.testing.assert_allclose(superior, np.round(superior), atol=1e-4)
    return np.round(superior).astype(bool).to_numpy()


def test_layout_columns_and_storages(built):
    root, csv, table = built
    folder = root / f"demo_volumes_v{VOLUME_DEMO_VERSION}" / "seed_0"
    assert csv == folder / VOLUME_DEMO_CSV_NAME
    assert json.loads((folder / "build_info.json").read_text())["rows"] == len(table) == 300
    assert list(table.columns) == [
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
    ]
    assert table["uniqID"].is_unique
    series = [folder / p for p in table["imgpath"] if not p.endswith(".nii.gz")]
    assert 15 <= len(series) <= 50 and all(p.is_dir() for p in series)
    assert all(len(list(p.glob("*.dcm"))) == 12 for p in series)
    assert all((folder / p).is_file() for p in table["imgpath"] if p.endswith(".nii.gz"))
    assert table["split"].value_counts().to_dict() == {"train": 180, "val": 60, "test": 60}
    # The labels carry the 2D demo's names, so that each task's demo_labels pick them.
    for task in ("classification", "regression", "survival"):
        labels = compose_config([f"task={task}"]).task.demo_labels
        assert set(labels) <= set(table.columns)
    assert set(DEMO_BUILDERS) == set(DEMO_PRESETS)


def test_nifti_files_are_stored_in_three_orientations(built):
    nibabel = pytest.importorskip("nibabel")
    root, csv, table = built
    codes = {
        nibabel.aff2axcodes(nibabel.load(csv.parent / p).affine)
        for p in table["imgpath"]
        if p.endswith(".nii.gz")
    }
    assert codes == {("R", "A", "S"), ("L", "A", "I"), ("S", "R", "A")}
    zooms = {
        tuple(sorted(nibabel.load(csv.parent / p).header.get_zooms()))
        for p in table["imgpath"]
        if p.endswith(".nii.gz")
    }
    assert zooms == {(1.5, 1.5, 3.0)}  # anisotropic: 3 mm between slices


def test_labels_follow_their_formulas(built):
    _, _, table = built
    superior = superior_half(table)
    assert 0.4 < superior.mean() < 0.6
    odd = superior != table["input_sex"].astype(bool).to_numpy()
    assert (table["label_parity"] == np.where(odd, "odd", "even")).all()
    assert set(table["label_size"]) == {"small", "medium", "large"}
    # label_value = 2 * radius + 1.5 * marker + noise, and the size classes cut the radius.
    radius = (table["label_value"] - 1.5 * table["input_marker"]) / 2.0
    for size, (low, high) in {
        "small": (2.5, 3.5),
        "medium": (3.5, 5.0),
        "large": (5.0, 6.5),
    }.items():
        within = radius[table["label_size"] == size]
        assert within.between(low - 1.0, high + 1.0).all(), size  # the noise: sd 0.25 mm
        assert abs(within.median() - (low + high) / 2) < 0.3, size
    assert 0.55 < table["label_death"].mean() < 0.85  # about 30 % censored
    for split in ("train", "val", "test"):  # stratified by label_parity
        share = (table.loc[table["split"] == split, "label_parity"] == "odd").mean()
        assert abs(share - (table["label_parity"] == "odd").mean()) < 0.03


def test_every_case_shows_its_sphere_in_the_half_the_table_says(built):
    """Read as conf/data/demo_volumes.yaml reads them: every storage (three NIfTI orientations,
    DICOM series whose file names are not in slice order) puts the sphere on the same side."""
    _, csv, table = built
    config = compose_config(["data=demo_volumes"]).data
    settings = VolumeSettings(tuple(config.volume_size), tuple(config.spacing), "auto")
    superior = superior_half(table)
    for path, expected in zip(table["imgpath"], superior, strict=True):
        volume = read_training_volume(csv.parent / path, settings)[0].numpy()
        assert volume.shape == (16, 16, 16)
        brightest = np.unravel_index(np.argsort(volume, axis=None)[-5:], volume.shape)[0]
        assert (brightest.mean() > 7.5) == expected, path


def test_deterministic_for_a_seed(built, tmp_path):
    _, csv, table = built
    again = build_volume_demo(tmp_path / "other", seed=0)
    assert again.read_bytes() == csv.read_bytes()
    series = next(p for p in table["imgpath"] if not p.endswith(".nii.gz"))
    nifti = [p for p in table["imgpath"] if p.endswith(".nii.gz")][:3]
    files = [f"{series}/{f.name}" for f in (csv.parent / series).iterdir()] + nifti
    for name in files:
        assert (again.parent / name).read_bytes() == (csv.parent / name).read_bytes(), name
    different = build_volume_demo(tmp_path / "other", seed=1)
    assert different.parent.name == "seed_1"
    assert different.read_bytes() != csv.read_bytes()


def test_reuse_does_not_rebuild(built, monkeypatch):
    root, csv, _ = built

    def fail(*args, **kwargs):
        raise AssertionError("the complete data set was rebuilt")

    monkeypatch.setattr(demo_volumes, "_write_dataset", fail)
    assert build_volume_demo(root, seed=0) == csv


def test_incomplete_build_is_replaced(built, tmp_path):
    _, reference, table = built
    csv = build_volume_demo(tmp_path, seed=0)
    series = next(p for p in table["imgpath"] if not p.endswith(".nii.gz"))
    removed = sorted((csv.parent / series).iterdir())[4]
    removed.unlink()
    rebuilt = build_volume_demo(tmp_path, seed=0)
    assert rebuilt == csv and removed.is_file()
    assert rebuilt.read_bytes() == reference.read_bytes()
    assert [p.name for p in (tmp_path / f"demo_volumes_v{VOLUME_DEMO_VERSION}").iterdir()] == [
        "seed_0"
    ]


def test_a_crash_mid_build_leaves_nothing_behind(tmp_path, monkeypatch):
    written = []
    real = demo_volumes._write_nifti

    def crash_after_five(*args, **kwargs):
        if len(written) == 5:
            raise RuntimeError("disk full")
        written.append(args)
        real(*args, **kwargs)

    monkeypatch.setattr(demo_volumes, "_write_nifti", crash_after_five)
    with pytest.raises(RuntimeError, match="disk full"):
        build_volume_demo(tmp_path, seed=0)
    assert list((tmp_path / f"demo_volumes_v{VOLUME_DEMO_VERSION}").iterdir()) == []


def test_without_nibabel_one_message_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(NervusInputError, match=r"pip install .*nervus-lightning\[volumes\]"):
        build_volume_demo(tmp_path, seed=0)
    assert not (tmp_path / f"demo_volumes_v{VOLUME_DEMO_VERSION}" / "seed_0").exists()


@pytest.mark.parametrize(
    ("task", "labels"),
    [
        ("classification", ["label_parity", "label_size"]),
        ("regression", ["label_value"]),
        ("survival", ["label_death"]),
    ],
)
def test_the_data_group_picks_labels_per_task_as_the_2d_demo_does(built, task, labels):
    root, csv, _ = built
    config = compose_config(["data=demo_volumes", f"task={task}", f"data.demo_root={root}"])
    settings = TrainSettings.from_config(OmegaConf.to_container(config, resolve=True))
    assert settings.data.is_demo and settings.extractor["name"] == "small_cnn_3d"
    assert settings.data.volume_size == [16, 16, 16]
    found, chosen, demo = resolve_data(
        settings.data.csv,
        settings.data.labels,
        preset=settings.data.preset,
        demo_root=settings.data.demo_root,
        demo_labels=settings.task.get("demo_labels"),
    )
    assert (found, chosen, demo) == (csv, labels, True)
    # data.labels still wins, as with data=demo.
    assert resolve_data(None, ["label_size"], preset="demo_volumes", demo_root=root)[1] == [
        "label_size"
    ]


def test_a_csv_with_the_demo_volume_group_is_refused(tmp_path):
    out = run_command(
        "nervus_lightning", ["data=demo_volumes", "data.csv=trial.csv"], tmp_path, timeout=120
    )
    assert out.returncode == 2
    assert "data=demo_volumes is the embedded demo data" in out.stderr


def test_the_volume_demo_runs_end_to_end_from_the_command_line(built, tmp_path, monkeypatch):
    """``python -m nervus_lightning data=demo_volumes`` as a user runs it (two epochs, fewer
    bootstrap draws): a checkpoint, predictions of every case, the report's metrics."""
    root, _, table = built
    monkeypatch.setenv("NERVUS_LIGHTNING_CACHE", str(root))  # the build above is reused
    args = [
        "data=demo_volumes",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "evaluation.n_bootstrap=20",
        "hydra.run.dir=run",
    ]
    out = run_command("nervus_lightning", args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == len(table)
    schema = json.loads((run / "schema.json").read_text())
    assert schema["volume"]["shape"] == [16, 16, 16]
    assert [label["name"] for label in schema["labels"]] == ["label_parity", "label_size"]
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    assert set(metrics["test"]) == {"label_parity", "label_size"}
    assert list((run / "checkpoints").glob("*.ckpt"))


@pytest.mark.parametrize("task", ["regression", "survival"])
def test_the_volume_demo_trains_every_task_kind(built, task, tmp_path):
    """One epoch of each other task kind on the demo volumes, from the composed config: its
    labels and the demo's time unit."""
    from nervus_lightning.workflows.train import train

    root, _, _ = built
    config = compose_config(
        [
            "data=demo_volumes",
            f"task={task}",
            f"data.demo_root={root}",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "evaluation.n_bootstrap=20",
        ]
    )
    train(TrainSettings.from_config(OmegaConf.to_container(config, resolve=True)), tmp_path)
    schema = json.loads((tmp_path / "schema.json").read_text())
    expected = {"regression": ["label_value"], "survival": ["label_death"]}[task]
    assert [label["name"] for label in schema["labels"]] == expected
    assert schema["time_unit"] == "years"  # the demo's unit, as with data=demo
    assert len(pd.read_csv(tmp_path / "predictions.csv")) == 300


@pytest.mark.slow  # the whole demo run: about a minute on 2 CPU cores
def test_the_volume_demo_reaches_the_metric_its_documentation_states(built, tmp_path):
    """The documented demo (20 epochs, its defaults) separates label_parity on the test split:
    the sphere's half XOR input_sex needs the volume and the table together. The AUROC is
    recomputed with scikit-learn from predictions.csv."""
    from sklearn.metrics import roc_auc_score

    from nervus_lightning.workflows.train import train

    root, _, _ = built
    config = compose_config(["data=demo_volumes", f"data.demo_root={root}"])
    train(TrainSettings.from_config(OmegaConf.to_container(config, resolve=True)), tmp_path)
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    test = predictions[predictions["split"] == "test"]
    auroc = roc_auc_score(test["label_parity"] == "odd", test["prob_label_parity_odd"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["metrics"]["test"]["label_parity"]["auroc"] == pytest.approx(auroc)
    assert auroc >= 0.95
