"""Shared fixtures: tiny Nervus CSVs with real image files, and composed Hydra configs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from nervus_lightning.checkpoints import CHOICE_KEY
from nervus_lightning.cli.overrides import with_csv_data_group
from nervus_lightning.config import config_dir


def write_png(path: Path, array: np.ndarray) -> None:
    """8-bit (uint8) or 16-bit (uint16) grayscale, or RGB (H, W, 3 uint8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == np.uint16:
        Image.fromarray(array.astype(np.uint16)).save(path)  # PIL writes mode I;16
    else:
        Image.fromarray(array).save(path)


def make_dataset(
    root: Path,
    task: str = "classification",
    n: int = 48,
    images: bool = True,
    tabular: bool = True,
    size: int = 16,
    bit_depth: int = 8,
    rgb: bool = False,
    seed: int = 0,
    extra_splits: dict[str, int] | None = None,
    group: bool = False,
) -> Path:
    """A small learnable data set: bright images and high ``input_a`` go with class ``yes``."""
    rng = np.random.default_rng(seed)
    signal = rng.integers(0, 2, n)
    rows = []
    splits = np.array(["train"] * n, dtype=object)
    splits[n // 2 : n // 2 + n // 4] = "val"
    splits[n // 2 + n // 4 :] = "test"
    offset = 0
    for name, count in (extra_splits or {}).items():
        splits[offset : offset + count] = name
        offset += count
    for i in range(n):
        row = {"uniqID": f"case{i:03d}"}
        if images:
            level = 0.25 + 0.5 * signal[i] + rng.normal(0, 0.05)
            pixels = np.clip(level + rng.normal(0, 0.1, (size, size)), 0, 1)
            if bit_depth == 16:
                arr = (pixels * 65535).astype(np.uint16)
            else:
                arr = (pixels * 255).astype(np.uint8)
            if rgb:
                arr = np.stack([arr] * 3, axis=-1)
            rel = f"img/case{i:03d}.png"
            write_png(root / rel, arr)
            row["imgpath"] = rel
        if tabular:
            row["input_a"] = float(signal[i] + rng.normal(0, 0.3))
            row["input_b"] = float(rng.normal(50, 10))
        if task == "classification":
            row["label_cls"] = "yes" if signal[i] else "no"
            row["label_three"] = ["x", "y", "z"][(i + signal[i]) % 3]
        elif task == "regression":
            row["label_value"] = float(3.0 * signal[i] + rng.normal(0, 0.2))
        else:
            hazard = 0.05 * np.exp(1.5 * signal[i])
            event_time = rng.exponential(1 / hazard)
            censor = rng.exponential(40)
            row["label_death"] = int(event_time <= censor)
            row["period_death"] = float(min(event_time, censor))
        row["split"] = splits[i]
        if group:
            row["group"] = "site_a" if i % 2 else "site_b"
        rows.append(row)
    csv = root / "data.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


@pytest.fixture
def dataset(tmp_path):
    def _make(**kwargs) -> Path:
        return make_dataset(tmp_path, **kwargs)

    return _make


def compose_config(overrides: list[str]):
    """The real training config, composed as the command line would (``data.csv=`` alone picks
    ``data=csv``, as :func:`~nervus_lightning.cli.overrides.with_csv_data_group` does)."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=with_csv_data_group(overrides))


def assert_objective_is_the_kept_models(summary: dict, curve: pd.DataFrame) -> None:
    """A run's objective (``summary.json``'s best_val_loss) is the lowest val_loss of its
    learning curve, or, when the linear start was kept, the start's own val_loss: then the
    best epoch's (the curve's lowest) was not lower by more than one standard error."""
    kept = summary["best_checkpoint"]
    if not kept.endswith("linear_start.ckpt"):
        assert summary["best_val_loss"] == pytest.approx(curve["val_loss"].min(), rel=1e-5)
        return
    choice = torch.load(kept, map_location="cpu", weights_only=True)[CHOICE_KEY]
    start = choice["start_choice"]
    assert summary["best_val_loss"] == pytest.approx(start["start_loss"])
    assert start["best_loss"] == pytest.approx(curve["val_loss"].min(), rel=1e-4)
    assert start["start_loss"] - start["best_loss"] <= start["se"]


def run_command(module: str, args: list[str], cwd: Path, timeout: int = 600):
    """``python -m <module> <args>`` in ``cwd`` as a user runs it, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


FAST = [
    # A 0.29 M-weight CNN: checkpoints of about 3.5 MiB, not ResNet18's 128 MiB, so the suite runs
    # on a cramped disk (the pre-training space check asks for 3 checkpoints plus 100 MiB). Tests
    # of the torchvision backbones name theirs after FAST (the last group override wins).
    "model/extractor=small_cnn",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.image_size=16",
    "data.batch_size=16",
    "data.num_workers=0",
    "evaluation.n_bootstrap=20",
]


# -- disk: a module's shared folders go when its tests have passed ---------------------------
# Passed tests' tmp_path folders are removed at teardown (tmp_path_retention_policy = "failed"
# in pyproject.toml). Folders that module-scoped fixtures make with tmp_path_factory (trained
# runs with checkpoints of ~130 MiB) would stay until the session ends; they are removed when
# their module ends with no failure, so the suite never holds more than a module's runs.

_FAILED_MODULES: set[str] = set()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        _FAILED_MODULES.add(item.module.__name__)
    return report


@pytest.fixture(scope="module", autouse=True)
def _remove_module_folders(request, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    if request.module.__name__ in _FAILED_MODULES:
        return
    for folder in set(base.iterdir()) - before:
        if folder.is_dir() and not folder.name.startswith("test_"):
            shutil.rmtree(folder, ignore_errors=True)


# -- disk: a cramped temporary folder moves the suite's files to memory ------------------------
# CI machines have been seen with under 300 MiB free on their disk. When the system's temporary
# folder has less than ROOMY free and /dev/shm (a RAM-backed tmpfs) has it, the suite's base
# temporary folder goes there instead, and is removed when the session ends with every test
# passed; TMPDIR goes beside it, for what the tests write with tempfile. An explicit --basetemp
# is never changed.

ROOMY = 2 * 2**30
_SHM = Path("/dev/shm")
_MOVED = pytest.StashKey[Path]()


def _free(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def roomy_basetemp() -> Path | None:
    """A base temporary folder in /dev/shm when the temporary folder is cramped, else None."""
    if _free(Path(tempfile.gettempdir())) >= ROOMY:
        return None
    if not (_SHM.is_dir() and os.access(_SHM, os.W_OK)) or _free(_SHM) < ROOMY:
        return None
    return _SHM / f"nervus-lightning-pytest-{os.getuid()}"


def skip_without_disk(folder: Path, mib: int) -> None:
    """Skip (with the reason shown) when ``folder``'s disk has under ``mib`` MiB free: for the
    few tests that must train a full-size torchvision backbone (about 130 MiB a checkpoint),
    which the space check would otherwise stop, and whose files would starve the tests after
    them on a cramped disk."""
    free = _free(folder) / 2**20
    if free < mib:
        pytest.skip(f"needs {mib} MiB free for ResNet18 checkpoints, {folder} has {free:.0f}")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if config.option.basetemp is not None:
        return
    moved = roomy_basetemp()
    if moved is not None:
        config.option.basetemp = str(moved)
        # Files made with tempfile (benchmark runs, subprocesses) follow: pytest empties the
        # base folder when it first makes it, so this one is beside it.
        scratch = moved.with_name(moved.name + "-tmp")
        scratch.mkdir(exist_ok=True)
        os.environ["TMPDIR"] = str(scratch)
        tempfile.tempdir = None
        config.stash[_MOVED] = moved


def pytest_report_header(config):
    moved = config.stash.get(_MOVED, None)
    if moved is not None:
        return [f"temporary folder is cramped: test files go to {moved} (memory)"]
    return None


def pytest_sessionfinish(session, exitstatus):
    moved = session.config.stash.get(_MOVED, None)
    if moved is not None and exitstatus == 0:
        shutil.rmtree(moved, ignore_errors=True)
        shutil.rmtree(moved.with_name(moved.name + "-tmp"), ignore_errors=True)


def _gathered_loss_worker(rank: int, world: int, port: int, task, data, out) -> None:
    """One process of :func:`assert_loss_sees_the_global_batch`."""
    import torch
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    output, time, event = data
    n = output.shape[0]
    part = slice(rank * n // world, (rank + 1) * n // world)
    local = output[part].clone().requires_grad_(True)
    task.gather = lambda t: torch.cat(all_gather(t))  # as NervusModule sets it under DDP
    loss = task.loss(local, {"target": event[part], "time": time[part]}, 0)
    loss.backward()
    out[rank] = (loss.item(), local.grad.clone())
    dist.destroy_process_group()


def assert_loss_sees_the_global_batch(task, output, time, event, port: int, world: int = 2):
    """``world`` gloo processes each hold a share of the batch (``output``, ``time``, ``event``:
    (n, k), (n, 1), (n, 1) tensors) and compute ``task.loss`` with the task gathering as under
    DDP: each process's loss must equal the one-process loss of the whole batch, and its gradient
    its share of that loss's gradient (all_gather's backward sums the ranks' identical losses;
    DDP then averages over ranks, which gives the global-batch gradient)."""
    import torch
    import torch.multiprocessing as mp

    out = mp.Manager().dict()
    data = (output, time, event)
    mp.spawn(_gathered_loss_worker, args=(world, port, task, data, out), nprocs=world, join=True)
    full = output.clone().requires_grad_(True)
    expected = task.loss(full, {"target": event, "time": time}, 0)
    expected.backward()
    n = output.shape[0]
    for rank in range(world):
        loss, grad = out[rank]
        assert loss == pytest.approx(expected.item(), rel=1e-6)
        part = slice(rank * n // world, (rank + 1) * n // world)
        torch.testing.assert_close(grad / world, full.grad[part])
