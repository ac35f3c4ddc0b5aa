"""Files written whole or not at all, with the permissions the user's umask gives.

Every output file is first written to a temporary name in its own folder and then renamed into
place, so a crash never leaves a half-written file under the final name. ``tempfile.mkstemp``
creates its file with mode 0600 whatever the umask; :func:`temporary_sibling` gives it the mode
an ordinary ``open(path, "w")`` would have (``0666`` less the umask), so that colleagues on a
shared server read a run folder as they read any other file of its owner.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "new_file_mode", "temporary_sibling"]


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no way to read it elsewhere without setting it
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """Mode of a file created now by ``open(path, "w")``: ``0666`` less the umask."""
    return 0o666 & ~current_umask()


def temporary_sibling(path: str | os.PathLike) -> tuple[int, str]:
    """An open descriptor and the name of a new temporary file next to ``path`` (same folder,
    so that ``os.replace`` onto ``path`` is atomic), with :func:`new_file_mode`'s mode."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, new_file_mode())
    except OSError:
        os.close(fd)
        os.remove(tmp)
        raise
    return fd, tmp


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then move the temporary file to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_sibling(path)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
