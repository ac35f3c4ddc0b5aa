"""The demo's small volume set: simulated CT volumes + a table, written offline on first use.

This module owns :func:`build_volume_demo`, which writes, without any download, a Nervus-style
CSV and its volumes so that ``python -m nervus_lightning data=demo_volumes`` trains a 3D model
fused with the table for every task kind. Its labels carry the names of the 2D demo's
(:mod:`.demo`), so that each task's ``demo_labels`` and ``demo_positive_class`` pick them alike.

Each case is a CT-like phantom in Hounsfield units, defined in millimetres about the volume's
centre and sampled on the case's own stored grid: an ellipsoidal body in air (-1000 HU) whose
superior half is fat (-100 HU) and inferior half muscle (50 HU), as real anatomy tells up from
down, with noise of 20 HU, holding one bright sphere (250 HU, a soft edge of 1.5 mm). Every grid
covers 36 x 36 x 36 mm with anisotropic voxels, 1.5 mm in plane and 3 mm between slices (24 x 24
x 12 voxels), stored in one of four ways, so that only a reader that honours orientation and
spacing sees the same anatomy in every case:

* 40 % NIfTI (``.nii.gz``, int16 HU) with an axial RAS affine;
* 25 % NIfTI with the left-right and the slice axes reversed (array index runs to the left and
  to the feet);
* 25 % NIfTI with its axes permuted (the slice axis stored first);
* 10 % DICOM series folders (one CT slice per file, 12-bit stored values with Rescale Intercept
  -1024, file names in random order: slices are placed by Image Position, not by name).

Each carries its own display window, soft tissue ``[center 60, width 400]`` HU (DICOM Window
Center/Width; NIfTI ``cal_min``/``cal_max`` = -140 .. 260), so ``data.window=auto`` shows them
alike. ``conf/data/demo_volumes.yaml`` reads them with ``data.spacing=[2.25,2.25,2.25]`` and
``data.volume_size=[16,16,16]``: isotropic 2.25 mm voxels over the whole 36 mm cube. Columns:

=================  ==========================================================================
``uniqID``         ``vol_000`` ...
``imgpath``        ``volumes/vol_000.nii.gz`` or, for a DICOM series, the folder
                   ``volumes/vol_003``, **relative to the CSV's folder**
``input_age``      float, years, about N(60, 12) clipped to [20, 95]; it enters the hazard
``input_sex``      0/1; it enters ``label_parity``
``input_marker``   float, N(0, 1); it enters ``label_value``
``label_parity``   ``odd`` when exactly one of (the sphere's centre lies in the superior half,
                   ``input_sex`` = 1) holds, else ``even``: the parity of their sum, an XOR.
                   Neither the table nor the middle axial slice tells it (binary)
``label_size``     the sphere's radius, ``small`` (< 3.5 mm), ``medium`` (< 5 mm) or ``large``
                   (radius drawn uniformly from 2.5 to 6.5 mm; multi-class)
``label_value``    sphere diameter in mm + 1.5 * input_marker + N(0, 0.5^2) noise (regression)
``label_death``    1 = event, 0 = censored
``period_death``   follow-up time (years) = min(event time, censoring time)
``true_loghazard_death``
                   the true log-hazard of ``label_death`` (formula below); not an input
``split``          ``train`` 60 %, ``val`` 20 %, ``test`` 20 %, stratified by ``label_parity``
=================  ==========================================================================

The sphere's centre lies 5 to 13 mm above or below the centre slice (superior or inferior half,
equally likely) and within 8 mm of the centre in plane. Survival times follow a
proportional-hazards model, ``h(t) = h0 * exp(1.6 * superior + 0.6 * (age - 60) / 10)`` with
``h0 = ln 2 / 5`` per year, and independent exponential censoring of about 30 %: the hazard needs
the third dimension (where the sphere is) and the table (the age).

Everything is drawn from one ``numpy`` generator seeded with ``seed`` (DICOM UIDs are derived
from it too), so a build is reproducible bit for bit. The data set is written into a temporary
folder and renamed into place, so a crash never leaves half a data set, and a complete existing
build is reused.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from nervus_lightning.data.demo import (
    build_folder_once,
    default_cache_root,
    folder_is_complete,
    stratified_split,
    survival_outcome,
)
from nervus_lightning.data.volume_nifti import VOLUMES_EXTRA_HINT
from nervus_lightning.errors import NervusInputError

__all__ = [
    "VOLUME_DEMO_CSV_NAME",
    "VOLUME_DEMO_VERSION",
    "build_volume_demo",
]

VOLUME_DEMO_VERSION = 1
VOLUME_DEMO_CSV_NAME = "demo_volumes.csv"
VOLUME_DEMO_CASES = 300
_INFO_NAME = "build_info.json"
_IN_PLANE, _SLICES = 24, 12  # stored voxels: 24 x 24 in plane, 12 slices
_PIXEL_MM, _SLICE_MM = 1.5, 3.0
_FAT_HU, _MUSCLE_HU, _SPHERE_HU, _AIR_HU, _NOISE_HU = -100.0, 50.0, 250.0, -1000.0, 20.0
_WINDOW = (60.0, 400.0)  # center, width (HU)
_BODY_RADII_MM = (16.0, 14.0, 17.0)  # ellipsoid semi-axes along x, y, z
_RADIUS_MM = (2.5, 6.5)
_SIZE_BOUNDS_MM = (3.5, 5.0)
_BASELINE_HAZARD = float(np.log(2.0) / 5.0)  # that of demo.survival_outcome
_SPLIT_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
#: How each case is stored, with its share of the cases.
_LAYOUTS = {"nifti_ras": 0.40, "nifti_flipped": 0.25, "nifti_permuted": 0.25, "dicom": 0.10}
_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def build_volume_demo(root: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Write the demo's volume set (once) and return the path of its CSV.

    The files go to ``<root>/demo_volumes_v<VOLUME_DEMO_VERSION>/seed_<seed>/``
    (``demo_volumes.csv``, ``volumes/``, ``build_info.json``). A complete earlier build with the
    same seed is reused as it is; an incomplete one is replaced. Several processes may call this
    at the same time: each builds privately and the first to finish wins.

    Args:
        root: cache folder; ``None`` means :func:`~nervus_lightning.data.demo.default_cache_root`.
        seed: seed of every random choice (phantoms, table, targets, storage, splits, UIDs).

    Returns:
        Path of ``demo_volumes.csv``; its ``imgpath`` values are relative to its folder.

    Raises:
        NervusInputError: nibabel or pydicom (the ``volumes`` extra) is not installed.
    """
    base = Path(root) if root is not None else default_cache_root()
    target = base / f"demo_volumes_v{VOLUME_DEMO_VERSION}" / f"seed_{seed}"
    build_folder_once(
        target,
        lambda folder: _is_complete(folder, seed),
        lambda folder: _write_dataset(folder, seed),
    )
    return target / VOLUME_DEMO_CSV_NAME


