"""Which class of a binary classification label is positive.

Positive class (scikit-learn's rule, extended to the usual clinical spellings): when a binary
label's two classes are an obvious negative/positive pair -- ``0/1``, ``-1/1``, ``false/true``,
``no/yes``, ``negative/positive`` (any case; numbers compared as numbers, so ``0.0/1.0`` too) --
the second one is positive. Otherwise the user must name it
(``evaluation.positive_class={label_x: malignant}``): guessing from the sort order would make
sensitivity and specificity swap places without warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nervus_lightning.data.schema import LabelSpec
from nervus_lightning.errors import NervusInputError

#: Negative/positive pairs whose positive member is obvious (compared in lower case).
OBVIOUS_PAIRS = (("false", "true"), ("no", "yes"), ("negative", "positive"))
#: Numeric negative/positive pairs (compared as numbers).
OBVIOUS_NUMERIC_PAIRS = ((0.0, 1.0), (-1.0, 1.0))


def obvious_positive_class(classes: list[str]) -> str | None:
    """The positive member of an obvious negative/positive pair of classes, else ``None``."""
    if len(classes) != 2:
        return None
    try:
        values = [float(c) for c in classes]
    except ValueError:
        values = None
    if values is not None:
        for negative, positive in OBVIOUS_NUMERIC_PAIRS:
            if sorted(values) == [negative, positive]:
                return classes[values.index(positive)]
        return None
    lowered = [c.lower() for c in classes]
    for negative, positive in OBVIOUS_PAIRS:
        if sorted(lowered) == [negative, positive]:
            return classes[lowered.index(positive)]
    return None


def _match_class(value: Any, classes: list[str]) -> str | None:
    """The class named by a config value (YAML may turn ``1`` or ``true`` into int/bool)."""
    if str(value) in classes:
        return str(value)
    if isinstance(value, bool):
        found = [c for c in classes if c.lower() == str(value).lower()]
        return found[0] if len(found) == 1 else None
    if isinstance(value, int | float):
        found = []
        for c in classes:
            try:
                if float(c) == float(value):
                    found.append(c)
            except ValueError:
                continue
        return found[0] if len(found) == 1 else None
    return None


def resolve_positive_classes(
    labels: list[LabelSpec], requested: Mapping[str, Any] | None
) -> dict[str, str]:
    """Positive class of every binary label: the one requested, else the obvious one.

    Raises:
        NervusInputError: a requested label that is not a binary label of this model, a class
            that is not one of the label's classes, or a binary label whose classes are not an
            obvious pair and for which no positive class was given.
    """
    requested = dict(requested or {})
    by_name = {spec.name: spec for spec in labels}
    for name in requested:
        spec = by_name.get(name)
        if spec is None or spec.task != "classification":
            raise NervusInputError(
                f"evaluation.positive_class names {name!r}, which is not a classification label "
                f"of this model (labels: {[s.name for s in labels]})."
            )
        if len(spec.classes or []) != 2:
            raise NervusInputError(
                f"evaluation.positive_class.{name}: {name!r} has {len(spec.classes or [])} "
                f"classes {spec.classes}; only binary labels have a positive class."
            )
    positives: dict[str, str] = {}
    for spec in labels:
        classes = list(spec.classes or [])
        if len(classes) != 2:
            continue
        if spec.name in requested:
            match = _match_class(requested[spec.name], classes)
            if match is None:
                raise NervusInputError(
                    f"evaluation.positive_class.{spec.name}={requested[spec.name]!r} is not a "
                    f"class of {spec.name!r}; its classes are {classes}."
                )
            positives[spec.name] = match
            continue
        obvious = obvious_positive_class(classes)
        if obvious is None:
            raise NervusInputError(
                f"binary label {spec.name!r} has classes {classes}, which are not an obvious "
                "negative/positive pair (0/1, false/true, no/yes, negative/positive). Say which "
                "class is positive, e.g. "
                f"evaluation.positive_class={{{spec.name}:{classes[-1]}}} on the command line "
                f"(or evaluation={{'positive_class': {{'{spec.name}': '{classes[-1]}'}}}} for "
                "NervusModule): sensitivity, PPV and the threshold refer to it."
            )
        positives[spec.name] = obvious
    return positives
