"""Building a model part (extractor, mixer, head) from its config entry.

One mechanism for built-in and user parts: an entry names its class with ``_target_`` (a dotted
path, as Hydra's ``instantiate`` uses), or -- for built-ins -- a ``name`` from the part's
registry; the other keys are the class's keyword options. The arguments that come from the data
(feature sizes, channels) are passed by the model as ``fixed`` keywords. Options are checked
against the class's signature first, so a typo stops the run before training with the key
named. The ``_target_`` string is stored in checkpoints, so a user's class must be importable
(installed, or on ``PYTHONPATH``) wherever the checkpoint is used.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from hydra.utils import get_class
from torch import nn

from nervus_lightning.errors import NervusInputError
from nervus_lightning.models.tabular import NORMS
from nervus_lightning.options import check_call_options, check_choice

TARGET_KEY = "_target_"


def resolve_class(key: str, options: Mapping[str, Any], registry: Mapping[str, type]) -> type:
    """The class of a part: ``_target_`` when given, else ``registry[name]``."""
    target = options.get(TARGET_KEY)
    if target is None:
        return registry[check_choice(f"{key}.name", options.get("name"), registry)]
    try:
        cls = get_class(str(target))
    except Exception as err:  # Hydra wraps import errors in several types
        raise NervusInputError(
            f"{key}._target_={target!r} cannot be imported ({err}). Install the package that "
            "defines it, or add its folder to PYTHONPATH."
        ) from None
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise NervusInputError(f"{key}._target_={target!r} is not a torch.nn.Module class.")
    return cls


def build_component(
    key: str, options: Mapping[str, Any], registry: Mapping[str, type], **fixed: Any
) -> nn.Module:
    """Build the part configured under ``key`` with ``fixed`` keywords from the model.

    ``fixed`` keywords the class does not accept are left out (e.g. ``in_channels`` for a user
    extractor that only takes RGB).
    """
    cls = resolve_class(key, options, registry)
    accepted = inspect.signature(cls).parameters
    # ``name`` selects a built-in (or labels a user's entry) unless the class takes it.
    dropped = (TARGET_KEY,) if "name" in accepted else (TARGET_KEY, "name")
    opts = {k: v for k, v in options.items() if k not in dropped}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    fixed = {k: v for k, v in fixed.items() if takes_any or k in accepted}
    check_call_options(key, cls, opts, skip=tuple(fixed))
    if cls.__module__.startswith("nervus_lightning.") and "norm" in opts:
        check_choice(f"{key}.norm", opts["norm"], NORMS)
    try:
        return cls(**fixed, **opts)
    except (TypeError, ValueError) as err:
        raise NervusInputError(f"{key}: cannot build {cls.__name__} with {opts}: {err}") from None
