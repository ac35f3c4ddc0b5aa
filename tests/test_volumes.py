"""Reading volumes: NIfTI files, DICOM series folders and multi-frame DICOM files, in one
orientation, resampled, windowed as 2D DICOM is.

Real files come from inside the installed nibabel and pydicom packages (never downloaded); the
DICOM series are written here with pydicom from numpy arrays, at known positions, so every
expected array and affine is built by hand. Orientation is compared with nibabel's own
``as_closest_canonical`` and ``aff2axcodes``, trilinear resizing with torch's ``interpolate``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

nibabel = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from nervus_lightning.data.volume_nifti import LPS_FROM_RAS  # noqa: E402
from nervus_lightning.data.volumes import (  # noqa: E402
    CANONICAL_AXES,
    read_volume,
    resample,
    volume_problem,
)
from nervus_lightning.errors import NervusInputError  # noqa: E402

NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"
PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
INT16_RANGE = 65535.0  # a NIfTI int16 volume shown with window "none": (x + 32768) / 65535


def shipped(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        pytest.skip(f"{name} is not shipped with this version")
    return path


def _ds_numbers(values) -> list[str]:
    return [f"{float(v):.6g}" for v in values]


def _file_meta(sop_class: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _image_dataset(sop_class: str, stored: np.ndarray, uid: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = modality, uid
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    return ds


class Series:
    """A synthetic DICOM series: stored values ``(slices, rows, columns)`` at known positions."""

    def __init__(
        self,
        stored: np.ndarray,
        *,
        origin=(-40.0, -30.0, 100.0),
        row=(1.0, 0.0, 0.0),
        column=(0.0, 1.0, 0.0),
        step=(0.0, 0.0, 2.5),
        pixel_spacing=(0.8, 0.6),
        slope=1.0,
        intercept=-1024.0,
        uid=None,
        **elements,
    ) -> None:
        self.stored, self.elements = stored, elements
        self.origin, self.step = np.asarray(origin), np.asarray(step)
        self.row, self.column = np.asarray(row), np.asarray(column)
        self.pixel_spacing, self.slope, self.intercept = pixel_spacing, slope, intercept
        self.uid = uid or generate_uid()

    def position(self, k: int) -> np.ndarray:
        return self.origin + k * self.step

    @property
    def affine(self) -> np.ndarray:
        """(slice, row, column) -> LPS mm, by the DICOM definitions."""
        affine = np.eye(4)
        affine[:3, 0] = self.step
        affine[:3, 1] = self.column * self.pixel_spacing[0]
        affine[:3, 2] = self.row * self.pixel_spacing[1]
        affine[:3, 3] = self.origin
        return affine

    def slice_dataset(self, k: int) -> Dataset:
        ds = _image_dataset(CT_STORAGE, self.stored[k], self.uid, "CT")
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = _ds_numbers(self.position(k))
        ds.ImageOrientationPatient = _ds_numbers([*self.row, *self.column])
        ds.PixelSpacing = _ds_numbers(self.pixel_spacing)
        ds.RescaleSlope, ds.RescaleIntercept = f"{self.slope:g}", f"{self.intercept:g}"
        for keyword, value in self.elements.items():
            setattr(ds, keyword, value)
        return ds

    def write(self, folder: Path, names=None, skip=()) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        names = names or [f"slice{k:03d}.dcm" for k in range(len(self.stored))]
        for k, name in enumerate(names):
            if k not in skip:
                self.slice_dataset(k).save_as(folder / name, enforce_file_format=True)
        return folder


def _ramp(shape=(6, 5, 4), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, size=shape).astype(np.uint16)


def _window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's LINEAR window (PS3.3 C.11.2.1.2.1) onto [0, 1], written out."""
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    inside = (hu - (center - 0.5)) / (width - 1) + 0.5
    return np.where(hu <= low, 0.0, np.where(hu > high, 1.0, inside))


