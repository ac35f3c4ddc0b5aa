"""``NervusDataModule``: a Nervus CSV turned into Lightning dataloaders.

Owns the datasets of each split, image decoding and transforms (augmentation on the training
split only), the weighted sampler, the one intensity scaling (bit depth) of every image of the
data set and its DICOM window for files without their own. The CSV is read and validated once,
when the module is built, so every user error surfaces before a model exists. Tabular inputs are
passed *raw*: the model standardises them with the training statistics held in the schema (and
in its checkpoint).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from nervus_lightning.data.cache import (
    CACHE_MODES,
    ReadSettings,
    build_memory_array,
    cached_image,
    default_cache_dir,
    open_disk_array,
    resolve_mode,
)
from nervus_lightning.data.dicom import (
    DEFAULT_FRAME,
    DEFAULT_WINDOW,
    AutoWindow,
    Window,
    choose_auto_window,
    parse_frame,
    parse_window,
    window_key,
)
from nervus_lightning.data.images import (
    CANDIDATE_BIT_DEPTHS,
    check_image_files,
    choose_bit_depth,
    read_image,
)
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
from nervus_lightning.data.transforms import (
    TRAIN_TRANSFORMS,
    build_eval_transform,
    build_train_transform,
)
from nervus_lightning.errors import (
    MAX_LISTED,
    SPLIT_COLUMN,
    TEST,
    TRAIN,
    VAL,
    NervusInputError,
    csv_lines,
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
BIT_DEPTHS = ("auto", *CANDIDATE_BIT_DEPTHS)
#: Units of survival times (``data.time_unit``); a fixed list so that a typo is caught.
TIME_UNITS = ("hours", "days", "weeks", "months", "years")


def parse_bit_depth(value: str | int) -> int | None:
    """``data.bit_depth`` as a number of bits, or None for ``auto``."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    if not isinstance(value, bool) and text.isdigit() and int(text) in CANDIDATE_BIT_DEPTHS:
        return int(text)
    raise NervusInputError(
        f"data.bit_depth must be one of {', '.join(map(str, BIT_DEPTHS))}, got {value!r}. "
        "Use auto to read it from the training images, or the number of significant bits of "
        "your images (e.g. 12 for 12-bit radiographs stored in 16-bit files)."
    )


# How DICOM files were read before the schema recorded it (schemas without window/frame).
_LEGACY_WINDOW, _LEGACY_FRAME = "none", "first"


def dicom_settings(schema: DataSchema) -> tuple[Window, str]:
    """The ``(window, frame)`` a schema asks DICOM files to be read with (``auto`` with the data
    set's windows, :class:`~nervus_lightning.data.dicom.AutoWindow`, when it holds them)."""
    window = _LEGACY_WINDOW if schema.window is None else parse_window(schema.window)
    if window == "auto" and schema.auto_window:
        window = AutoWindow.from_json(schema.auto_window)
    frame = _LEGACY_FRAME if schema.frame is None else parse_frame(schema.frame)
    return window, frame


def _window_for_schema(window: Window) -> str | list[float]:
    return "auto" if isinstance(window, AutoWindow) else window_key(window)


