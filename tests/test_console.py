"""What a run prints when nobody watches it live (a SLURM log, ``> run.log``): no progress-bar
line of thousands of characters, one line per epoch, and none of Lightning's warnings that do
not apply to this project."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from conftest import FAST, compose_config
from torch.utils.data import DataLoader, TensorDataset

from nervus_lightning.cli.train import train_settings
from nervus_lightning.console import (
    KNOWN_WARNINGS,
    EpochLines,
    console_is_interactive,
    quiet_lightning,
)
from nervus_lightning.workflows.train import build_trainer

#: Texts of the messages every run printed before (see nervus_lightning.console).
NOISE = (
    "_pytree",
    "LeafSpec",
    "litlogger",
    "smaller than the logging interval",
    "all_gather is deprecated",
)
EPOCH_LINE = re.compile(r"^epoch (\d+) \[(\d+)/2\] train_loss \d+\.\d{4} val_loss \d+\.\d{4} \(")


def test_training_without_a_terminal_prints_sensible_lines(dataset, tmp_path):
    csv = dataset(images=False)
    overrides = [o for o in FAST if "enable_progress_bar" not in o and "max_epochs" not in o]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nervus_lightning",
            f"data.csv={csv}",
            "model/extractor=none",
            "trainer.max_epochs=2",
            "hydra.run.dir=run",
            *overrides,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,  # pipes: neither stdout nor stderr is a terminal
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert max(len(line) for line in text.splitlines()) < 500
    for noise in NOISE:
        assert noise not in text, noise
    # Lightning's own console handler and Hydra's root handler printed each of its lines twice.
    assert text.count("Seed set to") == 1
    assert text.count("`Trainer.fit` stopped") == 1
    epochs = [m.groups() for line in out.stdout.splitlines() if (m := EPOCH_LINE.match(line))]
    assert epochs == [("0", "1"), ("1", "2")]


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_epoch_lines_inside_a_long_epoch(tmp_path, capsys):
    """``every_s`` apart within an epoch (here every batch): the batch count and rate."""
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[EpochLines(every_s=0)],
        default_root_dir=tmp_path,
    )
    with quiet_lightning():
        trainer.fit(_Tiny())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert [line.split(" (")[0] for line in lines] == [
        "epoch 0 [1/1] batch 1/3",
        "epoch 0 [1/1] batch 2/3",
        "epoch 0 [1/1] batch 3/3",
        lines[-1].split(" (")[0],
    ]
    assert re.fullmatch(r"epoch 0 \[1/1\] train_loss \d+\.\d{4} \(\d+\.\d s\)", lines[-1])


def test_the_bar_stays_at_a_terminal(monkeypatch, tmp_path):
    cfg = compose_config([o for o in FAST if "enable_progress_bar" not in o])
    monkeypatch.setattr("nervus_lightning.workflows.train.console_is_interactive", lambda: True)
    trainer = build_trainer(train_settings(cfg).trainer, tmp_path, [])
    assert not isinstance(trainer.progress_bar_callback, EpochLines)  # Lightning's own bar
    monkeypatch.setattr("nervus_lightning.workflows.train.console_is_interactive", lambda: False)
    assert isinstance(
        build_trainer(train_settings(cfg).trainer, tmp_path, []).progress_bar_callback, EpochLines
    )
    off = compose_config(FAST)  # trainer.enable_progress_bar=false: no display at all
    assert build_trainer(train_settings(off).trainer, tmp_path, []).progress_bar_callback is None


def test_console_is_interactive_needs_both_streams(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert console_is_interactive()
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # 2> run.log
    assert not console_is_interactive()


def test_only_the_known_warnings_are_silenced_and_only_inside():
    known = KNOWN_WARNINGS[0]

    def warn_from(module: str, message: str, category: type[Warning]) -> list:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with quiet_lightning():
                warnings.warn_explicit(message, category, "x.py", 1, module=module)
            return caught

    message = "`isinstance(treespec, LeafSpec)` is deprecated, use ..."
    assert warn_from("lightning.pytorch.utilities._pytree", message, known.category) == []
    # The same text attributed to another module, or another text, is shown.
    assert len(warn_from("my_project.model", message, known.category)) == 1
    assert len(warn_from("lightning.pytorch.utilities._pytree", "other", FutureWarning)) == 1
    with warnings.catch_warnings(record=True) as caught:  # after the block: shown again
        warnings.simplefilter("default")
        with quiet_lightning():
            pass
        warnings.warn_explicit(
            message, known.category, "x.py", 1, module="lightning.pytorch.utilities._pytree"
        )
    assert len(caught) == 1
