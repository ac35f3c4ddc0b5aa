"""``python -m nervus_lightning``: train, validate and test (Hydra command line).

With no arguments it trains on the embedded demo data; ``data.csv=PATH`` switches to a CSV.
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nervus_lightning.cli import hydra_command, run_reporting_user_errors


@hydra_command("train")
def main(cfg: DictConfig) -> float:
    # Imported when the command runs, so that a typo or --help is answered before Lightning and
    # the training code load (about 3 s of imports).
    from nervus_lightning.train import train

    return run_reporting_user_errors(lambda: train(cfg, HydraConfig.get().runtime.output_dir))
