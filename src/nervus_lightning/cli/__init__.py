"""The command line: Hydra entry points that turn configs into library calls.

This package is the only place that reads Hydra configs: each command's ``main`` turns the
composed config into the plain arguments of a library function (:mod:`nervus_lightning.workflows`,
and :func:`nervus_lightning.workflows.evaluate.evaluate_run`), and turns a user error
(:class:`~nervus_lightning.errors.NervusInputError`) into one message on stderr and exit status 2,
an unknown command-line option included (:mod:`.overrides` checks them before Hydra composes the
config). Library modules never import it. ``python -m nervus_lightning`` and ``python -m
nervus_lightning.<command>`` (``train``, ``predict``, ``preview``, ``explain``, ``export``) are
three-line shims that call the ``main`` of the module of the same name here;
``python -m nervus_lightning.evaluate`` calls :func:`.evaluate.main` too.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from nervus_lightning.cli.overrides import DATA_COMMANDS, check_overrides, with_csv_data_group
from nervus_lightning.config import config_dir
from nervus_lightning.errors import NervusInputError

USER_ERROR_STATUS = 2


def run_reporting_user_errors(command: Callable[[], Any]) -> Any:
    """Run ``command``; a user error becomes one line on stderr and exit status 2."""
    try:
        return command()
    except NervusInputError as err:
        print(f"nervus_lightning: error: {err}", file=sys.stderr)
        sys.exit(USER_ERROR_STATUS)


def hydra_command(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[..., Any]]:
    """``hydra.main`` on the config ``config_name`` of this package, overrides checked first.

    A misspelt key or group choice on the command line exits with status 2 and the closest
    existing one (:func:`~nervus_lightning.cli.overrides.check_overrides`) before Hydra would
    answer it with exit status 1 and a suggestion to add the key with ``+``. For ``train`` and
    ``preview``, ``data.csv=PATH`` without a ``data=`` choice adds ``data=csv``
    (:func:`~nervus_lightning.cli.overrides.with_csv_data_group`).
    """

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[..., Any]:
        hydra_main = hydra.main(
            config_path=config_dir(), config_name=config_name, version_base="1.3"
        )(task)

        @functools.wraps(task)
        def main(cfg_passthrough: DictConfig | None = None) -> Any:
            if cfg_passthrough is None:  # the command line, not a call with a config
                if config_name in DATA_COMMANDS:
                    sys.argv[1:] = run_reporting_user_errors(
                        lambda: with_csv_data_group(sys.argv[1:])
                    )
                run_reporting_user_errors(lambda: check_overrides(config_name, sys.argv[1:]))
            return hydra_main(cfg_passthrough)

        return main

    return decorate
