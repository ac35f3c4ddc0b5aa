"""``python -m nervus_lightning.preview data.csv=PATH [split=train] [n=16]``: see the inputs.

The config is the training config plus ``split``, ``n`` and ``out``; the library function is
:func:`nervus_lightning.workflows.preview.preview`.
"""

from __future__ import annotations

from omegaconf import DictConfig

from nervus_lightning.cli import hydra_command, run_reporting_user_errors
from nervus_lightning.cli.train import train_settings


@hydra_command("preview")
def main(cfg: DictConfig) -> None:
    # Imported when the command runs, so that a typo or --help is answered before Lightning and
    # the training code load (about 3 s of imports).
    from nervus_lightning.workflows.preview import preview

    run_reporting_user_errors(
        lambda: preview(train_settings(cfg), cfg.out, split=str(cfg.split), n=int(cfg.n))
    )
