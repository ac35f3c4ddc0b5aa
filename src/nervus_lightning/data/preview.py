"""See what the network sees: each case's input image as a PNG, and a contact sheet.

This module owns the preview of a data set before training: for the first ``n`` cases of a split,
the image exactly as the data module hands it to the model (file decoded, DICOM LUTs and window,
bit-depth scaling, resize to ``data.image_size``), before augmentation and before the model's own
intensity normalisation. A radiologist checks windowing, inversion and orientation here.

The ``[0, 1]`` input is written with 0 as black and 1 as white (the PNG's full 8-bit range,
``round(255 * x)``), never stretched image by image: a window that leaves the tissue a dull grey
must look dull here too, as it does to the network. The contact sheet shows the same images with
their uniqIDs and, when an augmentation preset is set, a row of augmented versions under them.

When ``data.window=auto`` gave DICOM files without a window of their own the data set's window
(one per modality, chosen on the training images), the sheet says which in a title line.

With several images per case (``imgpath_<view>`` columns) each view is written as
``<uniqID>__<view>.png`` and shown as its own tile, captioned ``<uniqID> <view>``, a case's
views side by side; a missing view (``data.missing_views=allow``) has no file and a grey tile.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from nervus_lightning.data.datamodule import NervusDataModule, dicom_settings
from nervus_lightning.data.dicom import AutoWindow
from nervus_lightning.errors import ID_COLUMN, NervusInputError

__all__ = ["SHEET_NAME", "auto_window_note", "preview_file_name", "to_png_array", "write_preview"]

SHEET_NAME = "sheet.png"
# Contact-sheet layout: tiles at least this many pixels wide (small inputs are enlarged without
# interpolation, so pixels stay visible), this many cases per row, and a caption strip.
_MIN_TILE = 128
_COLUMNS = 8
_CAPTION = 14
_GAP = 4


def to_png_array(image: torch.Tensor) -> np.ndarray:
    """``C x H x W`` floats in ``[0, 1]`` -> ``H x W`` (gray) or ``H x W x 3`` uint8, 1.0 -> 255.

    Three channels that are all equal (a gray image repeated for a 3-channel model) are written
    as gray.
    """
    values = image.detach().float().clamp(0.0, 1.0)
    colour = values.shape[0] == 3 and not (values == values[:1]).all()
    array = values.permute(1, 2, 0) if colour else values[0]
    return np.rint(array.numpy() * 255.0).astype(np.uint8)


def auto_window_note(datamodule: NervusDataModule) -> str | None:
    """The data set's window for DICOM files without their own (``data.window=auto``), as one
    line; None when there is none."""
    window, _ = dicom_settings(datamodule.schema)
    if not isinstance(window, AutoWindow):
        return None
    return f"data.window=auto, DICOM files without their own window: {window.describe()}"


def preview_file_name(uniq_id: str, view: str | None = None) -> str:
    """``<uniqID>.png`` (``<uniqID>__<view>.png`` for one of several views) with characters
    that are unsafe in file names replaced by ``_``."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", str(uniq_id))
    return f"{stem}__{view}.png" if view else f"{stem}.png"


def _view_images(item: dict, views: list[str]) -> list[tuple[str | None, torch.Tensor | None]]:
    """``(view, C x H x W image)`` of one dataset item; the image is None for a missing view."""
    if not views:
        return [(None, item["image"])]
    mask = item.get("view_mask")
    return [
        (view, item["image"][v] if mask is None or bool(mask[v]) else None)
        for v, view in enumerate(views)
    ]


