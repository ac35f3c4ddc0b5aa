"""Command-line overrides checked against the configs before Hydra runs a command.

Hydra answers a misspelt key (``trainer.max_epoch=1``) with "To append to your config use
+trainer.max_epoch=1" and exit status 1, which sends the user the wrong way, and a misspelt group
choice (``optimizer=adamm``) with its search path. :func:`check_overrides` reads the same command
line first, composes the config with Hydra's compose API (once; a few times more to find the
culprit when it fails) and turns such a typo into one
:class:`~nervus_lightning.errors.NervusInputError` that names the closest existing key or
choice, so the entry points exit with status 2 like every other user error.

Only what is unknown is reported: a key absent from the composed config, a choice absent from its
group, a group name that does not exist. Anything else that Hydra would refuse (a value of the
wrong type, a sweep without ``-m``, an error in a ``hydra.*`` override) is left to Hydra, which
reports it as before. Sweep overrides (``-m optimizer.lr=1e-3,1e-4``) have their key checked and,
for a group, each choice; ``+key``, ``++key`` and ``~key`` are the user's explicit request and
are passed through. A command line with ``--config-path`` or ``--config-dir`` composes from
folders this check does not see and is left to Hydra.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import warnings
from collections.abc import Iterator, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.config_loader import ConfigLoader
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nervus_lightning.config import config_dir
from nervus_lightning.errors import NervusInputError
from nervus_lightning.options import check_choice
from nervus_lightning.workflows.settings import DEMO_PRESETS

# Flags after which Hydra prints something instead of running the command.
_INFO_FLAGS = ("help", "hydra_help", "info", "shell_completion", "experimental_rerun")
_CHOICE_SWEEPS = (ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP)


# Commands whose config has the ``data`` group (conf/data/), where ``data.csv=PATH`` picks it.
DATA_COMMANDS = ("train", "preview")


def with_csv_data_group(args: Sequence[str]) -> list[str]:
    """``args`` plus ``data=csv`` where they set ``data.csv`` and choose no ``data`` group.

    ``data.csv=trial.csv`` alone means the user's own CSV: it reads with conf/data/csv.yaml
    (images at 256 px, loader workers), not with the embedded demo's group, whose small images,
    small network and few epochs are chosen to show the demo in seconds. ``data=demo`` (or
    ``data=demo_volumes``) with a CSV is refused; another preset (``data=whas500``) or
    ``data=csv`` given by the user is kept.
    """
    args = list(args)
    parsed = _parse_command_line(args)
    if parsed is None:
        return args
    try:
        overrides = OverridesParser.create().parse_overrides(parsed.overrides)
    except HydraException:
        return args  # Hydra reports the syntax error
    keys = {o.key_or_group: o for o in overrides if not o.is_delete()}
    if "data.csv" not in keys:
        return args
    group = keys.get("data")
    if group is None:
        # Next to data.csv=...: argparse refuses overrides after a flag's value (--cfg job).
        at = next(i for i, arg in enumerate(args) if arg.lstrip("+").startswith("data.csv="))
        return [*args[:at], "data=csv", *args[at:]]
    if not group.is_sweep_override() and group.value() in DEMO_PRESETS:
        raise NervusInputError(
            f"data={group.value()} is the embedded demo data and cannot read data.csv="
            f"{keys['data.csv'].value()}: leave data= out (or write data=csv) to train on a CSV"
        )
    return args


def check_overrides(config_name: str, args: Sequence[str]) -> None:
    """Raise :class:`NervusInputError` for the first override of ``args`` that is unknown.

    ``args`` is the command line after the program name (``sys.argv[1:]``), flags included;
    ``config_name`` the command's primary config (``train``, ``predict``...). The error names the
    override and the closest existing key or choice (``Did you mean 'trainer.max_epochs'?``).
    """
    parsed = _parse_command_line(args)
    if parsed is None:
        return
    config_name = parsed.config_name or config_name
    try:
        overrides = OverridesParser.create().parse_overrides(parsed.overrides)
    except HydraException:
        return  # a syntax error: Hydra's own message points at the character
    # Hydra warns again when it composes the same command line (a plugin folder that is absent).
    with warnings.catch_warnings(), initialize_config_dir(config_dir(), version_base="1.3"):
        warnings.simplefilter("ignore")
        cfg = _check_composed(config_name, overrides, GlobalHydra.instance().config_loader())
    if cfg is not None and parsed.cfg is None:  # --cfg prints the config, values missing or not
        _check_required(config_name, cfg, overrides)


def _check_required(config_name: str, cfg: DictConfig, overrides: list[Override]) -> None:
    """A value the command needs (``???`` in its config, ``ckpt``, ``data.csv``) that the command
    line leaves out: Hydra ran the command until it read the value and exited with status 1 and
    an OmegaConf traceback."""
    swept = {o.key_or_group for o in overrides if o.is_sweep_override()}
    missing = [key for key in OmegaConf.missing_keys(cfg) if key not in swept]
    if missing:
        command = "nervus_lightning"
        if config_name != "train":
            command += f".{config_name}"
        values = " ".join(f"{key}=..." for key in sorted(missing))
        raise NervusInputError(
            f"python -m {command} needs {', '.join(sorted(missing))}: add {values} to the "
            "command line."
        )


def _check_composed(
    config_name: str, overrides: list[Override], loader: ConfigLoader
) -> DictConfig | None:
    """Group choices of sweeps and groups written with dots first, then one composition (the
    composed config, or None where Hydra refused it)."""
    groups = set(_all_groups(loader, ""))
    app = [o for o in overrides if not o.is_hydra_override()]
    # A plugin folder (hydra.searchpath=[...]) may add groups and choices the loader does not see.
    own_folders_only = not any(o.key_or_group == "hydra.searchpath" for o in overrides)
    for override in app:
        group = override.key_or_group.replace(".", "/")
        if override.key_or_group in groups and override.is_sweep_override() and own_folders_only:
            for choice in _sweep_choices(override):
                check_choice(override.key_or_group, choice, loader.get_group_options(group))
        elif "." in override.key_or_group and group in groups and _is_plain(override):
            if not isinstance(override.value(), dict):
                raise NervusInputError(
                    f"{override.input_line}: {override.key_or_group} is a config group, chosen "
                    f"with a slash: {group}={override.get_value_element_as_str()}."
                )
    single = [o for o in overrides if not o.is_sweep_override()]
    try:
        cfg = compose(config_name, overrides=[o.input_line for o in single])
    except MissingConfigException as err:
        _raise_missing_choice(err, app)
        return None
    except (HydraException, OmegaConfBaseException):
        _find_unknown_key(config_name, single, groups)
        return None
    for override in app:
        if override.is_sweep_override() and override.key_or_group not in groups:
            message = _unknown_key_message(cfg, override, groups) if _is_plain(override) else None
            if message and own_folders_only:
                raise NervusInputError(message)
    return cfg


def _find_unknown_key(config_name: str, overrides: list[Override], groups: set[str]) -> None:
    """Hydra refused ``overrides``: raise for a plain ``key=value`` that it refuses for its key."""
    plain = [
        o
        for o in overrides
        if not o.is_hydra_override() and _is_plain(o) and o.key_or_group not in groups
    ]
    base = [o.input_line for o in overrides if all(o is not p for p in plain)]
    try:
        cfg = compose(config_name, overrides=base)
    except (HydraException, OmegaConfBaseException):
        return  # not a key of ours: Hydra's message
    for override in plain:
        message = _unknown_key_message(cfg, override, groups)
        if message is None:
            continue
        try:  # confirm: a group from a plugin folder is known to Hydra, not to this check
            compose(config_name, overrides=[*base, override.input_line])
        except (HydraException, OmegaConfBaseException):
            raise NervusInputError(message) from None


def _parse_command_line(args: Sequence[str]) -> argparse.Namespace | None:
    """Hydra's own reading of the command line, or None where this check does not apply."""
    if "--version" in args:
        return None
    # The parser hydra.main uses (a Hydra internal: without it the check steps aside), so that
    # flags and their values (-cn NAME, --cfg job) are read the same way.
    try:
        from hydra._internal.utils import get_args_parser

        with contextlib.redirect_stderr(io.StringIO()):
            parsed = get_args_parser().parse_args(list(args))
    except (ImportError, SystemExit):
        return None
    if any(getattr(parsed, flag, None) for flag in _INFO_FLAGS):
        return None
    if parsed.config_path is not None or parsed.config_dir is not None:
        return None
    return parsed


