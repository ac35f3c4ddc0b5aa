"""``python -m nervus_lightning.explain ckpt=PATH [data.csv=PATH] [split=test] [n=32]``."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nervus_lightning.cli import hydra_command, run_reporting_user_errors


@hydra_command("explain")
def main(cfg: DictConfig) -> None:
    # Imported when the command runs, so that a typo or --help is answered before Lightning and
    # the training code load (about 3 s of imports).
    from nervus_lightning.workflows.explain import EXPLAIN_DIR, explain, explain_settings

    def command() -> None:
        out = Path(cfg.out) if cfg.out else Path(HydraConfig.get().runtime.output_dir) / EXPLAIN_DIR
        settings = explain_settings(OmegaConf.to_container(cfg.explain, resolve=True))
        settings.update(split=str(cfg.split), n=None if cfg.n is None else int(cfg.n))
        explain(
            cfg.ckpt,
            cfg.data.csv,
            out,
            batch_size=int(cfg.data.batch_size),
            num_workers=int(cfg.data.num_workers),
            device=cfg.device,
            **settings,
        )
        # explain() has logged what it explained and where (the log is the console here).
        if (out.parent / "predictions.csv").is_file():
            print(
                "the report shows them once rebuilt: python -m nervus_lightning.evaluate "
                f"predictions={out.parent / 'predictions.csv'}"
            )

    run_reporting_user_errors(command)
