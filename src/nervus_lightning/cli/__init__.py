"""The command line: Hydra entry points that turn configs into library calls.

This package is the only place that parses Hydra configs into objects for the commands and
turns a user error (:class:`~nervus_lightning.data.schema.NervusInputError`) into one message on
stderr and exit status 2. Library modules never import it; ``python -m nervus_lightning`` and
``python -m nervus_lightning.<command>`` (``predict``, ``evaluate``, ``preview``, ``explain``,
``export``) are thin shims
that call the ``main`` of the module of the same name here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from nervus_lightning.data.schema import NervusInputError

USER_ERROR_STATUS = 2


def run_reporting_user_errors(command: Callable[[], Any]) -> Any:
    """Run ``command``; a user error becomes one line on stderr and exit status 2."""
    try:
        return command()
    except NervusInputError as err:
        print(f"nervus_lightning: error: {err}", file=sys.stderr)
        sys.exit(USER_ERROR_STATUS)