def _all_groups(loader: ConfigLoader, parent: str) -> Iterator[str]:
    for name in loader.list_groups(parent):
        group = f"{parent}/{name}" if parent else name
        yield group
        yield from _all_groups(loader, group)


def _is_plain(override: Override) -> bool:
    """A ``key=value`` override without ``+``, ``++``, ``~`` or ``@package``."""
    return not (
        override.is_add()
        or override.is_force_add()
        or override.is_delete()
        or override.package is not None
    )


def _sweep_choices(override: Override) -> list[str]:
    if override.value_type not in _CHOICE_SWEEPS:
        return []  # glob(...) and the like pick among the group's options themselves
    return [str(choice) for choice in override.sweep_string_iterator()]


def _raise_missing_choice(err: MissingConfigException, overrides: list[Override]) -> None:
    """A group choice that has no YAML file: the closest one, if a command-line word chose it."""
    group, _, choice = (err.missing_cfg_file or "").rpartition("/")
    for override in overrides:
        if override.key_or_group == group and override.value() == choice:
            check_choice(group, choice, err.options or [])


def _unknown_key_message(cfg: DictConfig, override: Override, groups: set[str]) -> str | None:
    """The error for ``override`` if its key is absent where Hydra's struct mode refuses it."""
    parts = override.key_or_group.split(".")
    node = cfg
    for depth, name in enumerate(parts):
        if not isinstance(node, DictConfig) or OmegaConf.is_missing(node, name):
            return None  # a list index, a leaf, an unset value: Hydra decides
        if name not in node.keys():
            if not OmegaConf.is_struct(node):
                return None
            return _message(cfg, override, depth, node, groups)
        if OmegaConf.is_interpolation(node, name):
            return None
        node = node[name]
    return None