class NervusDataset(Dataset):
    """Cases of one split: image (C, H, W floats in [0, 1]), raw tabular inputs, targets.

    With several views (``schema.views``) the image is (V, C, H, W) in view order, each view
    read and transformed on its own; when the schema allows missing views, an empty view cell
    gives a zero image and ``view_mask`` (V,) bool says which views are present.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        schema: DataSchema,
        in_channels: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None,
        image_size: int | None = None,
        cache: Sequence[np.ndarray] | None = None,
        rows: np.ndarray | None = None,
    ) -> None:
        self.frame = frame.reset_index(drop=True)
        # Decoded, resized images (data.cache): one array per image column, indexed by
        # rows[i], the case's row in the data module's table.
        self.cache = list(cache) if cache is not None else None
        self.rows = np.arange(len(self.frame)) if rows is None else np.asarray(rows)
        self.view_size = image_size
        self.in_channels = in_channels
        self.transform = transform
        self.image_paths = self.frame[schema.image_column].tolist() if schema.image_column else None
        # Several views: one path list per view (None for an empty cell).
        self.view_paths = [
            [p if isinstance(p, str) and p else None for p in self.frame[col]]
            for col in schema.view_columns
        ]
        self.with_mask = schema.multiview and schema.missing_views == "allow"
        self.bit_depth = schema.bit_depth
        self.window, self.dicom_frame = dicom_settings(schema)
        self.tabular = (
            torch.tensor(self.frame[schema.input_columns].to_numpy(np.float32))
            if schema.input_columns
            else None
        )
        # The task decides how a label column becomes targets, and what else its loss reads from
        # a batch (e.g. survival times).
        task = task_class(schema.task)
        targets = np.stack([task.encode_targets(self.frame, s) for s in schema.labels], axis=1)
        self.targets = torch.as_tensor(targets)
        fields = task.batch_fields(self.frame, schema.labels)
        self.fields = {name: torch.as_tensor(values) for name, values in fields.items()}

    def __len__(self) -> int:
        return len(self.frame)

    def _image(self, path: str, i: int = 0, column: int = 0) -> torch.Tensor:
        if self.cache is not None:
            image = cached_image(self.cache[column], int(self.rows[i]))
            return self.transform(image) if self.transform else image
        image = read_image(
            path,
            self.in_channels,
            bit_depth=self.bit_depth,
            window=self.window,
            frame=self.dicom_frame,
        )
        return self.transform(image) if self.transform else image

    def _views(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        present = [paths[i] is not None for paths in self.view_paths]
        images = [
            self._image(paths[i], i, column)
            for column, paths in enumerate(self.view_paths)
            if paths[i] is not None
        ]
        blank = torch.zeros_like(images[0]) if images else None
        if blank is None:  # every view missing (allowed with tabular inputs): size from config
            side = self.view_size or 1
            blank = torch.zeros(self.in_channels, side, side)
        it = iter(images)
        stacked = torch.stack([next(it) if ok else blank for ok in present])
        return stacked, torch.tensor(present, dtype=torch.bool)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"index": i, "target": self.targets[i]}
        if self.image_paths is not None:
            item["image"] = self._image(self.image_paths[i], i)
        if self.view_paths:
            item["image"], mask = self._views(i)
            if self.with_mask:
                item["view_mask"] = mask
        if self.tabular is not None:
            item["tabular"] = self.tabular[i]
        for name, values in self.fields.items():
            item[name] = values[i]
        return item


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
        augmentation: training-split augmentation preset (see ``data.transforms``).
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
    ) -> None:
        super().__init__()
        if time_unit is not None:
            check_choice("data.time_unit", time_unit, TIME_UNITS)
        self.cache_mode = check_choice("data.cache", cache, CACHE_MODES)
        if cache_max_gb is not None and not (
            isinstance(cache_max_gb, int | float) and cache_max_gb > 0
        ):
            raise NervusInputError(
                f"data.cache_max_gb={cache_max_gb!r} must be a positive number of GiB, or null "
                "for 25 % of the available memory."
            )
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.cache_max_gb = cache_max_gb
        self._cache: list[np.ndarray] | None = None
        self._source_cache: list[np.ndarray] | None = None
        if in_channels not in (1, 3):
            raise NervusInputError(f"data.in_channels must be 1 or 3, got {in_channels}.")
        check_choice("augmentation.name", augmentation, sorted(TRAIN_TRANSFORMS))
        if sampler not in SAMPLERS:
            raise NervusInputError(f"sampler '{sampler}' is not one of {list(SAMPLERS)}.")
        if batch_size < 1:
            raise NervusInputError(f"data.batch_size must be >= 1, got {batch_size}.")
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
        if schema is None:
            self.frame, self.schema = load_table(
                self.csv,
                task=task_class(task),
                labels=labels,
                use_images=use_images,
                use_tabular=use_tabular,
                missing_views=missing_views,
            )
        else:
            self.schema = DataSchema.from_dict(schema) if isinstance(schema, dict) else schema
            self.frame = validate_for_prediction(
                self.csv, self.schema, task_class(self.schema.task)
            )
        # Row positions in the CSV of the kept rows (excluded ones are gone), for messages.
        self.csv_rows = self.frame.index.to_numpy()
        self.frame = self.frame.reset_index(drop=True)
        if schema is None:
            self.schema.time_unit = time_unit
        task = task_class(self.schema.task)
        if sampler == "weighted" and not task.balances_classes:
            raise NervusInputError(
                f"sampler=weighted balances classes (or events), but the labels are "
                f"{self.schema.task} targets. Use sampler=none."
            )
        if self.schema.has_images and check_images:
            self._check_images()
        if self.schema.has_images:
            if schema is None:
                self.schema.bit_depth = requested_bits or self._choose_bit_depth()
                self.schema.window = _window_for_schema(requested_window or DEFAULT_WINDOW)
                self.schema.frame = requested_frame or DEFAULT_FRAME
                if self.schema.window == "auto":
                    self.schema.auto_window = self._choose_auto_window()
            else:
                self._check_schema_bit_depth(requested_bits)
                self._check_schema_dicom_settings(requested_window, requested_frame)
        self.augmentation = augmentation
        self.train_transform = build_train_transform(augmentation, image_size)
        self.eval_transform = build_eval_transform(image_size)

    def _check_images(self) -> None:
        """Every image header of every image column, before training; the first bad column is
        reported with its files and, for each, the CSV lines that name it."""
        for column in self.schema.image_columns:
            cells = self.frame[column].dropna()
            # A file named on several lines is opened once and reported with each of its lines.
            bad = dict(check_image_files(list(dict.fromkeys(cells))))
            if not bad:
                continue
            lines = {path: self.csv_rows[cells.index[cells == path]] for path in bad}
            listed = "\n".join(
                f"  CSV {csv_lines(lines[path])}: {path}: {reason}"
                for path, reason in list(bad.items())[:MAX_LISTED]
            )
            more = len(bad) - MAX_LISTED
            more = f"\n  ... and {more} more file(s)" if more > 0 else ""
            on_lines = sum(len(rows) for rows in lines.values())
            raise NervusInputError(
                f"{self.csv}: {len(bad)} image file(s) in column '{column}', named on "
                f"{on_lines} CSV line(s), are missing or unreadable:\n{listed}{more}\nFix the "
                "paths (relative paths are relative to the CSV's folder) or set split=exclude "
                "for those cases."
            )

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
                stacklevel=3,
            )
        return choice.bits

    def _choose_auto_window(self) -> dict[str, list[float]] | None:
        """``data.window=auto``: one window per modality, from the training split's DICOM files
        that have none of their own (see :func:`~nervus_lightning.data.dicom.choose_auto_window`),
        logged once."""
        train = self.split_frame(TRAIN)
        paths = [p for col in self.schema.image_columns for p in train[col].dropna().tolist()]
        choice = choose_auto_window(paths, self.schema.frame)
        if choice.window is None:
            return None
        log.info("data.window=auto for %s: %s.", self.csv, choice.reason)
        return choice.window.to_json()

    def _check_schema_bit_depth(self, requested: int | None) -> None:
        stored = self.schema.bit_depth
        if stored is None:
            if requested is not None:
                self.schema = dataclasses.replace(self.schema, bit_depth=requested)
                return
            warnings.warn(
                "the model's schema holds no bit depth (it was trained with an older version); "
                "each image's scaling is guessed from the image alone, as it was in training.",
                stacklevel=3,
            )
        elif requested is not None and requested != stored:
            raise NervusInputError(
                f"data.bit_depth={requested} differs from the {stored} bits the model was "
                "trained with; images must be scaled as in training. Leave data.bit_depth=auto "
                "to use the model's depth."
            )

    def _check_schema_dicom_settings(self, window: Window | None, frame: str | None) -> None:
        stored_window, stored_frame = dicom_settings(self.schema)
        for key, requested, stored in (
            ("window", window, stored_window),
            ("frame", frame, stored_frame),
        ):
            if key == "window" and requested is not None:
                requested, stored = _window_for_schema(requested), _window_for_schema(stored)
            if requested is not None and requested != stored:
                shown = _window_for_schema(stored) if key == "window" else stored
                raise NervusInputError(
                    f"data.{key}={_window_for_schema(requested)} differs from the {key} the "
                    f"model was trained with ({shown}); DICOM images must be read as in "
                    f"training. Leave data.{key} unset to use the model's."
                )
        self.schema = dataclasses.replace(
            self.schema, window=_window_for_schema(stored_window), frame=stored_frame
        )

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
        settings = ReadSettings(size, self.in_channels, self.schema.bit_depth, window, frame)
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
        )

    def _loader(
        self,
        dataset: Dataset,
        shuffle: bool = False,
        loader: type[DataLoader] = DataLoader,
        **kwargs: Any,
    ) -> DataLoader:
        return loader(
            dataset,
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
