"""``python -m nervus_lightning.preview data.csv=PATH [split=train] [n=16]``: see the inputs."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nervus_lightning.cli import run_reporting_user_errors
from nervus_lightning.config import config_dir

log = logging.getLogger(__name__)


def preview(cfg: DictConfig) -> list[Path]:
    """Build the data as training would (images only) and write the preview PNGs."""
    from nervus_lightning.data.datamodule import NervusDataModule
    from nervus_lightning.data.preview import write_preview
    from nervus_lightning.train import _plain, resolve_data

    data = cfg.data
    csv, labels, _ = resolve_data(cfg)
    datamodule = NervusDataModule(
        csv,
        task=cfg.task.name,
        labels=labels,
        image_size=data.image_size,
        in_channels=data.in_channels,
        batch_size=data.batch_size,
        use_tabular=False,
        augmentation=cfg.augmentation.name,
        bit_depth=data.get("bit_depth", "auto"),
        window=_plain(data.get("window", "auto")),
        frame=data.get("frame", "middle"),
    )
    written = write_preview(
        datamodule,
        cfg.out,
        split=str(cfg.split),
        n=int(cfg.n),
        augmented=cfg.augmentation.name != "none",
        seed=int(cfg.seed),
    )
    print(f"preview of {len(written) - 1} case(s) of split {cfg.split} written to {cfg.out}/")
    return written


@hydra.main(config_path=config_dir(), config_name="preview", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_reporting_user_errors(lambda: preview(cfg))
