"""``python -m nervus_lightning.preview data.csv=PATH [split=train] [n=16]``: see the inputs."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from nervus_lightning.cli import hydra_command, run_reporting_user_errors

log = logging.getLogger(__name__)


def preview(cfg: DictConfig) -> list[Path]:
    """Build the data as training would (images only) and write the preview PNGs."""
    # Imported when the command runs, so that a typo or --help is answered before Lightning and
    # the training code load (about 3 s of imports).
    from nervus_lightning.data.preview import auto_window_note, write_preview
    from nervus_lightning.train import build_datamodule

    datamodule = build_datamodule(
        # A few images are read once: building the whole data set's image cache would not pay.
        cfg,
        use_images=True,
        use_tabular=False,
        sampler="none",
        num_workers=0,
        cache="none",
    )
    written = write_preview(
        datamodule,
        cfg.out,
        split=str(cfg.split),
        n=int(cfg.n),
        augmented=cfg.augmentation.name != "none",
        seed=int(cfg.seed),
    )
    print(f"preview of {len(written) - 1} image(s) of split {cfg.split} written to {cfg.out}/")
    note = auto_window_note(datamodule)
    if note:
        print(note)
    return written


@hydra_command("preview")
def main(cfg: DictConfig) -> None:
    run_reporting_user_errors(lambda: preview(cfg))
