"""``NervusDataset``: the cases of one split as tensors, and the DICOM settings a schema asks
images to be read with.

A case is its image (or one image per view, with ``view_mask`` where views may be missing),
its raw tabular inputs, its targets and the task's batch fields; images come from the data
module's cache (:mod:`nervus_lightning.data.cache`) or are read from their files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, default_collate

from nervus_lightning.data.cache import cached_image, cached_images
from nervus_lightning.data.dicom import AutoWindow, Window, parse_frame, parse_window
from nervus_lightning.data.images import read_image
from nervus_lightning.data.schema import DataSchema
from nervus_lightning.data.volume_input import VolumeSettings, read_training_volume
from nervus_lightning.tasks.registry import task_class

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


class NervusDataset(Dataset):
    """Cases of one split: image (C, H, W floats in [0, 1]; a volume: (1, D, H, W)), raw
    tabular inputs, targets.

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
        batchable_transform: bool = False,
    ) -> None:
        self.frame = frame.reset_index(drop=True)
        # Decoded, resized images (data.cache): one array per image column, indexed by
        # rows[i], the case's row in the data module's table.
        self.cache = list(cache) if cache is not None else None
        self.rows = np.arange(len(self.frame)) if rows is None else np.asarray(rows)
        # The transform is the same for every image (no random augmentation) and works on a
        # batch as on each image: cached batches may then be read and transformed in one go.
        self.batchable_transform = batchable_transform
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
        self.volume = (
            VolumeSettings.from_schema(schema.volume, self.window) if schema.is_volume else None
        )
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
        if self.volume is not None:
            image = read_training_volume(path, self.volume)
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
            shape = (1, *self.volume.shape) if self.volume else (self.in_channels, side, side)
            blank = torch.zeros(shape)
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

    #: Set by the data module, whose loaders collate with :func:`collate`: a batch without
    #: images is then sliced from the tensors in one go (:meth:`__getitems__`). Off for any
    #: other ``DataLoader``, whose default collation expects one dictionary per case.
    batched_fetch = False

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]] | dict[str, Any]:
        """A whole batch (torch's ``DataLoader`` calls this instead of ``__getitem__`` per
        case). With :attr:`batched_fetch`, the batch's rows of every tensor at once, already
        collated: the same tensors as one dictionary per case stacked by torch's default
        collation. Building and stacking those cost about 0.6 ms a step, as much as a small
        tabular network's whole step (``benchmarks/step_overhead.py``), and about 13 ms a step
        for 64 cached 64-px images, each through the transform on its own. So a batch without
        images, or of one cached image column with a transform that is the same for every image
        (:attr:`batchable_transform`: no random augmentation), is read in one go; other batches
        (views, images read from files, random augmentation) case by case."""
        if not self.batched_fetch or self.view_paths:
            return [self[i] for i in indices]
        if self.image_paths is not None and not (self.cache and self.batchable_transform):
            return [self[i] for i in indices]
        rows = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        batch: dict[str, Any] = {"index": rows, "target": self.targets[rows]}
        if self.image_paths is not None:
            images = cached_images(self.cache[0], self.rows[np.asarray(indices, dtype=np.int64)])
            batch["image"] = self.transform(images) if self.transform else images
        if self.tabular is not None:
            batch["tabular"] = self.tabular[rows]
        for name, values in self.fields.items():
            batch[name] = values[rows]
        return batch


def collate(batch: list[dict[str, Any]] | dict[str, Any]) -> dict[str, Any]:
    """torch's default collation of one dictionary per case, or a batch that
    :meth:`NervusDataset.__getitems__` collated already."""
    return batch if isinstance(batch, dict) else default_collate(batch)
