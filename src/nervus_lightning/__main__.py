"""``python -m nervus_lightning``: train, validate and test (Hydra command line).

With no arguments it trains on the embedded demo data; ``data.csv=PATH`` switches to a CSV.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nervus_lightning.config import config_dir
from nervus_lightning.data.schema import NervusInputError

log = logging.getLogger("nervus_lightning")


def report_user_error(err: NervusInputError) -> None:
    """One clear message on stderr and exit status 2, no traceback."""
    print(f"nervus_lightning: error: {err}", file=sys.stderr)
    sys.exit(2)


@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from nervus_lightning.train import train

    try:
        return train(cfg, HydraConfig.get().runtime.output_dir)
    except NervusInputError as err:
        report_user_error(err)


if __name__ == "__main__":
    main()
