"""The user's errors and the CSV column conventions: a leaf every layer may import.

This module owns :class:`NervusInputError` (a problem with the user's data or configuration,
told in one message that names the file, column, CSV lines and what to do; the command line
turns it into exit status 2) and :class:`ImageReadError` (an image file that cannot be read),
the names of the columns of a Nervus CSV (see DESIGN.md), the values of its ``split`` column,
and how messages name CSV lines. It imports nothing of the package, so that data readers,
models, tasks and the command line can share these without importing one another. The CSV
contract itself (validation, the schema) is :mod:`nervus_lightning.data.schema`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable


class NervusInputError(ValueError):
    """A problem with the user's data or configuration, told in one actionable message."""


class ImageReadError(NervusInputError):
    """An image file is missing or cannot be decoded (a user error: reported without traceback).

    Attributes:
        path: the file, as given.
        reason: what is wrong and what to do about it.
    """

    def __init__(self, path: str | os.PathLike, reason: str | None = None) -> None:
        if reason is None:
            # Re-raised by a DataLoader worker with the worker's formatted traceback as the only
            # argument: keep its last line, which is this error's own message.
            last = str(path).rstrip().splitlines()[-1]
            message = last.split(f"{type(self).__name__}: ", 1)[-1]
            self.path, self.reason = "", message
            super().__init__(message)
            return
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image '{self.path}': {reason}")

    def __reduce__(self):  # keeps the two-argument constructor picklable (DataLoader workers)
        return (type(self), (self.path, self.reason))


ID_COLUMN = "uniqID"
IMAGE_COLUMN = "imgpath"
#: Several images per case: one ``imgpath_<view>`` column per view (``imgpath_frontal``...).
VIEW_PREFIX = IMAGE_COLUMN + "_"
#: The view name of a plain ``imgpath`` column when it stands next to ``imgpath_<view>`` columns.
PLAIN_VIEW = "image"
SPLIT_COLUMN = "split"
GROUP_COLUMN = "group"
INPUT_PREFIX = "input_"
LABEL_PREFIX = "label_"
PERIOD_PREFIXES = ("period_", "periods_")

TRAIN, VAL, TEST, EXCLUDE = "train", "val", "test", "exclude"
EXTERNAL = "external"

#: How many CSV lines (or values) a message lists before "and N more".
MAX_LISTED = 5


def is_valid_split(value: str) -> bool:
    """Whether ``value`` is a valid ``split`` cell (``external_<name>`` included)."""
    return value in (TRAIN, VAL, TEST, EXCLUDE, EXTERNAL) or value.startswith(EXTERNAL + "_")


def csv_lines(index: Iterable[int]) -> str:
    """Format row positions as CSV line numbers (header = line 1), listing the first few."""
    rows = [int(i) + 2 for i in index]
    shown = ", ".join(str(r) for r in rows[:MAX_LISTED])
    more = f" and {len(rows) - MAX_LISTED} more" if len(rows) > MAX_LISTED else ""
    return f"line{'s' if len(rows) > 1 else ''} {shown}{more}"
