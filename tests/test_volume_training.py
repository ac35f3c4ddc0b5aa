"""Training on 3D volumes (``data.volume_size``) end to end: CSV of NIfTI files or DICOM series
folders plus table inputs, through the command line; the checks before training; the cache; the
3D extractors; what is not 3D-ready refused cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

nib = pytest.importorskip("nibabel")

from conftest import FAST, compose_config, write_png  # noqa: E402
from test_volumes import Series  # noqa: E402

from nervus_lightning.checkpoints import checkpoint_datamodule, load_trained  # noqa: E402
from nervus_lightning.data.datamodule import NervusDataModule  # noqa: E402
from nervus_lightning.data.volume_input import (  # noqa: E402
    VolumeSettings,
    centre_crop_or_pad,
    read_training_volume,
)
from nervus_lightning.errors import NervusInputError  # noqa: E402
from nervus_lightning.workflows.settings import TrainSettings  # noqa: E402
from nervus_lightning.workflows.train import train  # noqa: E402

SIZE = 16
VOLUME = [f"data.volume_size=[{SIZE},{SIZE},{SIZE}]", "model/extractor=small_cnn_3d"]
# FAST without its 2D extractor (small_cnn), with a smaller 3D one.
FAST_3D = [o for o in FAST if not o.startswith("model/extractor")] + [
    *VOLUME,
    "model.extractor.widths=[8,16]",
]


def write_nifti(path: Path, values: np.ndarray, zooms=(1.0, 1.0, 1.0)) -> None:
    """An int16 NIfTI with a display range 0..1000 (its ``auto`` window)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(values.astype(np.int16), np.diag([*zooms, 1.0]))
    image.header["cal_min"], image.header["cal_max"] = 0, 1000
    nib.save(image, str(path))


def blob_volume(rng, upper: bool, size: int = SIZE) -> np.ndarray:
    """Noise with a bright blob in the upper (superior: high k of a RAS-identity NIfTI) or lower
    half along the slice axis, at a random place within that half. A single slice or a 2D
    projection across the slice axis cannot tell where it is."""
    values = rng.normal(300, 60, (size, size, size))
    half = size // 2
    k = rng.integers(half + 1, size - 2) if upper else rng.integers(2, half - 2)
    i, j = rng.integers(3, size - 3, 2)
    values[i - 2 : i + 2, j - 2 : j + 2, k - 1 : k + 2] += 500
    return np.clip(values, 0, 1000)


def make_volume_csv(
    root: Path,
    n: int = 40,
    task: str = "classification",
    seed: int = 0,
    splits: tuple[float, float] = (0.5, 0.25),
    name: str = "data.csv",
) -> Path:
    """Cases whose label is (blob in the upper half) XOR ``input_flag``: it needs the third
    dimension and the table together. ``input_noise`` carries nothing."""
    rng = np.random.default_rng(seed)
    rows = []
    n_train, n_val = int(n * splits[0]), int(n * splits[1])
    for i in range(n):
        upper, flag = bool(rng.integers(0, 2)), int(rng.integers(0, 2))
        positive = upper != bool(flag)
        rel = f"vol/{name[:-4]}_{i:03d}.nii.gz"
        write_nifti(root / rel, blob_volume(rng, upper))
        row = {
            "uniqID": f"{name[:-4]}_{i:03d}",
            "imgpath": rel,
            "input_flag": flag,
            "input_noise": float(rng.normal()),
        }
        if task == "classification":
            row["label_cls"] = "yes" if positive else "no"
        else:
            event_time = rng.exponential(1 / (0.05 * np.exp(2.0 * positive)))
            censor = rng.exponential(40)
            row["label_death"] = int(event_time <= censor)
            row["period_death"] = float(min(event_time, censor))
        row["split"] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
        rows.append(row)
    csv = root / name
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def run(args, cwd):
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


# -- end to end ------------------------------------------------------------------------------


