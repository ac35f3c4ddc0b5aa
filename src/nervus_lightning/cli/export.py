"""``python -m nervus_lightning.export ckpt=PATH [format=onnx|torch_export]``: deployment files."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from nervus_lightning.cli import hydra_command, run_reporting_user_errors


@hydra_command("export")
def main(cfg: DictConfig) -> None:
    # Imported when the command runs, so that a typo or --help is answered before Lightning and
    # the training code load (about 3 s of imports).
    from nervus_lightning.workflows.export import export_model

    # The ONNX exporter's optimiser passes log every step at INFO, which Hydra's logging shows.
    for name in ("onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)

    def command() -> None:
        # export_model logs what it wrote (the log is the console here).
        export_model(cfg.ckpt, str(cfg.format), out=cfg.out, opset=int(cfg.opset))

    run_reporting_user_errors(command)
