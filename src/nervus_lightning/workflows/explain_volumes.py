"""Grad-CAM of a volume model (``data.volume_size``): the 3D map, the volume as the network saw
it, both as NIfTI in the same world coordinates, and a PNG of three orthogonal mid-slices.

Which cases are explained, the explained target and ``cases.csv`` are
:mod:`nervus_lightning.workflows.explain`'s; this module owns what differs in 3D:

* **The layer**: the extractor's own ``gradcam_layer``, as in 2D: ``small_cnn_3d`` its last
  ``stage``, MONAI's ResNets ``layer4``, MONAI's DenseNets ``features`` (its final norm); or
  ``explain.layer=<module path>`` (a module whose output is ``(B, C, d, h, w)``).
* **The map**: captum's ``LayerGradCam`` (the gradient averaged over the layer's three spatial
  axes), negative evidence cut, upsampled *trilinearly* to the network's input grid ``(D, H, W)``
  (:func:`~nervus_lightning.models.attribution.view_grad_cams`, as in 2D: with several views
  ``imgpath_<view>``, one map per view, that view run live through its extractor).
* **Where it lies**: the volume is read again with :func:`~nervus_lightning.data.
  volumes.read_volume` (as training reads it) for its LPS affine; with ``data.spacing`` the
  centre crop or pad shifts the grid by whole voxels (:func:`network_affine`). NIfTI stores RAS,
  so the LPS affine is turned with ``diag(-1, -1, 1, 1)``. ``<uniqID>_input.nii.gz`` (the
  network's input, float32 in ``[0, 1]``) and ``<uniqID>_gradcam.nii.gz`` share that affine, so
  the map opens over the input in any viewer (and over the original scan, in world coordinates).
  With several views each has its own scan, so its own affine: ``<uniqID>__<view>_gradcam.nii.gz``
  lies where that view's volume lies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nervus_lightning.data.volume_input import VolumeSettings
from nervus_lightning.data.volume_nifti import LPS_FROM_RAS, import_nibabel
from nervus_lightning.data.volumes import read_volume


def network_affine(path: str | Path, settings: VolumeSettings) -> np.ndarray:
    """NIfTI (RAS) affine of the network's input grid: voxel ``(d, h, w)`` of the
    ``(1, D, H, W)`` tensor -> RAS mm, as :func:`~nervus_lightning.data.volume_input.
    read_training_volume` builds that tensor (resize to ``shape``, or resample to ``spacing``
    then centre crop or pad: a shift by whole voxels)."""
    if settings.spacing is None:
        volume = read_volume(path, shape=settings.shape, window=settings.window)
        lps = volume.affine
    else:
        volume = read_volume(path, spacing=settings.spacing, window=settings.window)
        # centre_crop_or_pad: network voxel i is source voxel i + offset on each axis.
        offset = [
            (have - want) // 2 if have >= want else -((want - have) // 2)
            for have, want in zip(volume.array.shape, settings.shape, strict=True)
        ]
        shift = np.eye(4)
        shift[:3, 3] = offset
        lps = volume.affine @ shift
    return LPS_FROM_RAS @ lps


def save_nifti(path: Path, values: np.ndarray, affine: np.ndarray) -> None:
    """``values`` (D, H, W) as float32 NIfTI with ``affine`` (RAS) as qform and sform."""
    nib = import_nibabel(path)
    image = nib.Nifti1Image(np.ascontiguousarray(values, dtype=np.float32), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


def mid_slices(array: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices through the middle of a ``(D, H, W)`` LPS array, as a
    radiologist looks at them: axial from the feet (patient's right on the left, anterior at the
    top), coronal from the front, sagittal from the patient's left, superior at the top."""
    d, h, w = (n // 2 for n in array.shape)
    return [array[d], array[::-1, h, :], array[::-1, :, w]]


def mid_slice_overlay(
    volume: np.ndarray, cam: np.ndarray, colormap: str = "jet", alpha: float = 0.6
) -> np.ndarray:
    """``h x w x 3`` uint8: the three mid-slices (:func:`mid_slices`) of ``volume`` (floats in
    ``[0, 1]``) side by side, each with ``cam`` scaled to its 3D maximum drawn over it in
    ``colormap`` (opacity ``alpha`` at the maximum, zero where the map is zero)."""
    from matplotlib import colormaps

    peak = float(cam.max())
    scaled = cam / peak if peak > 0 else np.zeros_like(cam)
    panels = []
    for gray, heat in zip(mid_slices(np.clip(volume, 0, 1)), mid_slices(scaled), strict=True):
        base = np.repeat(gray[..., None], 3, axis=2)
        weight = (alpha * heat)[..., None]
        panels.append((1 - weight) * base + weight * colormaps[colormap](heat)[..., :3])
    height = max(p.shape[0] for p in panels)
    gap = np.ones((height, 2, 3))
    padded = []
    for panel in panels:
        rows = height - panel.shape[0]
        padded += [np.pad(panel, ((rows // 2, rows - rows // 2), (0, 0), (0, 0))), gap]
    return np.rint(255.0 * np.concatenate(padded[:-1], axis=1)).astype(np.uint8)


def write_volume_case(
    folder: Path,
    stem: str,
    volume: torch.Tensor,
    cam: np.ndarray,
    affine: np.ndarray,
    colormap: str = "jet",
    alpha: float = 0.6,
) -> tuple[str, str, str]:
    """Write ``<stem>_gradcam.nii.gz``, ``<stem>_input.nii.gz`` and ``<stem>.png`` into
    ``folder``; return the three file names."""
    from PIL import Image

    array = volume.detach().float().cpu().numpy()[0]
    names = (f"{stem}_gradcam.nii.gz", f"{stem}_input.nii.gz", f"{stem}.png")
    save_nifti(folder / names[0], cam, affine)
    save_nifti(folder / names[1], array, affine)
    Image.fromarray(mid_slice_overlay(array, cam, colormap, alpha)).save(folder / names[2])
    return names
