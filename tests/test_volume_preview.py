"""``python -m nervus_lightning.preview`` on volumes: three orthogonal mid-slices per case,
oriented as a radiology viewer shows them, with the voxel size's aspect ratio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_command
from PIL import Image

from nervus_lightning.data.preview import orthogonal_slices, volume_figure
from nervus_lightning.data.volume_input import VolumeSettings, read_training_volume
from nervus_lightning.data.volumes import read_volume

nib = pytest.importorskip("nibabel")

CAPTION, GAP, MIN_TILE = 14, 4, 128


def write_nifti(path: Path, values: np.ndarray, zooms=(1.0, 1.0, 1.0)) -> None:
    """An int16 NIfTI, RAS+ identity axes scaled by ``zooms``: voxel ``(i, j, k)`` runs to the
    patient's right, anterior and superior."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(values.astype(np.int16), np.diag([*zooms, 1.0]))
    image.header["cal_min"], image.header["cal_max"] = 0, 1000
    nib.save(image, str(path))


def marked_volume(shape=(11, 9, 7)) -> np.ndarray:
    """Zeros with a bright superior-left-anterior octant that includes the centre voxel (odd
    sides: the centre is the middle index of every axis, whichever way an axis runs)."""
    values = np.zeros(shape)
    ci, cj, ck = (n // 2 for n in shape)
    values[: ci + 1, cj:, ck:] = 1000  # low i: left; high j: anterior; high k: superior
    return values


def panel_boxes(shape, spacing=(1.0, 1.0, 1.0)):
    """``(top, left, height, width)`` of the axial, coronal and sagittal panels in
    :func:`volume_figure`'s picture, from the layout its docstring describes."""
    extents = [n * s / min(spacing) for n, s in zip(shape, spacing, strict=True)]
    scale = max(1, -(-MIN_TILE // int(np.ceil(max(extents)))))
    boxes, x = [], GAP
    for rows, columns in ((1, 2), (0, 2), (0, 1)):
        height, width = round(extents[rows] * scale), round(extents[columns] * scale)
        boxes.append((CAPTION, x, height, width))
        x += width + GAP
    return boxes


def corners(picture: np.ndarray, box, threshold: float) -> dict[str, bool]:
    """Whether each corner voxel of a panel is above ``threshold``."""
    top, left, height, width = box
    panel = picture[top : top + height, left : left + width]
    bright = panel > threshold
    return {
        "top-left": bool(bright[0, 0]),
        "top-right": bool(bright[0, -1]),
        "bottom-left": bool(bright[-1, 0]),
        "bottom-right": bool(bright[-1, -1]),
    }


def test_a_superior_left_anterior_marker_lands_where_a_viewer_shows_it(tmp_path):
    write_nifti(tmp_path / "marked.nii.gz", marked_volume())
    volume = read_volume(tmp_path / "marked.nii.gz").array  # (D, H, W) = (7, 9, 11), LPS
    assert volume.shape == (7, 9, 11)
    # Axial: anterior up, patient's left on the right. Coronal: superior up, left on the right.
    # Sagittal: superior up, anterior on the left.
    expected = {"axial": "top-right", "coronal": "top-right", "sagittal": "top-left"}
    for plane, panel in orthogonal_slices(volume):
        bright = {name for name, on in corners(panel, (0, 0, *panel.shape), 0.5).items() if on}
        assert bright == {expected[plane]}, plane
    figure = volume_figure(volume[None])
    for (plane, _), box in zip(orthogonal_slices(volume), panel_boxes(volume.shape), strict=True):
        bright = {name for name, on in corners(figure, box, 127).items() if on}
        assert bright == {expected[plane]}, plane


def test_the_spacing_gives_each_panel_its_physical_aspect_ratio():
    volume = np.full((1, 8, 16, 16), 0.5, dtype=np.float32)  # grey 128 everywhere
    for spacing, coronal_rows in (((2.0, 1.0, 1.0), 128), (None, 64)):
        figure = volume_figure(volume, spacing)
        # The coronal panel (D rows x W columns) starts after the 128 px axial one.
        column = figure[:, GAP + 128 + GAP + 64]
        assert (column == 128).sum() == coronal_rows, spacing
        assert (figure[:, GAP + 64] == 128).sum() == 128  # axial: 16 x 16 mm, 128 px


def _run(args, cwd):
    return run_command("nervus_lightning.preview", args, cwd, timeout=300)


def test_preview_command_writes_three_planes_per_case_and_a_sheet(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        values = np.clip(rng.normal(300, 80, (12, 10, 9)), 0, 1000)
        values[:4, 6:, 5:] = 900  # a bright right-anterior-superior block
        write_nifti(tmp_path / "vol" / f"{i}.nii.gz", values, zooms=(1.0, 1.5, 2.0))
        rows.append((f"case/{i}", f"vol/{i}.nii.gz", "ab"[i % 2], ["train", "val"][i // 3]))
    csv = tmp_path / "vols.csv"
    pd.DataFrame(rows, columns=["uniqID", "imgpath", "label_y", "split"]).to_csv(csv, index=False)
    size, spacing = [8, 12, 12], [2.0, 1.0, 1.0]
    args = [
        f"data.csv={csv}",
        f"data.volume_size=[{','.join(map(str, size))}]",
        f"data.spacing=[{','.join(map(str, spacing))}]",
        "data.window=[500,1000]",
        "n=2",
        "out=seen",
        "hydra.run.dir=h",
    ]
    out = _run(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = tmp_path / "seen"
    assert sorted(p.name for p in seen.iterdir()) == ["case_0.png", "case_1.png", "sheet.png"]
    # Exactly the network's input (resampled to 2 x 1 x 1 mm, cropped or padded, windowed).
    settings = VolumeSettings(tuple(size), tuple(spacing), (500.0, 1000.0))
    for i in range(2):
        written = np.asarray(Image.open(seen / f"case_{i}.png"))
        network = read_training_volume(tmp_path / "vol" / f"{i}.nii.gz", settings)
        np.testing.assert_array_equal(written, volume_figure(network, spacing))
    # Two tiles in a row, each a whole three-panel figure, and no title line.
    figure_h, figure_w = written.shape
    sheet = Image.open(seen / "sheet.png")
    assert sheet.size == (2 * (figure_w + GAP) + GAP, figure_h + CAPTION + 2 * GAP)
