"""Checks of option values, shared by every component that takes user options.

This module owns how a wrong option is told to the user: one :class:`NervusInputError` that names
the configuration key (``optimizer.lr``, ``evaluation.threshold``...), the value given and the
values allowed. Components call these checks when they are built, so that with the command line
every typo stops the run before the first epoch (the entry points turn the error into exit
status 2), and a library user gets the same message as a ``ValueError``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from nervus_lightning.errors import NervusInputError


def check_choice(key: str, value: Any, allowed: Iterable[str]) -> str:
    """``value`` must be one of ``allowed``; the error suggests the closest one."""
    allowed = list(allowed)
    if value in allowed:
        return value
    close = difflib.get_close_matches(str(value), allowed, 1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise NervusInputError(f"{key}={value!r} is not one of {allowed}.{hint}")


def check_keys(key: str, options: Mapping[str, Any], allowed: Collection[str]) -> None:
    """Every name in ``options`` must be in ``allowed`` (a typo names the closest one)."""
    unknown = [name for name in options if name not in allowed]
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, list(allowed), 1)
    hint = f" Did you mean '{key}.{close[0]}'?" if close else ""
    raise NervusInputError(
        f"unknown option {key}.{name}.{hint} Options of {key}: {sorted(allowed)}."
    )


def keyword_names(target: Callable[..., Any], skip: Collection[str] = ()) -> list[str]:
    """Keyword parameters of ``target`` (a function or a class), without ``*args/**kwargs``."""
    params = inspect.signature(target).parameters.values()
    return [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skip
    ]


def check_call_options(
    key: str, target: Callable[..., Any], options: Mapping[str, Any], skip: Collection[str] = ()
) -> None:
    """The names of ``options`` must be keyword arguments that ``target`` accepts."""
    check_keys(key, options, keyword_names(target, skip))


def check_number(
    key: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> float:
    """``value`` must be a number within the given bounds (closed unless ``*_open``)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return value
    what = "an integer" if integer else "a number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    rule = f" {' and '.join(bounds)}" if bounds else ""
    raise NervusInputError(f"{key}={value!r} must be {what}{rule}.")
