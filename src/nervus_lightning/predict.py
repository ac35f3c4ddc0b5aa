"""``python -m nervus_lightning.predict ckpt=PATH data.csv=PATH``: external validation.

Loads a checkpoint (which carries the schema, class names, input statistics and, for survival,
the baseline hazard), reads the CSV with that schema and writes predictions and metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nervus_lightning.__main__ import report_user_error
from nervus_lightning.config import config_dir
from nervus_lightning.data.schema import NervusInputError

log = logging.getLogger(__name__)


def predict(
    ckpt: str | Path,
    csv: str | Path,
    out_dir: str | Path,
    batch_size: int = 64,
    num_workers: int = 0,
    trainer_options: dict | None = None,
    evaluation: dict | None = None,
) -> dict:
    """Predict ``csv`` with the model in ``ckpt``; write outputs to ``out_dir``; return metrics.

    Where the CSV has labels, the evaluation report (``out_dir/evaluation``) is written too, with
    ``evaluation`` options as in the ``evaluation`` config group; binary thresholds, survival
    baseline and training follow-up come from the checkpoint."""
    from nervus_lightning.data.datamodule import NervusDataModule
    from nervus_lightning.evaluate import evaluate_run
    from nervus_lightning.module import NervusModule
    from nervus_lightning.outputs import write_predictions_and_metrics

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise NervusInputError(f"checkpoint not found: {ckpt}. Pass ckpt=PATH of a .ckpt file.")
    module = NervusModule.load_from_checkpoint(ckpt, map_location="cpu")
    datamodule = NervusDataModule(
        csv,
        schema=module.schema,
        image_size=module.hparams.image_size,
        in_channels=module.hparams.in_channels,
        batch_size=batch_size,
        num_workers=num_workers,
    )
    options = {"logger": False, "enable_model_summary": False, **(trainer_options or {})}
    trainer = L.Trainer(**options)
    _, metrics = write_predictions_and_metrics(module, datamodule, out_dir, trainer)
    if metrics:
        evaluate_run(Path(out_dir) / "predictions.csv", **(evaluation or {}))
    log.info("predictions of %s written to %s", csv, out_dir)
    return metrics


@hydra.main(config_path=config_dir(), config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        predict(
            cfg.ckpt,
            cfg.data.csv,
            HydraConfig.get().runtime.output_dir,
            batch_size=cfg.data.batch_size,
            num_workers=cfg.data.num_workers,
            trainer_options=OmegaConf.to_container(cfg.trainer, resolve=True),
            evaluation=OmegaConf.to_container(cfg.evaluation, resolve=True),
        )
    except NervusInputError as err:
        report_user_error(err)


if __name__ == "__main__":
    main()
