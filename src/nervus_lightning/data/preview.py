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

**Volumes** (``data.volume_size``): each case's PNG shows the ``(1, D, H, W)`` volume as the
network gets it (resampled, cropped or padded, windowed; with ``augmentation=volume`` a row of
augmented versions under it, as for 2D images) in three orthogonal
mid-slices, side by side, each labelled with its plane and the patient directions at its top,
left and right edges, oriented as a radiology viewer shows them. The array's axes run to the
patient's superior (``d``), posterior (``h``) and left (``w``) (LPS), so:

* axial, ``volume[D // 2]``: anterior up, the patient's left on the image's right (as seen
  from the feet); the array's rows already run anterior -> posterior and its columns right ->
  left, so no flip;
* coronal, ``volume[:, H // 2, :]``: superior up (rows flipped), the patient's left on the
  image's right (as seen from the front);
* sagittal, ``volume[:, :, W // 2]``: superior up (rows flipped), anterior on the image's left,
  posterior on its right (as seen from the patient's left).

With ``data.spacing`` every panel is drawn at one scale in mm per pixel, so anisotropic voxels
keep their physical aspect ratio; without it each volume was resized over its own extent, its
voxel size is not known here, and voxels are drawn square (the sheet's title says so). Panels
are enlarged without interpolation (nearest voxel) so that the largest is at least 128 pixels.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from nervus_lightning.data.datamodule import NervusDataModule, dicom_settings
from nervus_lightning.data.dicom import AutoWindow
from nervus_lightning.errors import ID_COLUMN, NervusInputError

__all__ = [
    "SHEET_NAME",
    "auto_window_note",
    "orthogonal_slices",
    "preview_file_name",
    "to_png_array",
    "volume_figure",
    "write_preview",
]

SHEET_NAME = "sheet.png"
# Contact-sheet layout: tiles at least this many pixels wide (small inputs are enlarged without
# interpolation, so pixels stay visible), this many cases per row, and a caption strip.
_MIN_TILE = 128
_COLUMNS = 8
_VOLUME_COLUMNS = 3  # a volume's tile holds three panels
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


#: The three mid-slice planes: name, the array axes along the panel's rows and columns, whether
#: the rows are flipped (superior up), and the patient directions at the top, left and right.
_PLANES = (
    ("axial", (1, 2), False, ("A", "R", "L")),
    ("coronal", (0, 2), True, ("S", "R", "L")),
    ("sagittal", (0, 1), True, ("S", "A", "P")),
)


def orthogonal_slices(volume: torch.Tensor | np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``(plane, rows x columns slice)`` of the axial, coronal and sagittal mid-slices of a
    ``(D, H, W)`` (or ``(1, D, H, W)``) LPS volume, oriented as a viewer shows them (see the
    module's docstring)."""
    array = np.asarray(volume.detach().cpu() if isinstance(volume, torch.Tensor) else volume)
    array = array.reshape(array.shape[-3:])
    slices = []
    for plane, kept, flip_rows, _ in _PLANES:
        (cut,) = {0, 1, 2} - set(kept)
        panel = np.take(array, array.shape[cut] // 2, axis=cut)
        slices.append((plane, panel[::-1] if flip_rows else panel))
    return slices


def volume_figure(
    volume: torch.Tensor | np.ndarray, spacing: tuple[float, float, float] | None = None
) -> np.ndarray:
    """The three mid-slices of a ``(1, D, H, W)`` volume in ``[0, 1]`` side by side, as one
    grey uint8 picture, with the patient direction at each panel's top edge above it, and the
    directions at its left and right edges and the plane's name under it.

    Args:
        volume: the network's input, axes superior, posterior, left.
        spacing: voxel size ``[z, y, x]`` mm; None draws voxels square.
    """
    spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0, 1.0, 1.0)
    shape = np.asarray(volume).shape[-3:]
    unit = min(spacing)
    extents = [n * s / unit for n, s in zip(shape, spacing, strict=True)]  # in the finest voxel
    scale = max(1, -(-_MIN_TILE // int(np.ceil(max(extents) - 1e-6))))
    panels = []
    for (plane, kept, _, directions), (_, panel) in zip(
        _PLANES, orthogonal_slices(volume), strict=True
    ):
        size = tuple(max(1, round(extents[axis] * scale)) for axis in reversed(kept))
        picture = Image.fromarray(to_png_array(torch.from_numpy(panel.copy())[None]))
        panels.append((plane, directions, picture.resize(size, Image.Resampling.NEAREST)))
    width = sum(p.width for *_, p in panels) + _GAP * (len(panels) + 1)
    height = max(p.height for *_, p in panels) + 2 * _CAPTION
    figure = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(figure)
    font = ImageFont.load_default()
    x = _GAP
    for plane, (top, left, right), picture in panels:
        figure.paste(picture, (x, _CAPTION))
        # The directions at the panel's edges, as a viewer marks them; the plane under it.
        draw.text((x + picture.width // 2, 1), top, fill=0, font=font, anchor="mt")
        below = _CAPTION + picture.height + 1
        draw.text((x + 1, below), left, fill=0, font=font)
        draw.text((x + picture.width - 1, below), right, fill=0, font=font, anchor="rt")
        name = _fit(draw, plane, font, picture.width - 16)
        draw.text((x + picture.width // 2, below), name, fill=0, font=font, anchor="mt")
        x += picture.width + _GAP
    return np.asarray(figure)


def auto_window_note(datamodule: NervusDataModule) -> str | None:
    """The data set's window for DICOM files (or volumes) without their own
    (``data.window=auto``), as one line; None when there is none."""
    window, _ = dicom_settings(datamodule.schema)
    if not isinstance(window, AutoWindow):
        return None
    what = "volumes" if datamodule.schema.is_volume else "DICOM files"
    return f"data.window=auto, {what} without their own window: {window.describe()}"


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
    volume = datamodule.schema.volume if datamodule.schema.is_volume else None
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
            array = _picture(image, volume)
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
                None if image is None else _picture(image, volume)
                for i in range(len(frame))
                for _, image in _view_images(training[i], views)
            ]
        finally:
            torch.random.set_rng_state(generator_state)
    # Several views: a row holds whole cases, their views side by side.
    columns = _COLUMNS if volume is None else _VOLUME_COLUMNS
    per_row = len(views) * max(1, columns // len(views)) if views else columns
    title = auto_window_note(datamodule)
    if volume is not None and volume["spacing"] is None:
        title = "data.spacing not set: voxels drawn square (each volume resized over its extent)"
    sheet = _contact_sheet(tiles, captions, augmented_tiles, per_row, title)
    sheet.save(out / SHEET_NAME)
    written.append(out / SHEET_NAME)
    return written


def _picture(image: torch.Tensor, volume: dict[str, Any] | None) -> np.ndarray:
    """An image as a PNG array; a volume as its three mid-slices."""
    return to_png_array(image) if volume is None else volume_figure(image, volume["spacing"])


def _tile(array: np.ndarray | None, size: tuple[int, int]) -> Image.Image:
    if array is None:
        return Image.new("RGB", size, "lightgray")
    image = Image.fromarray(array).convert("RGB")
    return image.resize(size, Image.Resampling.NEAREST)


def _contact_sheet(
    tiles: list[np.ndarray | None],
    captions: list[str],
    augmented: list[np.ndarray | None] | None,
    per_row: int = _COLUMNS,
    title: str | None = None,
) -> Image.Image:
    """Rows of ``per_row`` tiles with captions (None: a grey tile, a missing view); an augmented
    row under each when given; ``title`` in a line above them."""
    tile_h, tile_w = next((t.shape[:2] for t in tiles if t is not None), (_MIN_TILE, _MIN_TILE))
    factor = max(1, -(-_MIN_TILE // tile_h))  # an integer multiple: pixels stay square
    size, size_w = tile_h * factor, tile_w * factor
    columns = min(per_row, len(tiles))
    blocks = -(-len(tiles) // columns)
    rows_per_block = 2 if augmented is not None else 1
    cell_h = size + _CAPTION
    width = columns * (size_w + _GAP) + _GAP
    top = _CAPTION + _GAP if title else 0
    height = top + blocks * rows_per_block * (cell_h + _GAP) + _GAP
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    if title:
        draw.text((_GAP + 2, _GAP), _fit(draw, title, font, width - _GAP), fill="black", font=font)
    for i, (array, caption) in enumerate(zip(tiles, captions, strict=True)):
        block, column = divmod(i, columns)
        x = _GAP + column * (size_w + _GAP)
        y = top + _GAP + block * rows_per_block * (cell_h + _GAP)
        sheet.paste(_tile(array, (size_w, size)), (x, y))
        draw.text((x + 2, y + size + 1), _fit(draw, caption, font, size_w), fill="black", font=font)
        if augmented is not None:
            y += cell_h + _GAP
            sheet.paste(_tile(augmented[i], (size_w, size)), (x, y))
            label = _fit(draw, f"{caption} (augmented)", font, size_w)
            draw.text((x + 2, y + size + 1), label, fill="dimgray", font=font)
    return sheet


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` shortened with an ellipsis until it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width - 4:
        return text
    while text and draw.textlength(text + "...", font=font) > width - 4:
        text = text[:-1]
    return text + "..."