def test_volumes_and_a_table_train_predict_and_evaluate_through_the_command_line(tmp_path):
    csv = make_volume_csv(tmp_path)
    out = run(
        ["-m", "nervus_lightning", f"data.csv={csv}", "hydra.run.dir=run", *FAST_3D], tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "run"
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert len(predictions) == 40 and "metrics" in json.loads(
        (run_dir / "summary.json").read_text()
    )
    # The report's model table describes the volumes, not a 2D image size.
    rows = dict(json.loads((run_dir / "model_summary.json").read_text())["rows"])
    assert rows["image input"].startswith("one volume per case, resized to 16 x 16 x 16 voxels")
    assert "LPS" in rows["image input"] and "px" not in rows["image input"]
    best = json.loads((run_dir / "summary.json").read_text())["best_checkpoint"]
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    schema = ckpt["hyper_parameters"]["schema"]
    # What predict needs to read new volumes as training did; aggregates only.
    assert schema["volume"] == {"shape": [SIZE] * 3, "spacing": None, "orientation": "LPS"}
    assert schema["window"] == "auto"

    # New volumes, through predict's command line, with labels: predictions and metrics.
    new_csv = make_volume_csv(tmp_path, n=6, seed=1, name="new.csv")
    out = run(
        [
            "-m",
            "nervus_lightning.predict",
            f"ckpt={best}",
            f"data.csv={new_csv}",
            "hydra.run.dir=p",
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    predicted = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert (tmp_path / "p" / "metrics.json").is_file()
    assert (tmp_path / "p" / "evaluation" / "report.html").is_file()
    # The same numbers as the checkpoint's network on the volumes read by hand.
    module = load_trained(best, map_location="cpu").eval()
    settings = VolumeSettings((SIZE,) * 3, None, "auto")
    frame = pd.read_csv(new_csv)
    image = torch.stack([read_training_volume(tmp_path / p, settings) for p in frame["imgpath"]])
    tabular = torch.tensor(frame[["input_flag", "input_noise"]].to_numpy(np.float32))
    with torch.no_grad():
        probability = module.task.transform_output(
            module({"image": image, "tabular": tabular})[0], 0
        )
    columns = [c for c in predicted.columns if c.startswith("p_cls") or c.startswith("prob")]
    assert columns, predicted.columns
    assert np.allclose(predicted[columns].to_numpy(), probability.numpy(), atol=1e-5)


def test_survival_on_volumes_trains_and_keeps_its_baseline(tmp_path):
    csv = make_volume_csv(tmp_path, task="survival")
    config = compose_config([f"data.csv={csv}", "task=survival", *FAST_3D])
    from omegaconf import OmegaConf

    settings = TrainSettings.from_config(OmegaConf.to_container(config, resolve=True))
    train(settings, tmp_path / "run")
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert len(predictions) == 40
    module = load_trained(
        json.loads((tmp_path / "run" / "summary.json").read_text())["best_checkpoint"]
    )
    assert module.schema.is_volume and module.schema.volume["shape"] == [SIZE] * 3


# -- reading rows ----------------------------------------------------------------------------


def test_a_dicom_series_row_reads_like_the_nifti_rows(tmp_path):
    csv = make_volume_csv(tmp_path, n=8)
    rng = np.random.default_rng(3)
    stored = rng.integers(1024, 1024 + 800, (10, 12, 14)).astype(np.uint16)
    Series(stored, WindowCenter="300", WindowWidth="800").write(tmp_path / "series")
    frame = pd.read_csv(csv)
    frame.loc[2, "imgpath"] = "series"
    frame.to_csv(csv, index=False)
    data = NervusDataModule(csv, volume_size=[SIZE] * 3, spacing=[2.0, 1.0, 1.0])
    item = data.dataset(None, cached=False)[2]
    assert item["image"].shape == (1, SIZE, SIZE, SIZE) and item["image"].dtype == torch.float32
    expected = read_training_volume(
        tmp_path / "series", VolumeSettings((SIZE,) * 3, (2.0, 1.0, 1.0), "auto")
    )
    assert torch.equal(item["image"], expected)
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0


def test_spacing_keeps_the_physical_voxel_size_and_crops_about_the_centre(tmp_path):
    # 8 slices of 4 mm with a 2-slice (8 mm) bright band in the middle: at 1 mm it is 8 voxels
    # thick, whatever volume_size the crop keeps.
    values = np.zeros((8, 8, 8))
    values[:, :, 3:5] = 1000
    write_nifti(tmp_path / "v.nii", values, zooms=(4.0, 4.0, 4.0))
    settings = VolumeSettings((16, 16, 16), (1.0, 1.0, 1.0), "auto")
    volume = read_training_volume(tmp_path / "v.nii", settings)[0].numpy()
    bright = (volume[:, 8, 8] > 0.5).sum()
    assert bright == 8, volume[:, 8, 8]
    assert centre_crop_or_pad(np.arange(5.0), [3]).tolist() == [1.0, 2.0, 3.0]
    assert centre_crop_or_pad(np.arange(2.0), [4]).tolist() == [0.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_the_cache_holds_each_volume_as_read_from_its_file(tmp_path, cache):
    csv = make_volume_csv(tmp_path, n=6)
    data = NervusDataModule(
        csv, volume_size=[SIZE] * 3, cache=cache, cache_dir=tmp_path / "cache", augmentation="none"
    )
    cached = data.dataset(None)
    fresh = data.dataset(None, cached=False)
    assert cached.cache is not None
    for i in range(len(fresh)):
        difference = (cached[i]["image"] - fresh[i]["image"]).abs().max()
        assert float(difference) <= 0.5 / 65535 + 1e-7
    if cache == "disk":
        assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
        # Other volume settings read other arrays, never this one.
        from nervus_lightning.data.cache import ReadSettings, disk_key

        paths = list(data.frame["imgpath"])
        keys = {
            disk_key(paths, ReadSettings(64, 1, None, "auto", "middle", volume=volume))
            for volume in (
                VolumeSettings((SIZE,) * 3, None, "auto"),
                VolumeSettings((SIZE, SIZE, 8), None, "auto"),
                VolumeSettings((SIZE,) * 3, (1.0, 1.0, 1.0), "auto"),
                VolumeSettings((SIZE,) * 3, None, (500.0, 1000.0)),
            )
        }
        assert len(keys) == 4


# -- checks before training ------------------------------------------------------------------


def test_a_missing_volume_is_named_with_its_csv_line_before_training(tmp_path):
    csv = make_volume_csv(tmp_path, n=8)
    frame = pd.read_csv(csv)
    frame.loc[4, "imgpath"] = "vol/nowhere.nii.gz"
    frame.to_csv(csv, index=False)
    out = run(
        ["-m", "nervus_lightning", f"data.csv={csv}", "hydra.run.dir=run", *FAST_3D], tmp_path
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert "nowhere.nii.gz" in out.stderr and "'imgpath'" in out.stderr
    assert "CSV line 6" in out.stderr and str(csv) in out.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_2d_image_in_volume_mode_says_what_to_set(tmp_path):
    csv = make_volume_csv(tmp_path, n=8)
    frame = pd.read_csv(csv)
    write_png(tmp_path / "flat.png", np.zeros((8, 8), np.uint8))
    frame.loc[1, "imgpath"] = "flat.png"
    frame.to_csv(csv, index=False)
    with pytest.raises(NervusInputError, match=r"(?s)flat\.png.*2D image.*data\.volume_size"):
        NervusDataModule(csv, volume_size=[SIZE] * 3)
    with pytest.raises(NervusInputError, match="CSV line 3"):
        NervusDataModule(csv, volume_size=[SIZE] * 3)


def test_volumes_without_volume_size_say_what_to_set(tmp_path):
    csv = make_volume_csv(tmp_path, n=8)
    with pytest.raises(NervusInputError, match=r"(?s)NIfTI volume.*data\.volume_size=\[D,H,W\]"):
        NervusDataModule(csv)
    Series(np.full((4, 6, 6), 1100, np.uint16)).write(tmp_path / "series")
    frame = pd.read_csv(csv)
    frame["imgpath"] = "series"
    frame.to_csv(csv, index=False)
    with pytest.raises(NervusInputError, match=r"(?s)DICOM series folder.*data\.volume_size"):
        NervusDataModule(csv)


def test_options_volume_mode_does_not_take_are_refused(tmp_path):
    csv = make_volume_csv(tmp_path, n=8)
    with pytest.raises(NervusInputError, match="augmentation=xray.*augmentation=none"):
        NervusDataModule(csv, volume_size=[SIZE] * 3, augmentation="xray")
    with pytest.raises(NervusInputError, match="in_channels=1"):
        NervusDataModule(csv, volume_size=[SIZE] * 3, in_channels=3)
    with pytest.raises(NervusInputError, match="three positive integers"):
        NervusDataModule(csv, volume_size=[SIZE, SIZE])
    with pytest.raises(NervusInputError, match="needs data.volume_size"):
        NervusDataModule(csv, spacing=[1.0, 1.0, 1.0])


def test_a_3d_extractor_with_images_and_a_2d_one_with_volumes_are_refused(tmp_path, dataset):
    from nervus_lightning.module import NervusModule

    volumes = NervusDataModule(make_volume_csv(tmp_path, n=8), volume_size=[SIZE] * 3)
    with pytest.raises(NervusInputError, match="2D network.*small_cnn_3d"):
        NervusModule(volumes.schema, extractor={"name": "small_cnn", "_target_": _SMALL_CNN})
    with pytest.raises(NervusInputError, match="2D network"):
        NervusModule(volumes.schema, extractor="resnet18")
    images = NervusDataModule(dataset(), image_size=16)
    with pytest.raises(NervusInputError, match="reads 3D volumes.*data.volume_size"):
        NervusModule(images.schema, extractor={"_target_": _SMALL_CNN_3D, "name": "small_cnn_3d"})


_SMALL_CNN = "nervus_lightning.models.extractors.SmallCNN"
_SMALL_CNN_3D = "nervus_lightning.models.extractors.SmallCNN3d"


@pytest.mark.parametrize(
    ("name", "features", "side"), [("resnet18", 512, SIZE), ("densenet121", 1024, 32)]
)
def test_monai_extractors_give_their_feature_size(name, features, side):
    pytest.importorskip("monai")
    from nervus_lightning.models.extractors import MonaiExtractor

    extractor = MonaiExtractor(name).eval()
    with torch.no_grad():
        out = extractor(torch.rand(2, 1, side, side, side))
    assert extractor.out_features == features and out.shape == (2, features)
    assert extractor.spatial_dims == 3


# -- not 3D-ready: refused with one message --------------------------------------------------


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("volume_run")
    csv = make_volume_csv(root, n=24)
    from omegaconf import OmegaConf

    config = compose_config([f"data.csv={csv}", *FAST_3D])
    train(TrainSettings.from_config(OmegaConf.to_container(config, resolve=True)), root / "run")
    best = json.loads((root / "run" / "summary.json").read_text())["best_checkpoint"]
    return root, csv, best


@pytest.mark.parametrize(
    ("mixer", "ensemble"), [("concat", 2), ("gated", 1), ("film", 1), ("attention", 1)]
)
def test_every_mixer_and_ensembles_take_volume_features(tmp_path, mixer, ensemble):
    from nervus_lightning.module import NervusModule

    data = NervusDataModule(make_volume_csv(tmp_path, n=8), volume_size=[SIZE] * 3)
    module = NervusModule(
        data.schema,
        extractor={"_target_": _SMALL_CNN_3D, "name": "small_cnn_3d", "widths": [4, 8]},
        mixer=mixer,
        ensemble=ensemble,
    )
    batch = next(iter(data.eval_dataloader(None)))
    assert batch["image"].shape == (8, 1, SIZE, SIZE, SIZE)
    outputs = module.infer([batch], "cpu")[0]
    assert outputs.shape == (8, 2) and np.allclose(outputs.sum(1), 1.0, atol=1e-5)


def test_a_checkpoint_predicts_new_volumes_as_the_run_did(volume_run):
    root, csv, best = volume_run
    module = load_trained(best)
    data = checkpoint_datamodule(module, csv, batch_size=8)
    again = module.infer(data.predict_dataloader(), "cpu")[0]
    written = pd.read_csv(root / "run" / "predictions.csv")
    columns = [c for c in written.columns if c.startswith("p_cls") or c.startswith("prob")]
    assert np.allclose(written[columns].to_numpy(), again, atol=1e-6)


# -- the check -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_fused_3d_model_learns_a_task_that_needs_depth_and_the_table(tmp_path):
    """Blob in the upper or lower half along D, XOR a binary input: neither the table alone nor
    a model without the third dimension can do better than chance. Settings fixed before the
    first run (none tuned on test)."""

    csv = make_volume_csv(tmp_path, n=300, splits=(0.6, 0.2))
    options = [
        f"data.csv={csv}",
        *[o for o in FAST_3D if not o.startswith("model")],
        "trainer.max_epochs=30",
        "data.batch_size=32",
        "model/mixer=concat",
    ]
    from omegaconf import OmegaConf
    from sklearn.metrics import roc_auc_score

    def auroc_on_test(extra: list[str], run_dir: Path) -> float:
        config = compose_config([*options, *extra])
        train(TrainSettings.from_config(OmegaConf.to_container(config, resolve=True)), run_dir)
        predictions = pd.read_csv(run_dir / "predictions.csv")
        test = predictions[predictions["split"] == "test"]
        column = [c for c in test.columns if c.startswith("p_cls") or c.startswith("prob")][-1]
        return roc_auc_score(test["label_cls"] == "yes", test[column])

    fused = auroc_on_test(
        ["model/extractor=small_cnn_3d", "model.extractor.widths=[16,32]"], tmp_path / "fused"
    )
    table_alone = auroc_on_test(["model/extractor=none"], tmp_path / "table")
    print(f"test AUROC: fused 3D model {fused:.3f}, table alone {table_alone:.3f}")
    assert fused >= 0.95
    assert table_alone < 0.75  # the control: the task does need the volume


def test_several_volumes_per_case_go_through_one_shared_3d_extractor(tmp_path):
    from nervus_lightning.module import NervusModule

    csv = make_volume_csv(tmp_path, n=8)
    frame = pd.read_csv(csv).rename(columns={"imgpath": "imgpath_arterial"})
    frame["imgpath_venous"] = frame["imgpath_arterial"][::-1].to_numpy()
    frame.to_csv(csv, index=False)
    data = NervusDataModule(csv, volume_size=[SIZE] * 3)
    assert data.schema.views == ["arterial", "venous"]
    batch = next(iter(data.eval_dataloader(None)))
    assert batch["image"].shape == (8, 2, 1, SIZE, SIZE, SIZE)
    module = NervusModule(
        data.schema,
        extractor={"_target_": _SMALL_CNN_3D, "name": "small_cnn_3d", "widths": [4, 8]},
    )
    assert module.infer([batch], "cpu")[0].shape == (8, 2)