def _message(
    cfg: DictConfig, override: Override, depth: int, parent: DictConfig, groups: set[str]
) -> str:
    key = override.key_or_group
    if "/" in key:
        close = difflib.get_close_matches(key, sorted(groups), 1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"unknown config group {key} (in {override.input_line}).{hint}"
    parts = key.split(".")
    siblings = [str(k) for k in parent.keys()]
    close = difflib.get_close_matches(parts[depth], siblings, 1)
    if close:
        suggestion = ".".join([*parts[:depth], close[0], *parts[depth + 1 :]])
    else:  # a key of another group (lr=1e-3, optimizer.max_epochs=1)
        suggestion = _same_name_elsewhere(cfg, parts[-1])
    hint = f" Did you mean '{suggestion}'?" if suggestion else ""
    where = ".".join(parts[:depth]) or "the top level"
    return (
        f"unknown option {key} (in {override.input_line}).{hint} "
        f"Options of {where}: {sorted(siblings)}."
    )


def _same_name_elsewhere(cfg: DictConfig, name: str) -> str | None:
    keys = list(_leaf_keys(cfg, ""))
    exact = [key for key in keys if key.rsplit(".", 1)[-1] == name]
    if exact:
        return exact[0]
    names = {key.rsplit(".", 1)[-1]: key for key in keys}
    close = difflib.get_close_matches(name, list(names), 1, cutoff=0.8)
    return names[close[0]] if close else None


def _leaf_keys(node: DictConfig, prefix: str) -> Iterator[str]:
    for key in node.keys():
        path = f"{prefix}{key}"
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not OmegaConf.is_interpolation(node, key):
            yield from _leaf_keys(child, f"{path}.")
        else:
            yield path