def _nib_canonical_as_ours(image) -> tuple[np.ndarray, np.ndarray]:
    """nibabel's closest-canonical RAS data and affine, rearranged to our (S, P, L) axes."""
    canonical = nibabel.as_closest_canonical(image)
    data = np.asarray(canonical.dataobj, dtype=np.float64)
    nx, ny, _ = data.shape
    ours_to_nib = np.array(  # (d, h, w) -> (i, j, k) = (nx - 1 - w, ny - 1 - h, d)
        [[0, 0, -1, nx - 1], [0, -1, 0, ny - 1], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
    )
    expected = data.transpose(2, 1, 0)[:, ::-1, ::-1]
    return expected, LPS_FROM_RAS @ canonical.affine @ ours_to_nib


# --- orientation -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, index", [("anatomical.nii", None), ("example_nifti2.nii.gz", 1)])
def test_nifti_orientation_matches_nibabels_closest_canonical(name, index):
    path = shipped(NIBABEL_DATA, name)
    image = nibabel.load(path)
    if index is not None:  # the second volume of a 4D NIfTI-2 file with an oblique affine
        image = nibabel.Nifti1Image(np.asarray(image.dataobj)[..., index], image.affine)
    expected, affine = _nib_canonical_as_ours(image)
    volume = read_volume(path, window="none", volume_index=index)
    np.testing.assert_allclose(volume.array, (expected + 32768) / INT16_RANGE, atol=1e-6)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-6)
    assert nibabel.aff2axcodes(LPS_FROM_RAS @ volume.affine) == CANONICAL_AXES
    assert volume.spacing == pytest.approx(np.linalg.norm(affine[:3, :3], axis=0))


@pytest.mark.parametrize(
    "order, flips", [((0, 1, 2), (0,)), ((2, 0, 1), ()), ((1, 2, 0), (0, 2)), ((2, 1, 0), (1,))]
)
def test_a_permuted_and_flipped_nifti_copy_reads_the_same(tmp_path, order, flips):
    image = nibabel.load(shipped(NIBABEL_DATA, "anatomical.nii"))
    data = np.asarray(image.dataobj)
    # The same scan stored another way: new index n -> old index (permuted, flipped).
    new_data = data.transpose(order)
    to_old = np.zeros((4, 4))
    to_old[3, 3] = 1
    for new, old in enumerate(order):
        to_old[old, new] = 1
    for axis in flips:
        new_data = np.flip(new_data, axis)
        flip = np.eye(4)
        flip[axis, axis], flip[axis, 3] = -1, new_data.shape[axis] - 1
        to_old = to_old @ flip
    copy = tmp_path / "copy.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(new_data), image.affine @ to_old), copy)
    original, moved = read_volume(image.get_filename()), read_volume(copy)
    assert nibabel.aff2axcodes(image.affine @ to_old) != nibabel.aff2axcodes(image.affine)
    np.testing.assert_array_equal(moved.array, original.array)
    np.testing.assert_allclose(moved.affine, original.affine, atol=1e-9)


def test_a_dicom_series_and_its_nifti_agree(tmp_path):
    # A sagittal series (rows run down the patient, slices step to the patient's left by
    # -3 mm, i.e. written right to left) and the same values as a NIfTI, stored (i, j, k) =
    # (column, row, slice) with the equivalent RAS affine, as dcm2niix stores it.
    series = Series(_ramp((5, 6, 4)), row=(0, 1, 0), column=(0, 0, -1), step=(-3, 0, 0), slope=1.0)
    folder = series.write(tmp_path / "sagittal")
    stored = series.stored.astype(np.int16).transpose(2, 1, 0)
    nib_to_ours = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    image = nibabel.Nifti1Image(stored, LPS_FROM_RAS @ series.affine @ nib_to_ours)
    image.header.set_slope_inter(series.slope, series.intercept)
    nifti = tmp_path / "sagittal.nii.gz"
    nibabel.save(image, nifti)

    from_dicom = read_volume(folder, window=[40, 400])
    from_nifti = read_volume(nifti, window=[40, 400])
    np.testing.assert_allclose(from_dicom.array, from_nifti.array, atol=1e-6)
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-4)
    assert (from_dicom.modality, from_nifti.modality) == ("CT", "")
    assert nibabel.aff2axcodes(LPS_FROM_RAS @ from_dicom.affine) == CANONICAL_AXES
    # (slices, rows, columns) = (5, 6, 4) ran left-to-right reversed, down, back: now
    # superior (the rows, flipped), posterior (the columns), left (the slices, reversed).
    assert from_dicom.array.shape == (6, 4, 5)
    hu = series.stored - 1024.0
    expected = _window(hu.transpose(1, 2, 0)[::-1, :, ::-1], 40, 400)
    np.testing.assert_allclose(from_dicom.array, expected, atol=1e-6)