def write_preview(
    datamodule: NervusDataModule,
    out_dir: str | Path,
    split: str = "train",
    n: int = 16,
    augmented: bool = False,
    seed: int = 0,
) -> list[Path]:
    """Write ``out_dir/<uniqID>.png`` (``<uniqID>__<view>.png`` per view) for the first ``n``
    cases of ``split``, and the sheet.

    Args:
        datamodule: the data, built as for training (its window, frame, bit depth, image size and
            augmentation preset are the ones previewed).
        out_dir: folder to write into (created).
        split: ``train``, ``val``, ``test`` or an external split of the CSV.
        n: number of cases, in CSV order.
        augmented: add a row of the training augmentation's output under each row of inputs.
        seed: seed of the augmentation's random draws, so a preview can be reproduced.

    Returns:
        The per-case PNGs written, then the contact sheet.

    Raises:
        NervusInputError: no image column, an unknown or empty split, or ``n < 1``.
    """
    if not datamodule.schema.has_images:
        raise NervusInputError(
            f"{datamodule.csv}: there are no images to preview (no imgpath column, or the image "
            "extractor is off)."
        )
    if n < 1:
        raise NervusInputError(f"n must be at least 1, got {n}.")
    present = datamodule.split_names()
    if split not in present:
        raise NervusInputError(
            f"{datamodule.csv}: split={split!r} has no rows; the CSV's splits are "
            f"{', '.join(present)}."
        )
    frame = datamodule.split_frame(split).head(n)
    inputs = datamodule.dataset(split)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    views = list(datamodule.schema.views)
    names: list[str] = []
    tiles: list[np.ndarray] = []
    captions: list[str] = []
    written: list[Path] = []
    for i, uniq_id in enumerate(frame[ID_COLUMN].astype(str)):
        for view, image in _view_images(inputs[i], views):
            captions.append(f"{uniq_id} {view}" if view else str(uniq_id))
            if image is None:  # a missing view: a blank tile on the sheet, no file
                captions[-1] += " (missing)"
                tiles.append(None)
                continue
            array = to_png_array(image)
            name = preview_file_name(uniq_id, view)
            if name in names:  # two uniqIDs that differ only in unsafe characters
                name = f"{Path(name).stem}__{i}.png"
            names.append(name)
            Image.fromarray(array).save(out / name)
            written.append(out / name)
            tiles.append(array)

    augmented_tiles = None
    if augmented:
        training = datamodule.dataset(split, train=True)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            augmented_tiles = [
                None if image is None else to_png_array(image)
                for i in range(len(frame))
                for _, image in _view_images(training[i], views)
            ]
        finally:
            torch.random.set_rng_state(generator_state)
    # Several views: a row holds whole cases, their views side by side.
    per_row = len(views) * max(1, _COLUMNS // len(views)) if views else _COLUMNS
    sheet = _contact_sheet(tiles, captions, augmented_tiles, per_row, auto_window_note(datamodule))
    sheet.save(out / SHEET_NAME)
    written.append(out / SHEET_NAME)
    return written


def _tile(array: np.ndarray | None, size: int) -> Image.Image:
    if array is None:
        return Image.new("RGB", (size, size), "lightgray")
    image = Image.fromarray(array).convert("RGB")
    return image.resize((size, size), Image.Resampling.NEAREST)


def _contact_sheet(
    tiles: list[np.ndarray | None],
    captions: list[str],
    augmented: list[np.ndarray | None] | None,
    per_row: int = _COLUMNS,
    title: str | None = None,
) -> Image.Image:
    """Rows of ``per_row`` tiles with captions (None: a grey tile, a missing view); an augmented
    row under each when given; ``title`` in a line above them."""
    side = next((t.shape[0] for t in tiles if t is not None), _MIN_TILE)
    size = side * max(1, -(-_MIN_TILE // side))  # an integer multiple: pixels stay square
    columns = min(per_row, len(tiles))
    blocks = -(-len(tiles) // columns)
    rows_per_block = 2 if augmented is not None else 1
    cell_h = size + _CAPTION
    width = columns * (size + _GAP) + _GAP
    top = _CAPTION + _GAP if title else 0
    height = top + blocks * rows_per_block * (cell_h + _GAP) + _GAP
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    if title:
        draw.text((_GAP + 2, _GAP), _fit(draw, title, font, width - _GAP), fill="black", font=font)
    for i, (array, caption) in enumerate(zip(tiles, captions, strict=True)):
        block, column = divmod(i, columns)
        x = _GAP + column * (size + _GAP)
        y = top + _GAP + block * rows_per_block * (cell_h + _GAP)
        sheet.paste(_tile(array, size), (x, y))
        draw.text((x + 2, y + size + 1), _fit(draw, caption, font, size), fill="black", font=font)
        if augmented is not None:
            y += cell_h + _GAP
            sheet.paste(_tile(augmented[i], size), (x, y))
            label = _fit(draw, f"{caption} (augmented)", font, size)
            draw.text((x + 2, y + size + 1), label, fill="dimgray", font=font)
    return sheet


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` shortened with an ellipsis until it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width - 4:
        return text
    while text and draw.textlength(text + "...", font=font) > width - 4:
        text = text[:-1]
    return text + "..."
