"""Smoke tests of benchmarks/ (train_speed.py, step_overhead.py, gpu_volumes.py) on tiny
configurations, so that they never go stale."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from nervus_lightning.data.demo import build_demo_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_speed.py"


@pytest.fixture(scope="module")
def train_speed():
    spec = importlib.util.spec_from_file_location("train_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_speed"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("train_speed", None)


@pytest.fixture
def demo_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NERVUS_LIGHTNING_CACHE", str(tmp_path / "cache"))


def test_subset_csv_keeps_the_asked_number_of_training_images(train_speed, demo_cache, tmp_path):
    csv = train_speed.subset_csv(40, tmp_path)
    frame = pd.read_csv(csv)
    demo = pd.read_csv(build_demo_dataset())
    # The first 40 training cases of the demo, and every case of the other splits, in order.
    kept = demo[(demo["split"] != "train") | (demo.groupby("split").cumcount() < 40)]
    assert list(frame["uniqID"]) == list(kept["uniqID"])
    assert (frame["split"] == "train").sum() == 40
    assert list(frame["label_parity"]) == list(kept["label_parity"])
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in frame["imgpath"])


def test_benchmark_runs_end_to_end(train_speed, demo_cache, capsys):
    args = [
        "--images",
        "64",
        "--image-size",
        "32",
        "--batch-size",
        "16",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--accuracy",
        "--accuracy-epochs",
        "1",
    ]
    results = train_speed.main(args)
    out = capsys.readouterr().out
    assert "64 images 32x32 x1, batch 16, 1 epoch(s) per run, 2 repeats" in out
    names = [r.variant.name for r in results]
    assert names[:2] == ["plain fp32", "nervus fp32"]
    if train_speed.cpu_has_native_bf16():
        assert names[2:] == ["plain bf16", "nervus bf16"]
    for result in results:
        assert len(result.seconds) == len(result.cpu_seconds) == 2
        assert all(s > 0 for s in result.seconds)
        # The printed table reports these measurements (median and min seconds per epoch).
        line = re.search(rf"^{re.escape(result.variant.name)} +(\S+) +(\S+) ", out, re.M)
        assert line, result.variant.name
        assert float(line.group(1)) == pytest.approx(result.median, abs=5e-4)
        assert float(line.group(2)) == pytest.approx(result.best, abs=5e-4)
    for precision in ("fp32", "bf16") if train_speed.cpu_has_native_bf16() else ("fp32",):
        assert re.search(rf"nervus {precision} +accuracy 0\.\d{{4}} +AUROC [01]\.\d{{4}}", out)


def test_step_overhead_benchmark_prints_its_table():
    """benchmarks/step_overhead.py on 600 rows, one repeat: the three loops and their ratios."""
    import subprocess

    script = SCRIPT.parent / "step_overhead.py"
    done = subprocess.run(
        [sys.executable, str(script), "--rows", "600", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "600 rows, batch 256, 3 steps" in done.stdout
    for loop in ("plain", "plain tensors", "nervus"):
        assert re.search(rf"^\| {loop} \| \d+\.\d+ \|", done.stdout, re.M), loop


@pytest.fixture
def gpu_volumes(monkeypatch):
    """benchmarks/gpu_volumes.py imported as its own script would (volume_speed, train_speed
    beside it)."""
    pytest.importorskip("nibabel")
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    names = ("gpu_volumes", "volume_speed", "train_speed")
    before = {name: sys.modules.get(name) for name in names}
    yield importlib.import_module("gpu_volumes")
    for name, module in before.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module


def test_gpu_volume_check_runs_on_the_cpu(gpu_volumes, capsys):
    """benchmarks/gpu_volumes.py with --device cpu on 16^3 volumes: both precisions train, the
    parity check runs (CPU against CPU here: no difference). small_cnn_3d, not the default
    resnet18_3d (about 3 s a step on two loaded cores; tests/test_volume_monai.py trains it)."""
    args = ["--device", "cpu", "--extractor", "small_cnn_3d", "--size", "16", "--batch-size", "2"]
    result = gpu_volumes.main([*args, "--steps", "2", "--warmup", "1"])
    out = capsys.readouterr().out
    assert "small_cnn_3d, 6 training volumes of 16^3, batch 2, 1 + 2 steps" in out
    for precision in ("32-true", "bf16-mixed"):
        speed = result["volumes_per_second"][precision]
        assert speed > 0
        assert re.search(rf"^{precision} +{speed:9.1f} volumes/s", out, re.M)
    assert result["n_predicted"] == 16 and result["agree"] and result["fp32_gap"] <= 1e-6
    assert "cpu fp32" in out and "a smoke test, not a measurement" in out
    if not torch.cuda.is_available():
        assert gpu_volumes.main([]) is None
        assert "no CUDA device here" in capsys.readouterr().out
