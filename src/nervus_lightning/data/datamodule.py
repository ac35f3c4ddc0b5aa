"""``NervusDataModule``: a Nervus CSV turned into Lightning dataloaders.

Owns the datasets of each split (:class:`~nervus_lightning.data.dataset.NervusDataset`, also
importable from here), image decoding and transforms (augmentation on the training
split only), the weighted sampler, the one intensity scaling (bit depth) of every image of the
data set and its DICOM window for files without their own. The CSV is read and validated once,
when the module is built, so every user error surfaces before a model exists. Tabular inputs are
passed *raw*: the model standardises them with the training statistics held in the schema (and
in its checkpoint).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
from torch.utils.data import DataLoader, Dataset

from nervus_lightning.data.cache import (
    CACHE_MODES,
    ReadSettings,
    build_memory_array,
    default_cache_dir,
    open_disk_array,
    resolve_mode,
)
from nervus_lightning.data.dataset import NervusDataset, collate, dicom_settings
from nervus_lightning.data.dicom import (
    DEFAULT_FRAME,
    DEFAULT_WINDOW,
    Window,
    choose_auto_window,
    parse_frame,
    parse_window,
)
from nervus_lightning.data.image_settings import (
    check_image_columns,
    check_stored_bit_depth,
    check_stored_dicom_settings,
    parse_bit_depth,
    window_for_schema,
)
from nervus_lightning.data.images import choose_bit_depth
from nervus_lightning.data.sampling import (
    EpochSampler,
    ResumableLoader,
    global_seed,
    inverse_frequency_weights,
)
from nervus_lightning.data.schema import (
    DataSchema,
    load_table,
    validate_for_prediction,
)
from nervus_lightning.data.volume_augment import AUGMENTATIONS, build_transforms, check_augmentation
from nervus_lightning.data.volume_input import (
    VolumeSettings,
    check_stored_volume,
    check_volume_files,
    check_volume_options,
    volume_schema_entry,
)
from nervus_lightning.data.volumes import choose_volume_auto_window
from nervus_lightning.errors import (
    SPLIT_COLUMN,
    TEST,
    TRAIN,
    VAL,
    NervusInputError,
)
from nervus_lightning.options import check_choice
from nervus_lightning.tasks.registry import task_class

log = logging.getLogger(__name__)

SAMPLERS = ("none", "weighted")
# Training presets that resize to image_size before anything random: they start from the
# cached (resized) image.
RESIZE_FIRST_AUGMENTATIONS = frozenset({"none", "randaug", "trivialaugwide"})
# Presets that crop first (xray: RandomResizedCrop keeps at least 85 % of the area at an aspect
# ratio within 0.9-1.1, i.e. at least 0.87 of each side) start from a training-split cache this
# many times larger than image_size: every crop then has more pixels than image_size on each
# side, so it is resized down, as a crop of the full-resolution file is.
CROP_SOURCE_SCALE = {"xray": 1.25}
#: Units of survival times (``data.time_unit``); a fixed list so that a typo is caught.
TIME_UNITS = ("hours", "days", "weeks", "months", "years")


def _check_options(
    time_unit: str | None,
    cache: str,
    cache_max_gb: float | None,
    in_channels: int,
    augmentation: str,
    sampler: str,
    batch_size: int,
) -> str:
    """The data module's plain options checked (the first bad one is the error); returns the
    ``data.cache`` mode."""
    if time_unit is not None:
        check_choice("data.time_unit", time_unit, TIME_UNITS)
    cache_mode = check_choice("data.cache", cache, CACHE_MODES)
    if cache_max_gb is not None and not (
        isinstance(cache_max_gb, int | float) and cache_max_gb > 0
    ):
        raise NervusInputError(
            f"data.cache_max_gb={cache_max_gb!r} must be a positive number of GiB, or null "
            "for 25 % of the available memory."
        )
    if in_channels not in (1, 3):
        raise NervusInputError(f"data.in_channels must be 1 or 3, got {in_channels}.")
    check_choice("augmentation.name", augmentation, AUGMENTATIONS)
    if sampler not in SAMPLERS:
        raise NervusInputError(f"sampler '{sampler}' is not one of {list(SAMPLERS)}.")
    if batch_size < 1:
        raise NervusInputError(f"data.batch_size must be >= 1, got {batch_size}.")
    return cache_mode


class NervusDataModule(L.LightningDataModule):
    """Dataloaders for a Nervus CSV.

    Args:
        csv: path of the CSV (``uniqID``, ``imgpath``, ``input_*``, ``label_*``, ``split``...).
        task: ``classification``, ``regression`` or ``survival``.
        labels: label columns to use (default: every ``label_*`` column).
        image_size: images are resized to ``image_size`` x ``image_size``.
        in_channels: 1 (grayscale) or 3; images are converted to it.
        batch_size: as for :class:`torch.utils.data.DataLoader`.
        num_workers: as for :class:`torch.utils.data.DataLoader`.
        use_images: turn the images off even when the CSV has them.
        use_tabular: turn the tabular inputs off even when the CSV has them.
        augmentation: training-split augmentation preset (``data.transforms``; volumes:
            ``none`` or ``volume``, ``data.volume_augment``, with ``augmentation_options``).
        sampler: ``none`` or ``weighted`` (inverse class frequency, training split only).
        schema: a trained model's schema; given, the CSV is read for prediction (labels optional,
            classes and statistics taken from the schema instead of fitted).
        check_images: open every image header before training and report the bad ones.
        bit_depth: intensity scaling of images wider than 8 bits (8-bit images are always
            divided by 255): ``auto`` reads it from the training images' headers (PNG ``sBIT``,
            DICOM ``BitsStored``), else takes the smallest of 8/10/12/14/16 bits that holds the
            largest training pixel value, with a warning; or 8, 10, 12, 14, 16. Stored in the
            schema; with ``schema`` given, the schema's depth is used.
        window: DICOM VOI LUT / window (``data.window``): ``auto`` (the default: the file's own
            VOI LUT or window; a grayscale file without either gets one window per modality,
            chosen once from the training split's files without a window, stored in the schema
            as ``auto_window``), ``none`` (the full range after the modality LUT) or
            ``[center, width]`` in modality units (e.g. ``[-600, 1500]``).
        frame: frame of a multi-frame DICOM file (``data.frame``): ``middle`` (default),
            ``first`` or ``mean``. ``window`` and ``frame`` are stored in the schema; with
            ``schema`` given, None (the default) uses the schema's, and a different value is an
            error (images must be read as in training).
        missing_views: with ``imgpath_<view>`` columns (several images per case), what an empty
            view cell means (``data.missing_views``): ``refuse`` (default; the cases are named
            before training) or ``allow`` (a zero image, ``view_mask`` False, and the model's
            learned "missing" embedding). With ``schema`` given, the schema's choice is used.
        cache: decoded-image cache (``data.cache``, see :mod:`nervus_lightning.data.cache`):
            ``none`` (the default here: one pass over the images, as in predict and explain,
            gains nothing), ``memory``, ``disk`` or ``auto`` (the training command's default:
            ``memory`` when the arrays fit ``cache_max_gb``, or 25 % of the available RAM
            shared by this node's processes, else ``disk``). Each image is read and resized
            once, when the first dataset is built; augmentation still runs per epoch.
        cache_dir: folder of the disk cache (default ``$NERVUS_LIGHTNING_CACHE/images`` or
            ``~/.cache/nervus_lightning/images``); shared by DDP ranks and sweep jobs.
        cache_max_gb: memory budget of ``cache=auto`` in GiB (None: 25 % of available RAM).
        volume_size: ``[D, H, W]``: every image cell names a 3D volume (a NIfTI file, a DICOM
            series folder, a multi-frame DICOM file), read in LPS orientation into a
            ``(1, D, H, W)`` tensor (:mod:`~nervus_lightning.data.volume_input`); None (default):
            2D images. ``window`` applies as for 2D; ``bit_depth``, ``frame`` and
            ``image_size`` are not used. Stored in the schema; with ``schema`` given, the
            schema's is used.
        spacing: ``[z, y, x]`` mm: volumes are resampled to it, then cropped or padded about
            their centre to ``volume_size`` (None: resized to ``volume_size``).
        time_unit: unit of the survival time columns (``data.time_unit``): one of
            ``TIME_UNITS`` or None (unknown, shown as "time"). Stored in the schema (checkpoint
            and ``schema.json``) for axis labels and table headers; with ``schema`` given, the
            schema's unit is used.

    Batches hold ``index``, ``target``, the task's fields, ``tabular`` (B, n_inputs) when there
    are tabular inputs, and ``image``: (B, C, H, W) for a single ``imgpath`` column, or
    (B, V, C, H, W) in ``schema.views`` order for several views, with ``view_mask`` (B, V) bool
    (True = present) when missing views are allowed.
    """

    def __init__(
        self,
        csv: str | os.PathLike,
        task: str = "classification",
        labels: Sequence[str] | None = None,
        image_size: int = 64,
        in_channels: int = 1,
        batch_size: int = 32,
        num_workers: int = 0,
        use_images: bool = True,
        use_tabular: bool = True,
        augmentation: str = "none",
        augmentation_options: dict[str, Any] | None = None,
        sampler: str = "none",
        schema: DataSchema | dict | None = None,
        check_images: bool = True,
        pin_memory: bool = False,
        bit_depth: str | int = "auto",
        window: str | Sequence[float] | None = None,
        frame: str | None = None,
        missing_views: str = "refuse",
        cache: str = "none",
        cache_dir: str | os.PathLike | None = None,
        cache_max_gb: float | None = None,
        time_unit: str | None = None,
        volume_size: Sequence[int] | None = None,
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.cache_mode = _check_options(
            time_unit, cache, cache_max_gb, in_channels, augmentation, sampler, batch_size
        )
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.cache_max_gb = cache_max_gb
        self._cache: list[np.ndarray] | None = None
        self._source_cache: list[np.ndarray] | None = None
        requested_bits = parse_bit_depth(bit_depth)
        requested_window = None if window is None else parse_window(window)
        requested_frame = None if frame is None else parse_frame(frame)
        self.csv = Path(csv)
        self.image_size = image_size
        self.in_channels = in_channels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.sampler = sampler
        self.pin_memory = pin_memory
        requested_volume = volume_schema_entry(volume_size, spacing)
        if schema is None:
            self._read_for_training(task, labels, use_images, use_tabular, missing_views)
            self.schema.time_unit = time_unit
            if self.schema.has_images:
                self.schema.volume = requested_volume
        else:
            self._read_for_prediction(schema)
            check_stored_volume(requested_volume, self.schema.volume)
        if self.schema.is_volume:
            check_volume_options(in_channels)
        if self.schema.has_images:
            check_augmentation(augmentation, self.schema.is_volume)
        task = task_class(self.schema.task)
        if sampler == "weighted" and not task.balances_classes:
            raise NervusInputError(
                f"sampler=weighted balances classes (or events), but the labels are "
                f"{self.schema.task} targets. Use sampler=none."
            )
        if self.schema.has_images and check_images:
            columns = self.schema.image_columns
            if self.schema.is_volume:
                check = {"check": check_volume_files, "what": "volume"}
            else:
                check = {}
            check_image_columns(self.csv, self.frame, columns, self.csv_rows, **check)
        if self.schema.has_images:
            if schema is None:
                self._choose_image_settings(requested_bits, requested_window, requested_frame)
            elif self.schema.is_volume:
                self.schema = check_stored_dicom_settings(self.schema, requested_window, None)
            else:
                # The warning points at the line that built the data module.
                self.schema = check_stored_bit_depth(self.schema, requested_bits, stacklevel=2)
                self.schema = check_stored_dicom_settings(
                    self.schema, requested_window, requested_frame
                )
        self.augmentation = augmentation
        self.train_transform, self.eval_transform = build_transforms(
            augmentation, augmentation_options, image_size, self.schema.volume
        )

    def _read_for_training(
        self,
        task: str,
        labels: Sequence[str] | None,
        use_images: bool,
        use_tabular: bool,
        missing_views: str,
    ) -> None:
        """The CSV read and validated, and its schema fitted (classes, statistics, views)."""
        frame, self.schema = load_table(
            self.csv,
            task=task_class(task),
            labels=labels,
            use_images=use_images,
            use_tabular=use_tabular,
            missing_views=missing_views,
        )
        self._keep_rows(frame)

    def _read_for_prediction(self, schema: DataSchema | dict) -> None:
        """The CSV read and validated against a trained model's schema (labels optional)."""
        self.schema = DataSchema.from_dict(schema) if isinstance(schema, dict) else schema
        self._keep_rows(
            validate_for_prediction(self.csv, self.schema, task_class(self.schema.task))
        )

    def _keep_rows(self, frame: pd.DataFrame) -> None:
        # Row positions in the CSV of the kept rows (excluded ones are gone), for messages.
        self.csv_rows = frame.index.to_numpy()
        self.frame = frame.reset_index(drop=True)

    def _choose_image_settings(
        self, bits: int | None, window: Window | None, frame: str | None
    ) -> None:
        """Training: the bit depth, DICOM window and frame of every image, into the schema
        (those given, else chosen on the training images). Volumes: the window only (``auto``
        with the data set's windows for volumes without their own, as for 2D files)."""
        self.schema.window = window_for_schema(window or DEFAULT_WINDOW)
        if self.schema.is_volume:
            self.schema.frame = DEFAULT_FRAME
        else:
            self.schema.bit_depth = bits or self._choose_bit_depth()
            self.schema.frame = frame or DEFAULT_FRAME
        if self.schema.window == "auto":
            self.schema.auto_window = self._choose_auto_window()

    def _choose_bit_depth(self) -> int:
        # One depth for every view: the views of a study come from the same kind of detector.
        train = self.split_frame(TRAIN)
        paths = [p for col in self.schema.image_columns for p in train[col].dropna().tolist()]
        choice = choose_bit_depth(paths)
        if choice.from_pixel_values:
            warnings.warn(
                f"data.bit_depth=auto chose {choice.bits} bits for {self.csv}: {choice.reason}. "
                f"Every image wider than 8 bits is divided by {2**choice.bits - 1}. If the "
                "images have another depth, set data.bit_depth (8, 10, 12, 14 or 16).",
                stacklevel=4,  # the line that built the data module
            )
        return choice.bits

    def _choose_auto_window(self) -> dict[str, list[float]] | None:
        """``data.window=auto``: one window per modality, from the training split's DICOM files
        that have none of their own (see :func:`~nervus_lightning.data.dicom.choose_auto_window`;
        volumes: :func:`~nervus_lightning.data.volumes.choose_volume_auto_window`), logged
        once."""
        train = self.split_frame(TRAIN)
        paths = [p for col in self.schema.image_columns for p in train[col].dropna().tolist()]
        if self.schema.is_volume:
            choice = choose_volume_auto_window(paths)
        else:
            choice = choose_auto_window(paths, self.schema.frame)
        if choice.window is None:
            return None
        log.info("data.window=auto for %s: %s.", self.csv, choice.reason)
        return choice.window.to_json()

    # -- splits -------------------------------------------------------------------------------
    def split_names(self) -> list[str]:
        """Splits present in the CSV, in a stable order: train, val, test, then external ones."""
        present = list(dict.fromkeys(self.frame[SPLIT_COLUMN]))
        order = [s for s in (TRAIN, VAL, TEST) if s in present]
        return order + sorted(s for s in present if s not in order)

    def split_frame(self, split: str | None = None) -> pd.DataFrame:
        if split is None:
            return self.frame
        return self.frame[self.frame[SPLIT_COLUMN] == split]

    def image_cache(self) -> list[np.ndarray] | None:
        """The cache arrays of every image column (built on first call), or None (no cache)."""
        if self._cache is not None or self.cache_mode == "none" or not self.schema.has_images:
            return self._cache
        self._cache = self._build_cache(self.image_size, self.frame.index)
        return self._cache

    def training_cache(self) -> list[np.ndarray] | None:
        """The arrays the training split's augmentation starts from: the image cache for the
        presets that resize first; for those that crop first (``CROP_SOURCE_SCALE``), arrays of
        the training split's images only, at that multiple of ``image_size``."""
        scale = CROP_SOURCE_SCALE.get(self.augmentation)
        if scale is None:
            return self.image_cache()
        if self._source_cache is not None or self.cache_mode == "none":
            return self._source_cache
        if not self.schema.has_images:
            return None
        size = math.ceil(self.image_size * scale)
        self._source_cache = self._build_cache(size, self.split_frame(TRAIN).index)
        return self._source_cache

    def _build_cache(self, size: int, rows: pd.Index) -> list[np.ndarray]:
        """Arrays of every image column at ``size``, holding the images of ``rows`` (the other
        rows stay zero); memory or disk as ``data.cache`` says (``auto``: by their size)."""
        window, frame = dicom_settings(self.schema)
        volume = (
            VolumeSettings.from_schema(self.schema.volume, window)
            if self.schema.is_volume
            else None
        )
        settings = ReadSettings(
            size, self.in_channels, self.schema.bit_depth, window, frame, volume=volume
        )
        keep = self.frame.index.isin(rows)
        columns = [
            [
                p if ok and isinstance(p, str) and p else None
                for p, ok in zip(self.frame[col], keep, strict=True)
            ]
            for col in self.schema.image_columns
        ]
        n_images = sum(p is not None for paths in columns for p in paths)
        # Each process of this node holds its own memory cache.
        processes = self.trainer.num_devices if self.trainer is not None else None
        mode = resolve_mode(self.cache_mode, n_images, settings, self.cache_max_gb, processes)
        self.resolved_cache_mode = mode
        if mode == "memory":
            return [build_memory_array(paths, settings) for paths in columns]
        return [open_disk_array(paths, settings, self.cache_dir) for paths in columns]

    def dataset(self, split: str | None, train: bool = False, cached: bool = True) -> NervusDataset:
        """The cases of ``split``; ``cached=False`` reads every image from its file."""
        transform = self.train_transform if train else self.eval_transform
        frame = self.split_frame(split)
        cache = None
        if cached:
            cache = self.training_cache() if train else self.image_cache()
        return NervusDataset(
            frame,
            self.schema,
            self.in_channels,
            transform,
            self.image_size,
            cache=cache,
            rows=self.frame.index.get_indexer(frame.index),
            # Evaluation, and training without augmentation, transform every image alike.
            batchable_transform=not train or self.augmentation == "none",
        )

    def _loader(
        self,
        dataset: Dataset,
        shuffle: bool = False,
        loader: type[DataLoader] = DataLoader,
        **kwargs: Any,
    ) -> DataLoader:
        if isinstance(dataset, NervusDataset):
            dataset.batched_fetch = True  # collated by ``collate`` below
        return loader(
            dataset,
            collate_fn=collate,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            **kwargs,
        )

    def eval_dataloader(self, split: str | None) -> DataLoader:
        """Cases of one split (``None``: every kept case) in CSV order, without augmentation."""
        return self._loader(self.dataset(split))

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset(TRAIN, train=True)
        # This process's share of one order seeded per epoch (shuffled, or drawn by weight),
        # in a loader that resumes mid-epoch: see data.sampling.
        world, rank = (
            (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        )
        weights = (
            inverse_frequency_weights(ds.targets.numpy()) if self.sampler == "weighted" else None
        )
        sampler = EpochSampler(ds, world, rank, seed=global_seed(), weights=weights)
        # A last batch of one case breaks batch normalisation; drop it rather than crash.
        share = len(sampler)
        drop_last = share % self.batch_size == 1 and share > self.batch_size
        return self._loader(ds, sampler=sampler, drop_last=drop_last, loader=ResumableLoader)

    def val_dataloader(self) -> DataLoader:
        if (self.frame[SPLIT_COLUMN] == VAL).sum() == 0:
            raise NervusInputError(
                f"{self.csv}: no validation rows (split == 'val'); they pick the best checkpoint. "
                "Mark some training cases as val."
            )
        return self.eval_dataloader(VAL)

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader(TEST)

    def predict_dataloader(self) -> DataLoader:
        """Every kept case of every split, in CSV order, without augmentation.

        Images are read from their files, never from the cache (which rounds them to 8 or 16
        bits): the ``predictions.csv`` written after training must be exactly what ``predict``
        gives from the checkpoint and the CSV.
        """
        return self._loader(self.dataset(None, cached=False))
