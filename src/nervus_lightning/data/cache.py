"""Decoded-image cache (``data.cache``): every image is read and resized once, not every epoch.

This module owns what is cached, where, and when a cached image is stale. What is cached is the
input-independent part of the evaluation transform: :func:`~nervus_lightning.data.images.read_image`
(LUTs, window, bit depth, channels) followed by the deterministic resize to ``image_size``,
quantised to integers:

* ``uint8`` (value ``round(255 x)``) when the data set is 8-bit (``bit_depth`` 8 and every file
  an 8-bit image, no DICOM): exact when the file is already ``image_size`` square (its values
  are multiples of 1/255); after an actual resize the interpolated value is rounded to the
  nearest 1/255, an error of at most 1/510, half a gray level of the source.
* ``uint16`` (``round(65535 x)``) otherwise (16-bit PNG/TIFF, DICOM after windowing, float
  images): error at most 1/131070 (half a step of 1/65535).

Training augmentation still runs per epoch, on the cached image: the presets that resize to
``image_size`` before anything random (``none``, ``randaug``, ``trivialaugwide``) then see the
same input as without the cache. ``xray`` crops at the file's own resolution before resizing,
so its training split is read from the files (the other splits still use the cache).

Volumes (``data.volume_size``) are cached the same way: each one read, resampled and windowed
once (:func:`~nervus_lightning.data.volume_input.read_training_volume`), stored as ``uint16``
``(1, D, H, W)`` rows; the volume settings are part of the key.

Modes: ``memory`` (one array per image column in this process), ``disk`` (a memory-mapped
``.npy`` per image column under ``cache_dir``, shared by DDP ranks and sweep jobs), ``none``, and
``auto``: ``memory`` when the cached arrays fit :func:`memory_budget`, else ``disk``.

A disk array's name is a hash of the reading settings (image size, channels, bit depth, DICOM
window and frame, format version) and of every file's absolute path, size and modification time,
so a changed, added or removed file gives a new array (the column is decoded again), and a sweep
job or a DDP rank with the same data finds the array the first one built. It is written to a
temporary file and renamed when complete, under an exclusive ``flock`` on a lock file: a process
that waits for the lock then finds the finished array and uses it; a killed builder leaves only
its temporary file (the lock dies with it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nervus_lightning.data.dicom import Window, window_key
from nervus_lightning.data.images import _declared_depth, read_image
from nervus_lightning.data.transforms import build_eval_transform
from nervus_lightning.data.volume_input import VolumeSettings, read_training_volume

log = logging.getLogger(__name__)

CACHE_MODES = ("auto", "none", "memory", "disk")
#: Share of the available RAM that ``auto`` lets the memory cache take (all processes of a node).
MEMORY_FRACTION = 0.25
# Bumped when what is stored changes, so that old arrays are never read as new ones.
_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$NERVUS_LIGHTNING_CACHE/images`` if set, else ``~/.cache/nervus_lightning/images``."""
    configured = os.environ.get("NERVUS_LIGHTNING_CACHE")
    root = Path(configured) if configured else Path.home() / ".cache" / "nervus_lightning"
    return root / "images"


@dataclass(frozen=True)
class ReadSettings:
    """How images are read; every field is part of a disk array's key. ``volume``: the
    images are volumes, read with these settings (``image_size`` and ``frame`` then unused)."""

    image_size: int
    in_channels: int
    bit_depth: int | None
    window: Window
    frame: str
    volume: VolumeSettings | None = None

    @property
    def item_shape(self) -> tuple[int, ...]:
        """The shape of one cached image: ``(C, S, S)``, or ``(1, D, H, W)`` for a volume."""
        if self.volume is not None:
            return (1, *self.volume.shape)
        return (self.in_channels, self.image_size, self.image_size)

    def key_fields(self) -> dict[str, Any]:
        fields = {
            "version": _FORMAT_VERSION,
            "image_size": self.image_size,
            "in_channels": self.in_channels,
            "bit_depth": self.bit_depth,
            "window": window_key(self.window),
            "frame": self.frame,
        }
        if self.volume is not None:  # absent for 2D images: their keys stay as they were
            fields["volume"] = self.volume.key_fields()
        return fields


