"""``python -m nervus_lightning``: train, validate and test (Hydra command line).

With no arguments it trains on the embedded demo data; ``data.csv=PATH`` switches to a CSV. The
composed config becomes :class:`~nervus_lightning.workflows.settings.TrainSettings` for
:func:`nervus_lightning.workflows.train.train`.
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nervus_lightning.cli import hydra_command, run_reporting_user_errors
from nervus_lightning.workflows.settings import TrainSettings


def train_settings(cfg: DictConfig) -> TrainSettings:
    """The settings of a composed ``train`` config (or one built on it, as ``preview``'s)."""
    return TrainSettings.from_config(OmegaConf.to_container(cfg, resolve=True))


@hydra_command("train")
def main(cfg: DictConfig) -> float:
    # Imported when the command runs, so that a typo or --help is answered before Lightning and
    # the training code load (about 3 s of imports).
    from nervus_lightning.workflows.train import train

    return run_reporting_user_errors(
        lambda: train(train_settings(cfg), HydraConfig.get().runtime.output_dir)
    )
