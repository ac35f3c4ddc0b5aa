"""``python -m nervus_lightning.evaluate predictions=PATH``: rebuild a run's evaluation report."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from nervus_lightning.cli import hydra_command, run_reporting_user_errors
from nervus_lightning.errors import NervusInputError


def _evaluate(cfg: DictConfig) -> None:
    # Imported when the command runs, so that a typo or --help is answered before Lightning and
    # the training code load (about 3 s of imports).
    from nervus_lightning.workflows.evaluate import evaluate_run

    if OmegaConf.is_missing(cfg, "predictions"):
        raise NervusInputError(
            "no predictions file given; run "
            "`python -m nervus_lightning.evaluate predictions=PATH/predictions.csv`."
        )
    options = OmegaConf.to_container(cfg.evaluation, resolve=True)
    evaluate_run(cfg.predictions, cfg.get("out"), **options)


@hydra_command("evaluate")
def main(cfg: DictConfig) -> None:
    run_reporting_user_errors(lambda: _evaluate(cfg))
