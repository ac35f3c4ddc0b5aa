"""Checkpoints are written atomically, and a truncated or corrupt one is a clear user error that
names the file and the previous good checkpoint, wherever a checkpoint is read."""

from __future__ import annotations

import errno
import os
import time

import pandas as pd
import pytest
import torch

from nervus_lightning.checkpoints import AtomicCheckpointIO, check_checkpoint, save_atomically
from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.schema import NervusInputError
from nervus_lightning.workflows.export import export_model
from nervus_lightning.workflows.predict import predict


@pytest.fixture
def folder(tmp_path):
    """A checkpoint folder: an intact older checkpoint and a last.ckpt cut in half."""
    ckpts = tmp_path / "checkpoints"
    state = {"state_dict": {"w": torch.arange(50_000.0)}, "epoch": 3}
    good = save_atomically(state, ckpts / "epoch003-val_loss0.5000.ckpt")
    older = save_atomically(state, ckpts / "epoch001-val_loss0.7000.ckpt")
    os.utime(older, (time.time() - 100, time.time() - 100))
    whole = save_atomically(state, ckpts / "whole.ckpt").read_bytes()
    (ckpts / "whole.ckpt").unlink()
    last = ckpts / "last.ckpt"
    last.write_bytes(whole[: len(whole) // 2])  # killed while writing / half copied
    return ckpts, good, last, whole


def test_truncated_checkpoint_names_file_and_previous_good(folder):
    ckpts, good, last, _ = folder
    with pytest.raises(NervusInputError) as err:
        check_checkpoint(last, "ckpt_path")
    message = str(err.value)
    assert str(last) in message and "truncated" in message
    assert f"ckpt_path={good}" in message  # the newest intact one, not the older one
    assert check_checkpoint(good) == good


def test_corrupt_bytes_are_caught_by_checksum(folder):
    ckpts, good, _, whole = folder
    damaged = bytearray(whole)
    middle = len(damaged) // 2
    damaged[middle : middle + 8] = b"\xff" * 8  # inside the weights, zip directory intact
    bad = ckpts / "bitrot.ckpt"
    bad.write_bytes(bytes(damaged))
    with pytest.raises(NervusInputError, match="corrupt"):
        check_checkpoint(bad)


def test_no_good_checkpoint_left(tmp_path):
    path = tmp_path / "alone.ckpt"
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(NervusInputError, match="No other intact checkpoint"):
        check_checkpoint(path)
    with pytest.raises(NervusInputError, match="not found"):
        check_checkpoint(tmp_path / "missing.ckpt")


def test_predict_and_export_refuse_a_truncated_checkpoint(folder, dataset):
    _, good, last, _ = folder
    csv = dataset(images=False, n=8)
    for call in (
        lambda: predict(last, csv, last.parent / "out", device="cpu"),
        lambda: export_model(last, "torch_export"),
    ):
        with pytest.raises(NervusInputError) as err:
            call()
        assert str(last) in str(err.value) and str(good) in str(err.value)


def test_resume_from_a_truncated_checkpoint_stops_before_training(folder, dataset, tmp_path):
    from conftest import FAST, compose_config

    from nervus_lightning.workflows.train import train

    _, good, last, _ = folder
    csv = dataset(images=False, n=16)
    cfg = compose_config([f"data.csv={csv}", f"ckpt_path={last}", *FAST])
    with pytest.raises(NervusInputError, match="ckpt_path=") as err:
        train(train_settings(cfg), tmp_path / "run")
    assert str(good) in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}

    def dies_halfway(obj, handle):
        handle.write(b"PK half a checkpoint")
        raise KeyboardInterrupt  # e.g. the job's time limit

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_disk_full_while_writing_keeps_the_old_checkpoint_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save_atomically({"step": 1}, path)

    def disk_full(obj, handle):
        handle.write(b"PK part of a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(NervusInputError, match="filled up") as err:
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert "last.ckpt still holds the previous checkpoint" in str(err.value)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_trainer_writes_checkpoints_atomically(tmp_path):
    from conftest import compose_config

    from nervus_lightning.workflows.train import build_trainer

    trainer = build_trainer(train_settings(compose_config([])).trainer, tmp_path, [])
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# -- the output folder is checked before training --------------------------------------------


def _tiny_config(dataset):
    from conftest import FAST, compose_config

    csv = dataset(images=False, n=16)
    return compose_config([f"data.csv={csv}", *FAST, "model/extractor=none"])


def test_output_folder_under_a_file_stops_before_training(dataset, tmp_path):
    from nervus_lightning.workflows.train import train

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(NervusInputError, match="not writable") as err:
        train(train_settings(_tiny_config(dataset)), blocker / "run")
    assert str(blocker / "run") in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_stops_before_training(dataset, tmp_path):
    from nervus_lightning.workflows.train import train

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(NervusInputError, match="not writable"):
            train(train_settings(_tiny_config(dataset)), locked / "run")
    finally:
        locked.chmod(0o755)


def test_full_disk_stops_before_training(dataset, tmp_path, monkeypatch):
    import shutil

    from nervus_lightning.workflows import train as train_module

    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(train_module.shutil, "disk_usage", lambda _: real._replace(free=50 * 2**20))
    with pytest.raises(NervusInputError, match="has 50 MiB free") as err:
        train_module.train(train_settings(_tiny_config(dataset)), tmp_path / "run")
    assert "hydra.run.dir" in str(err.value)
    assert not list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_bf16_kernels_warns(tmp_path, monkeypatch, caplog, native):
    from conftest import compose_config

    from nervus_lightning.workflows import train as train_module

    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: native)
    cfg = compose_config(["trainer.accelerator=cpu", "trainer.precision=bf16-mixed"])
    with caplog.at_level("WARNING", logger="nervus_lightning.workflows.train"):
        train_module.build_trainer(train_settings(cfg).trainer, tmp_path, [])
    warned = "without native bfloat16 kernels" in caplog.text
    assert warned is (not native)


@pytest.mark.parametrize(("native", "chosen"), [(True, "bf16-mixed"), (False, "32-true")])
def test_fp16_on_a_cpu_is_decided_here_and_said_once(tmp_path, monkeypatch, caplog, native, chosen):
    """``trainer=ddp trainer.accelerator=cpu`` keeps the recipe's 16-mixed, which CPUs cannot run:
    bf16 where the CPU has bf16 kernels, 32-bit otherwise (Lightning would pick bf16 always,
    20 times slower where it is emulated), one log line and no Lightning warning."""
    import warnings

    from conftest import compose_config

    from nervus_lightning.workflows import train as train_module

    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: native)
    cfg = compose_config(["trainer.accelerator=cpu", "trainer.precision=16-mixed"])
    with caplog.at_level("INFO", logger="nervus_lightning.workflows.train"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = train_module.build_trainer(train_settings(cfg).trainer, tmp_path, [])
    assert trainer.precision == chosen
    assert f"this run uses {chosen}" in caplog.text
    assert not [w for w in caught if "precision" in str(w.message)]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_follow_the_umask(tmp_path, umask):
    """Checkpoints and run files get the mode ``open()`` would give (0666 less the umask), not
    ``mkstemp``'s 0600 that hides a model from colleagues on a shared server."""
    from nervus_lightning.outputs import write_csv, write_json

    old = os.umask(umask)
    try:
        files = [
            save_atomically({"w": torch.zeros(3)}, tmp_path / "a.ckpt"),
            write_json(tmp_path / "metrics.json", {"auroc": 0.5}),
            write_csv(tmp_path / "predictions.csv", pd.DataFrame({"x": [1]})),
        ]
    finally:
        os.umask(old)
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