# --- DICOM series ----------------------------------------------------------------------------


def test_slices_are_ordered_by_position_not_file_name(tmp_path):
    # Positions step down (feet-wards) as the instance number rises, and the file names are
    # shuffled: only the positions tell the order.
    series = Series(_ramp((7, 5, 4)), step=(0, 0, -2.0), uid="1.2.826.0.1.3680043.2.1")
    names = [f"IM{n:04d}" for n in np.random.default_rng(3).permutation(7)]
    folder = tmp_path / "ct"
    series.write(folder, names=[f"{name}.dcm" for name in names])
    volume = read_volume(folder, window="none")
    hu = series.stored.astype(np.float64) - 1024
    low, high = -1024.0, 4095 - 1024.0  # 12 stored bits after the rescale
    np.testing.assert_allclose(volume.array, ((hu - low) / (high - low))[::-1], atol=1e-6)
    expected_affine = series.affine.copy()  # slices reversed: now from the feet up
    expected_affine[:3, 3] = series.position(6)
    expected_affine[:3, 0] = -series.step
    np.testing.assert_allclose(volume.affine, expected_affine, atol=1e-6)
    assert volume.spacing == pytest.approx((2.0, 0.8, 0.6))
    assert volume_problem(folder) is None


def test_two_series_in_one_folder_are_refused_naming_both(tmp_path):
    first = Series(_ramp((4, 5, 4)), uid="1.2.3.1")
    first.write(tmp_path / "mixed")
    scout = Series(_ramp((2, 5, 4)), uid="1.2.3.2", origin=(0, 0, 0))
    scout.write(tmp_path / "mixed", names=["scout1.dcm", "scout2.dcm"])
    with pytest.raises(NervusInputError) as raised:
        read_volume(tmp_path / "mixed")
    message = str(raised.value)
    assert "mixed" in message and "2 DICOM series" in message
    assert "1.2.3.1 (4 file(s))" in message and "1.2.3.2 (2 file(s))" in message
    assert volume_problem(tmp_path / "mixed") == raised.value.reason


def test_a_missing_slice_is_refused_naming_the_gap(tmp_path):
    folder = Series(_ramp((6, 5, 4))).write(tmp_path / "gap", skip={3})
    with pytest.raises(NervusInputError, match="1 slice.* missing") as raised:
        read_volume(folder)
    assert "slice002.dcm" in str(raised.value) and "slice004.dcm" in str(raised.value)
    assert "missing" in volume_problem(folder)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"ImagePositionPatient": ["-40", "-30", "108.4"]}, "not evenly spaced"),
        ({"ImagePositionPatient": ["-40", "-30", "105"]}, "lie at one position"),
        ({"ImagePositionPatient": ["-39", "-30", "107.5"]}, "off the line"),
        ({"PixelSpacing": ["0.9", "0.6"]}, "pixel size"),
        ({"ImageOrientationPatient": ["1", "0", "0", "0", "0.96", "0.28"]}, "orientation"),
    ],
)
def test_a_slice_that_does_not_fit_the_stack_is_refused(tmp_path, change, expected):
    series = Series(_ramp((5, 5, 4)))  # z = 100, 102.5, ..., 110
    folder = series.write(tmp_path / "odd")
    ds = series.slice_dataset(3)  # z = 107.5
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    ds.save_as(folder / "slice003.dcm", enforce_file_format=True)
    with pytest.raises(NervusInputError, match=expected):
        read_volume(folder)
    assert expected in volume_problem(folder)


def test_a_gantry_tilted_series_is_placed_by_its_positions(tmp_path):
    # A tilted CT: each slice 2.5 mm higher and 0.4 mm further back; the slice axis of the
    # affine is that step, not the normal, so every voxel is where the scanner says.
    series = Series(_ramp((5, 5, 4)), step=(0, 0.4, 2.5))
    volume = read_volume(series.write(tmp_path / "tilt"), window="none")
    np.testing.assert_allclose(volume.affine, series.affine, atol=1e-6)