def _info(seed: int, rows: int) -> dict:
    return {"version": VOLUME_DEMO_VERSION, "seed": seed, "rows": rows, "slices": _SLICES}


def _is_complete(folder: Path, seed: int) -> bool:
    return folder_is_complete(
        folder, VOLUME_DEMO_CSV_NAME, lambda rows: _info(seed, rows), _volume_written
    )


def _volume_written(path: Path) -> bool:
    """A NIfTI file, or a series folder with all its slices."""
    if path.is_dir():
        return sum(1 for f in path.iterdir() if f.suffix == ".dcm") == _SLICES
    return path.is_file()


def _import_nibabel():
    """nibabel, once pydicom (used by :func:`_write_series`) is known to be there too."""
    try:
        import nibabel
        import pydicom  # noqa: F401
    except ImportError:
        raise NervusInputError(
            "the demo volume set (data=demo_volumes) is written as NIfTI files and DICOM series "
            f"with nibabel and pydicom; install the volumes extra: {VOLUMES_EXTRA_HINT}"
        ) from None
    return nibabel


def _write_dataset(folder: Path, seed: int) -> None:
    nibabel = _import_nibabel()
    n = VOLUME_DEMO_CASES
    rng = np.random.default_rng(seed)

    age = np.round(np.clip(rng.normal(60.0, 12.0, n), 20.0, 95.0), 1)
    sex = rng.integers(0, 2, n)
    marker = np.round(rng.normal(0.0, 1.0, n), 3)
    superior = rng.integers(0, 2, n).astype(bool)
    height = rng.uniform(5.0, 13.0, n) * np.where(superior, 1.0, -1.0)
    in_plane = rng.uniform(-8.0, 8.0, (n, 2))
    centre = np.column_stack([in_plane, height])  # RAS mm (x, y, z) about the volume's centre
    radius = rng.uniform(*_RADIUS_MM, n)
    layouts = rng.choice(list(_LAYOUTS), size=n, p=list(_LAYOUTS.values()))

    parity = np.where(superior != sex.astype(bool), "odd", "even")
    size = np.select(
        [radius < _SIZE_BOUNDS_MM[0], radius < _SIZE_BOUNDS_MM[1]], ["small", "medium"], "large"
    )
    value = np.round(2.0 * radius + 1.5 * marker + rng.normal(0.0, 0.5, n), 3)
    effect = 1.6 * superior + 0.6 * (age - 60.0) / 10.0
    event, period = survival_outcome(effect, rng)
    split = stratified_split(parity, rng, _SPLIT_FRACTIONS)

    ids = [f"vol_{i:03d}" for i in range(n)]
    volume_dir = folder / "volumes"
    volume_dir.mkdir()
    paths = []
    for i, uniq in enumerate(ids):
        case_rng = np.random.default_rng([seed, i])
        if layouts[i] == "dicom":
            path = volume_dir / uniq
            _write_series(path, centre[i], radius[i], case_rng, f"{seed}.{i}")
        else:
            path = volume_dir / f"{uniq}.nii.gz"
            _write_nifti(nibabel, path, layouts[i], centre[i], radius[i], case_rng)
        paths.append(path.relative_to(folder).as_posix())

    table = pd.DataFrame(
        {
            "uniqID": ids,
            "imgpath": paths,
            "input_age": age,
            "input_sex": sex,
            "input_marker": marker,
            "label_parity": parity,
            "label_size": size,
            "label_value": value,
            "label_death": event,
            "period_death": period,
            "true_loghazard_death": np.round(np.log(_BASELINE_HAZARD) + effect, 6),
            "split": split,
        }
    )
    table.to_csv(folder / VOLUME_DEMO_CSV_NAME, index=False)
    # Written last: its presence, with the CSV, marks the build as complete.
    (folder / _INFO_NAME).write_text(json.dumps(_info(seed, n)))


