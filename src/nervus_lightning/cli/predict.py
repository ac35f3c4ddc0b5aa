"""``python -m nervus_lightning.predict ckpt=PATH data.csv=PATH``: external validation."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nervus_lightning.cli import hydra_command, run_reporting_user_errors


@hydra_command("predict")
def main(cfg: DictConfig) -> None:
    # Imported when the command runs, so that a typo or --help is answered before Lightning and
    # the training code load (about 3 s of imports).
    from nervus_lightning.workflows.predict import predict

    run_reporting_user_errors(
        lambda: predict(
            cfg.ckpt,
            cfg.data.csv,
            HydraConfig.get().runtime.output_dir,
            batch_size=cfg.data.batch_size,
            num_workers=cfg.data.num_workers,
            device=cfg.device,
            evaluation=OmegaConf.to_container(cfg.evaluation, resolve=True),
        )
    )