def test_a_single_slice_is_not_a_volume(tmp_path):
    folder = Series(_ramp((1, 5, 4))).write(tmp_path / "one")
    with pytest.raises(NervusInputError, match="one slice"):
        read_volume(folder)
    with pytest.raises(NervusInputError, match="single DICOM image"):
        read_volume(shipped(PYDICOM_DATA, "CT_small.dcm"))


def test_ct_window_40_400_maps_hounsfield_units_as_computed_by_hand(tmp_path):
    hu = np.array([-1000, -160, -100, 0, 40, 100, 200, 240, 1000], dtype=np.float64)
    stored = np.broadcast_to((hu + 1024).astype(np.uint16), (3, 4, hu.size))
    volume = read_volume(Series(stored).write(tmp_path / "ct"), window=[40, 400])
    # (hu - 39.5) / 399 + 0.5, 0 at or below -160, 1 above 239.5
    by_hand = [0.0, 0.0, 0.15037594, 0.40100251, 0.50125313, 0.65162907, 0.90225564, 1.0, 1.0]
    np.testing.assert_allclose(volume.array[1, 2], by_hand, atol=1e-6)
    np.testing.assert_allclose(volume.array, _window(stored - 1024.0, 40, 400), atol=1e-6)


def test_modality_lut_of_each_slice_is_applied(tmp_path):
    # Slope 2, intercept -100 over 12 stored bits: modality values -100 .. 8090. Window none
    # scales that range to [0, 1]: stored v -> (2 v - 100 + 100) / 8190.
    stored = _ramp((4, 3, 5))
    volume = read_volume(
        Series(stored, slope=2.0, intercept=-100.0).write(tmp_path / "lut"), window="none"
    )
    np.testing.assert_allclose(volume.array, 2 * stored / 8190.0, atol=1e-6)
    # One slice stored with another rescale but the same modality values reads the same.
    series = Series(stored, slope=2.0, intercept=-100.0)
    folder = series.write(tmp_path / "mixed_rescale")
    ds = series.slice_dataset(1)
    ds.RescaleIntercept = "-120"
    ds.PixelData = (stored[1] + 10).astype("<u2").tobytes()
    ds.save_as(folder / "slice001.dcm", enforce_file_format=True)
    mixed = read_volume(folder, window=[500, 2000]).array
    alike = read_volume(tmp_path / "lut", window=[500, 2000]).array
    np.testing.assert_allclose(mixed, alike, atol=1e-6)


def test_auto_uses_the_series_own_window_and_monochrome1_is_inverted(tmp_path):
    stored = _ramp((4, 5, 6))
    windowed = Series(stored, WindowCenter="40", WindowWidth="400").write(tmp_path / "own")
    own = read_volume(windowed, window="auto").array
    np.testing.assert_allclose(own, _window(stored - 1024.0, 40, 400), atol=1e-6)
    inverted = Series(stored, PhotometricInterpretation="MONOCHROME1").write(tmp_path / "m1")
    np.testing.assert_allclose(read_volume(inverted, window=[40, 400]).array, 1 - own, atol=1e-6)


# --- multi-frame DICOM -----------------------------------------------------------------------


def _enhanced(series: Series, order: np.ndarray) -> Dataset:
    """The series as one Enhanced CT file, its frames stored in ``order``."""
    ds = _image_dataset(ENHANCED_CT_STORAGE, series.stored[order], series.uid, "CT")
    ds.NumberOfFrames = len(order)
    orientation, measures, transform = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = _ds_numbers([*series.row, *series.column])
    measures.PixelSpacing = _ds_numbers(series.pixel_spacing)
    transform.RescaleSlope, transform.RescaleIntercept = "1", f"{series.intercept:g}"
    shared = Dataset()
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in order:
        plane, group = Dataset(), Dataset()
        plane.ImagePositionPatient = _ds_numbers(series.position(k))
        group.PlanePositionSequence = [plane]
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = frames
    return ds