def _phantom(world: np.ndarray, centre: np.ndarray, radius: float, rng) -> np.ndarray:
    """HU values at RAS points ``world`` (..., 3) in mm about the volume's centre."""
    body = np.sum((world / np.asarray(_BODY_RADII_MM)) ** 2, axis=-1) <= 1.0
    tissue = np.where(world[..., 2] > 0.0, _FAT_HU, _MUSCLE_HU)
    distance = np.linalg.norm(world - centre, axis=-1)
    inside = np.clip((radius - distance) / 1.5 + 0.5, 0.0, 1.0)  # soft edge of 1.5 mm
    noise = rng.normal(0.0, _NOISE_HU, body.shape)
    return np.where(body, tissue + inside * (_SPHERE_HU - tissue) + noise, _AIR_HU)


def _grid(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """World coordinates (shape + (3,)) of every voxel centre of an array under ``affine``."""
    index = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    return index @ affine[:3, :3].T + affine[:3, 3]


def _nifti_affine(layout: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The RAS affine and array shape of a NIfTI layout; the grid is centred on 0."""
    columns = {  # each array axis: its world direction and step (mm)
        "nifti_ras": [(0, _PIXEL_MM), (1, _PIXEL_MM), (2, _SLICE_MM)],
        "nifti_flipped": [(0, -_PIXEL_MM), (1, _PIXEL_MM), (2, -_SLICE_MM)],
        "nifti_permuted": [(2, _SLICE_MM), (0, _PIXEL_MM), (1, _PIXEL_MM)],
    }[layout]
    affine = np.eye(4)
    shape = []
    for axis, (world, step) in enumerate(columns):
        count = _SLICES if world == 2 else _IN_PLANE
        affine[:3, axis] = 0.0
        affine[world, axis] = step
        affine[world, 3] = -step * (count - 1) / 2
        shape.append(count)
    return affine, tuple(shape)


def _write_nifti(nibabel, path: Path, layout, centre, radius, rng) -> None:
    affine, shape = _nifti_affine(layout)
    hu = _phantom(_grid(affine, shape), centre, radius, rng)
    image = nibabel.Nifti1Image(np.rint(hu).astype(np.int16), affine)
    center, width = _WINDOW
    image.header["cal_min"], image.header["cal_max"] = center - width / 2, center + width / 2
    image.header.set_xyzt_units("mm")
    # gzip with a fixed time stamp (nibabel's own writer stamps the current time), so that a
    # build is the same bytes every time.
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as stream:
        stream.write(image.to_bytes())
    path.write_bytes(buffer.getvalue())


def _write_series(folder: Path, centre, radius, rng, key: str) -> None:
    """One axial CT series (12 slices, feet to head) in LPS, file names in random order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    half_plane = _PIXEL_MM * (_IN_PLANE - 1) / 2
    half_depth = _SLICE_MM * (_SLICES - 1) / 2
    rows, cols = np.meshgrid(np.arange(_IN_PLANE), np.arange(_IN_PLANE), indexing="ij")
    series_uid = generate_uid(entropy_srcs=["nervus demo volumes series", key])
    study_uid = generate_uid(entropy_srcs=["nervus demo volumes study", key])
    order = rng.permutation(_SLICES)
    for k in range(_SLICES):
        origin_lps = np.array([-half_plane, -half_plane, -half_depth + k * _SLICE_MM])
        # Row direction +x (to the left), column direction +y (to the back), as LPS.
        lps = np.stack(
            [
                origin_lps[0] + cols * _PIXEL_MM,
                origin_lps[1] + rows * _PIXEL_MM,
                np.full(rows.shape, origin_lps[2]),
            ],
            axis=-1,
        )
        ras = lps * np.array([-1.0, -1.0, 1.0])
        hu = _phantom(ras, centre, radius, rng)
        stored = np.clip(np.rint(hu + 1024.0), 0, 4095).astype("<u2")
        instance_uid = generate_uid(entropy_srcs=["nervus demo volumes slice", key, str(k)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = _CT_STORAGE
        meta.MediaStorageSOPInstanceUID = instance_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = _CT_STORAGE, instance_uid
        ds.Modality = "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.6g}" for v in origin_lps]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = [f"{_PIXEL_MM:g}", f"{_PIXEL_MM:g}"]
        ds.SliceThickness = f"{_SLICE_MM:g}"
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.WindowCenter, ds.WindowWidth = f"{_WINDOW[0]:g}", f"{_WINDOW[1]:g}"
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"IM{order[k]:04d}.dcm", enforce_file_format=True)