def available_memory_bytes() -> int | None:
    """Memory available to new allocations (Linux ``MemAvailable``), or None when unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget(max_gb: float | None = None, processes: int | None = None) -> int | None:
    """Bytes ``auto`` lets one process's memory cache take.

    ``max_gb`` (``data.cache_max_gb``) when given; else :data:`MEMORY_FRACTION` of the available
    RAM divided by ``processes``, the processes of this node (default ``LOCAL_WORLD_SIZE``): each
    DDP rank holds its own copy. None when the available memory cannot be read (``auto`` then
    uses the disk).
    """
    if max_gb is not None:
        return int(float(max_gb) * 1024**3)
    available = available_memory_bytes()
    if available is None:
        return None
    if processes is None:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return int(available * MEMORY_FRACTION / max(1, processes))


def estimated_bytes(n_images: int, settings: ReadSettings) -> int:
    """Size of the cached arrays of ``n_images`` images (2 bytes a value beyond 8 bits)."""
    itemsize = 1 if settings.bit_depth is not None and settings.bit_depth <= 8 else 2
    if settings.volume is not None:
        itemsize = 2
    return n_images * int(np.prod(settings.item_shape)) * itemsize


def resolve_mode(
    mode: str,
    n_images: int,
    settings: ReadSettings,
    max_gb: float | None = None,
    processes: int | None = None,
) -> str:
    """``memory``, ``disk`` or ``none`` for ``data.cache=mode`` (``auto`` by the budget)."""
    if mode != "auto":
        return mode
    budget = memory_budget(max_gb, processes)
    if budget is not None and estimated_bytes(n_images, settings) <= budget:
        return "memory"
    return "disk"


def _storage_dtype(paths: Sequence[str], settings: ReadSettings) -> np.dtype:
    if settings.volume is not None or settings.bit_depth is None or settings.bit_depth > 8:
        return np.dtype(np.uint16)
    with ThreadPoolExecutor() as pool:
        kinds = [kind for kind, _ in pool.map(_declared_depth, paths)]
    return np.dtype(np.uint8 if all(k == "8-bit" for k in kinds) else np.uint16)


def _fill(
    target: np.ndarray, rows: Sequence[int], paths: Sequence[str], settings: ReadSettings
) -> None:
    """Decode ``paths`` into ``target[rows]`` (threads: Pillow and zlib release the GIL)."""
    resize = build_eval_transform(settings.image_size)
    scale = float(np.iinfo(target.dtype).max)

    def one(pair: tuple[int, str]) -> None:
        row, path = pair
        if settings.volume is not None:
            values = read_training_volume(path, settings.volume).numpy()
            target[row] = np.rint(values.astype(np.float64) * scale).astype(target.dtype)
            return
        image = read_image(
            path,
            settings.in_channels,
            bit_depth=settings.bit_depth,
            window=settings.window,
            frame=settings.frame,
        )
        values = resize(image).numpy()
        target[row] = np.rint(values.astype(np.float64) * scale).astype(target.dtype)

    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, zip(rows, paths, strict=True)))


def _present(paths: Sequence[str | None]) -> tuple[list[int], list[str]]:
    rows = [i for i, p in enumerate(paths) if p]
    return rows, [str(paths[i]) for i in rows]


def build_memory_array(paths: Sequence[str | None], settings: ReadSettings) -> np.ndarray:
    """One image column decoded into an ``(N, C, S, S)`` (volumes: ``(N, 1, D, H, W)``) array
    (rows of empty cells stay 0)."""
    rows, present = _present(paths)
    array = np.zeros((len(paths), *settings.item_shape), _storage_dtype(present, settings))
    _fill(array, rows, present, settings)
    return array


def disk_key(paths: Sequence[str | None], settings: ReadSettings) -> str:
    """Hash of the reading settings and of each file's absolute path, size and mtime."""
    digest = hashlib.sha256(json.dumps(settings.key_fields(), sort_keys=True).encode())
    for path in paths:
        if not path:
            digest.update(b"\0-\n")
            continue
        absolute = os.path.abspath(path)
        stat = os.stat(absolute)
        digest.update(f"{absolute}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


@contextmanager
def _exclusive(lock_path: Path):
    """An exclusive lock held while the block runs (none where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: two builders at worst write the same array twice
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def open_disk_array(
    paths: Sequence[str | None], settings: ReadSettings, cache_dir: str | os.PathLike
) -> np.ndarray:
    """One image column as a read-only memory-mapped array, built once under ``cache_dir``."""
    folder = Path(cache_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{disk_key(paths, settings)}.npy"
    if not final.exists():
        with _exclusive(final.with_suffix(".lock")):
            if not final.exists():  # another process may have built it while we waited
                rows, present = _present(paths)
                shape = (len(paths), *settings.item_shape)
                dtype = _storage_dtype(present, settings)
                temporary = folder / f"{final.stem}.{os.getpid()}.tmp.npy"
                started = time.perf_counter()
                array = np.lib.format.open_memmap(temporary, "w+", dtype, shape)
                _fill(array, rows, present, settings)
                array.flush()
                del array
                os.replace(temporary, final)
                log.info(
                    "image cache: %d images decoded into %s in %.1f s",
                    len(present),
                    final,
                    time.perf_counter() - started,
                )
    return np.load(final, mmap_mode="r")


def cached_image(array: np.ndarray, row: int) -> torch.Tensor:
    """Row ``row`` of a cache array as float32 in ``[0, 1]`` (``C x S x S``, or a volume's
    ``1 x D x H x W``)."""
    scale = np.float32(np.iinfo(array.dtype).max)
    return torch.from_numpy(np.asarray(array[row]).astype(np.float32) / scale)


def cached_images(array: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """Rows ``rows`` of a cache array at once, as :func:`cached_image` gives each one
    (``B x C x S x S`` float32 in ``[0, 1]``, the same values)."""
    scale = np.float32(np.iinfo(array.dtype).max)
    return torch.from_numpy(np.asarray(array[rows]).astype(np.float32) / scale)
