"""The ``evaluation:`` settings, declared once and checked once.

:class:`EvaluationOptions` holds the settings every task kind's evaluation shares (bootstrap,
interval level, seed, which splits are shown, the large-split limit of the bootstrap, the interval
of proportions) and, in :attr:`EvaluationOptions.tasks`, each task kind's own settings: a small
frozen dataclass that the task class declares as its ``options_class`` (classification's
``threshold``, ``target_sensitivity`` and ``positive_class``; survival's ``max_rows_exact``).

An instance is valid by construction: every field is checked in ``__post_init__`` with the
message the command line shows (``evaluation.ci=1.5 must be a number > 0 and < 1.``). The
mapping of an ``evaluation:`` config block becomes one with
:func:`nervus_lightning.tasks.base.evaluation_options`, which knows the task kinds; this module
knows none (the evaluation layer sits below the tasks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nervus_lightning.errors import NervusInputError
from nervus_lightning.evaluation.intervals import PROPORTION_METHODS
from nervus_lightning.options import check_choice, check_keys, check_number


def check_flag(key: str, value: Any) -> bool:
    """``value`` must be true or false (not a string such as ``"no"``)."""
    if not isinstance(value, bool):
        raise NervusInputError(f"{key}={value!r} must be true or false.")
    return value


def option_names(options_class: type) -> list[str]:
    """The ``evaluation.*`` keys a settings dataclass declares (its init fields)."""
    return [f.name for f in dataclasses.fields(options_class) if f.init and f.name != "tasks"]


def pick_options(options_class: type, options: Mapping[str, Any]) -> Any:
    """An instance of ``options_class`` from the keys of ``options`` it declares (the others
    are some other settings' business); missing keys keep their defaults."""
    return options_class(**{k: options[k] for k in option_names(options_class) if k in options})


def set_field(options: Any, name: str, value: Any) -> None:
    """Store a checked, normalised value in a frozen settings dataclass (``__post_init__``)."""
    object.__setattr__(options, name, value)


@dataclass(frozen=True)
class EvaluationOptions:
    """The settings of an evaluation report (the ``evaluation:`` config block).

    Args:
        n_bootstrap: bootstrap resamples per confidence interval; 0 skips the intervals.
        ci: confidence level of the intervals, in (0, 1).
        seed: seed of the bootstrap (and of the survival metrics' subsample).
        train_figures: also draw the ``train`` split in the report's figures.
        train_metrics: compute the ``train`` split's metrics.
        max_rows_bootstrap: a split with more cases is bootstrapped with resamples of this many
            cases (m-out-of-n, intervals rescaled; :mod:`nervus_lightning.evaluation.bootstrap`).
        proportion_ci: interval of the proportions at the operating point: ``wilson`` or
            ``exact`` (Clopper-Pearson).
        tasks: task kind -> that kind's own settings (its ``Task.options_class``); a kind
            not named evaluates with its defaults.

    See :func:`nervus_lightning.workflows.evaluate.evaluate_run` for what each setting does to
    the report.
    """

    n_bootstrap: int = 1000
    ci: float = 0.95
    seed: int = 0
    train_figures: bool = False
    train_metrics: bool = True
    max_rows_bootstrap: int = 5_000
    proportion_ci: str = "wilson"
    tasks: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_number("evaluation.n_bootstrap", self.n_bootstrap, low=0, integer=True)
        check_number("evaluation.ci", self.ci, low=0, high=1, low_open=True, high_open=True)
        check_number("evaluation.seed", self.seed, low=0, integer=True)
        check_number("evaluation.max_rows_bootstrap", self.max_rows_bootstrap, low=2, integer=True)
        check_flag("evaluation.train_metrics", self.train_metrics)
        check_flag("evaluation.train_figures", self.train_figures)
        check_choice("evaluation.proportion_ci", self.proportion_ci, PROPORTION_METHODS)
        for name in ("n_bootstrap", "seed", "max_rows_bootstrap"):
            set_field(self, name, int(getattr(self, name)))
        set_field(self, "ci", float(self.ci))
        set_field(self, "tasks", dict(self.tasks))

    @classmethod
    def from_mapping(
        cls, options: Mapping[str, Any] | None, kinds: Mapping[str, type] | None = None
    ) -> EvaluationOptions:
        """Check an ``evaluation:`` mapping: every key must be a shared setting or a setting of
        one of ``kinds`` (task kind -> its options dataclass), every value valid.

        Raises:
            NervusInputError: an unknown key (the closest known one suggested) or a bad value.
        """
        options = dict(options or {})
        kinds = dict(kinds or {})
        allowed = {*option_names(cls)}
        for options_class in kinds.values():
            allowed.update(option_names(options_class))
        check_keys("evaluation", options, allowed)
        common = pick_options(cls, options)
        tasks = {kind: pick_options(c, options) for kind, c in kinds.items()}
        return dataclasses.replace(common, tasks=tasks)

    def of(self, kind: str, default: type | None = None) -> Any:
        """The settings of task kind ``kind`` (``default()`` when that kind was not given)."""
        found = self.tasks.get(kind)
        if found is None and default is not None:
            return default()
        return found

    def to_dict(self) -> dict[str, Any]:
        """Every setting as a flat ``evaluation:`` mapping (shared ones first), plain values
        only, so that it can be stored in a checkpoint or shown in the report."""
        flat = {name: getattr(self, name) for name in option_names(type(self))}
        for options in self.tasks.values():
            for name in option_names(type(options)):
                value = getattr(options, name)
                flat[name] = dict(value) if isinstance(value, Mapping) else value
        return flat