def test_enhanced_multi_frame_file_reads_like_its_series(tmp_path):
    # No Enhanced CT/MR volume ships with pydicom: one is built here, its frames out of order.
    series = Series(_ramp((6, 5, 4)), row=(0.8, 0.6, 0), column=(-0.6, 0.8, 0))
    folder = series.write(tmp_path / "series")
    path = tmp_path / "enhanced.dcm"
    _enhanced(series, np.array([3, 0, 5, 1, 4, 2])).save_as(path, enforce_file_format=True)
    from_file, from_series = (
        read_volume(path, window=[40, 400]),
        read_volume(folder, window=[40, 400]),
    )
    np.testing.assert_allclose(from_file.array, from_series.array, atol=1e-6)
    np.testing.assert_allclose(from_file.affine, from_series.affine, atol=1e-6)
    assert volume_problem(path) is None
    cut = _enhanced(series, np.arange(6))
    cut.PixelData = cut.PixelData[: len(cut.PixelData) // 2]
    cut.save_as(tmp_path / "cut.dcm", enforce_file_format=True)
    with pytest.raises(NervusInputError, match="cut.dcm.*truncated"):
        read_volume(tmp_path / "cut.dcm")
    shutil.copy(path, folder / "enhanced.dcm")  # a multi-frame file among the slices
    with pytest.raises(NervusInputError, match="enhanced.dcm is a multi-frame file"):
        read_volume(folder)


def test_rt_dose_multi_frame_file_is_placed_by_its_grid_frame_offsets():
    path = shipped(PYDICOM_DATA, "rtdose.dcm")  # 15 frames 5 mm apart, 10 x 10 pixels of 10 mm
    ds = pydicom.dcmread(path)
    volume = read_volume(path)
    # No window, 32 unsigned stored bits: value / (2**32 - 1); axial: no flip.
    np.testing.assert_allclose(volume.array, ds.pixel_array / (2.0**32 - 1), rtol=1e-6)
    expected = np.eye(4)
    expected[:3, :3] = [[0, 0, 10], [0, 10, 0], [5, 0, 0]]
    expected[:3, 3] = [float(v) for v in ds.ImagePositionPatient]
    np.testing.assert_allclose(volume.affine, expected)
    assert volume.modality == "RTDOSE"


# --- resampling ------------------------------------------------------------------------------


def _centre(volume) -> np.ndarray:
    return volume.affine @ np.r_[(np.asarray(volume.array.shape) - 1) / 2, 1.0]


@pytest.mark.parametrize(
    "spacing, shape", [([3.0, 2.5, 1.5], None), (None, [10, 11, 12]), ([1.0, 3.0, 3.0], [8, 8, 8])]
)
def test_resampling_keeps_the_centre_and_gives_the_asked_size(spacing, shape):
    path = shipped(NIBABEL_DATA, "anatomical.nii")
    original = read_volume(path)
    volume = read_volume(path, spacing=spacing, shape=shape)
    np.testing.assert_allclose(_centre(volume), _centre(original), atol=1e-9)
    if shape is not None:
        assert volume.array.shape == tuple(shape)
    if spacing is not None and shape is None:
        assert volume.spacing == pytest.approx(spacing)
        extent = np.asarray(original.array.shape) * np.asarray(original.spacing)
        assert volume.array.shape == tuple(np.rint(extent / np.asarray(spacing)).astype(int))
    np.testing.assert_allclose(volume.spacing, np.linalg.norm(volume.affine[:3, :3], axis=0))


def test_a_linear_ramp_in_the_world_stays_that_ramp_after_resampling():
    # Values that are a linear function of the world position must, away from the edges, equal
    # that function at the new voxels' world positions: interpolation and affine agree.
    affine = np.array([[0, 0, 0.7, -20], [0, 1.2, 0, 5], [2.5, 0, 0, 40], [0, 0, 0, 1]], float)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in (9, 11, 13)], indexing="ij"), axis=-1)
    slope = np.array([0.3, -0.2, 0.5])

    def field(affine, index):
        return (index @ affine[:3, :3].T + affine[:3, 3]) @ slope

    values = field(affine, index).astype(np.float32)
    resampled, new_affine = resample(values, affine, spacing=np.array([1.1, 0.9, 0.5]))
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in resampled.shape], indexing="ij"), -1)
    inner = tuple(slice(2, n - 2) for n in resampled.shape)
    np.testing.assert_allclose(resampled[inner], field(new_affine, grid)[inner], atol=1e-4)


@pytest.mark.parametrize("shape", [(5, 7, 4), (14, 20, 30)])
def test_resizing_to_a_shape_matches_torchs_trilinear_interpolate(shape):
    values = np.random.default_rng(0).random((9, 11, 13)).astype(np.float32)
    resized, _ = resample(values, np.eye(4), shape=np.asarray(shape))
    torch_resized = torch.nn.functional.interpolate(
        torch.from_numpy(values)[None, None], size=shape, mode="trilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(resized, torch_resized, atol=1e-5)


# --- refused inputs and the cheap check ------------------------------------------------------


def test_a_4d_nifti_is_refused_naming_its_shape_unless_one_volume_is_chosen():
    path = shipped(NIBABEL_DATA, "example4d.nii.gz")
    with pytest.raises(NervusInputError, match="128 x 96 x 24 x 2") as raised:
        read_volume(path)
    assert "example4d.nii.gz" in str(raised.value)
    assert "2 volumes" in volume_problem(path)
    assert volume_problem(path, volume_index=1) is None
    assert read_volume(path, volume_index=0).array.shape == (24, 96, 128)
    with pytest.raises(NervusInputError, match="outside its 2 volumes"):
        read_volume(path, volume_index=2)


def test_a_2d_nifti_is_not_a_volume(tmp_path):
    path = tmp_path / "slice.nii"
    nibabel.save(nibabel.Nifti1Image(np.zeros((8, 6, 1), np.int16), np.eye(4)), path)
    with pytest.raises(NervusInputError, match="2D image"):
        read_volume(path)


def test_nifti_display_range_is_its_auto_window(tmp_path):
    image = nibabel.Nifti1Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), np.eye(4))
    image.header["cal_min"], image.header["cal_max"] = 10, 50
    nibabel.save(image, tmp_path / "cal.nii.gz")
    volume = read_volume(tmp_path / "cal.nii.gz")
    values = np.arange(60).reshape(3, 4, 5).transpose(2, 1, 0)[:, ::-1, ::-1]
    np.testing.assert_allclose(volume.array, np.clip((values - 10) / 40, 0, 1), atol=1e-6)


def test_volume_problem_names_what_is_wrong_without_reading_pixels(tmp_path):
    assert volume_problem(shipped(NIBABEL_DATA, "anatomical.nii")) is None
    assert volume_problem(shipped(PYDICOM_DATA, "rtdose.dcm")) is None
    assert volume_problem(tmp_path / "nowhere") == "it does not exist"
    with pytest.raises(NervusInputError, match="nowhere.nii.gz'?: it does not exist"):
        read_volume(tmp_path / "nowhere.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    assert "not a volume" in volume_problem(tmp_path / "notes.txt")
    cut = tmp_path / "cut.nii"
    cut.write_bytes(shipped(NIBABEL_DATA, "anatomical.nii").read_bytes()[:-100])
    assert "truncated" in volume_problem(cut)
    assert "single DICOM image" in volume_problem(shipped(PYDICOM_DATA, "CT_small.dcm"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no DICOM image" in volume_problem(empty)
    shutil.copy(shipped(PYDICOM_DATA, "examples_ybr_color.dcm"), tmp_path / "cine.dcm")
    assert "where its frames lie" in volume_problem(tmp_path / "cine.dcm")


def test_missing_nibabel_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)  # import nibabel then raises ImportError
    with pytest.raises(NervusInputError, match=r"nervus-lightning\[volumes\]"):
        read_volume(shipped(NIBABEL_DATA, "anatomical.nii"))


@pytest.mark.parametrize("bad", [{"spacing": [1, 1]}, {"shape": [0, 4, 4]}, {"window": [40, 0]}])
def test_bad_settings_are_user_errors(bad):
    with pytest.raises(NervusInputError):
        read_volume(NIBABEL_DATA / "anatomical.nii", **bad)
