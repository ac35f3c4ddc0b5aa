"""DICOM decode throughput against 16-bit PNG holding the same pixels.

For each image size, ``--count`` synthetic 12-bit radiographs (a smooth body-like gradient plus
noise, stored in 16-bit words) are written three ways into a temporary folder:

* ``dicom``: uncompressed DICOM (Explicit VR Little Endian), MONOCHROME1 as computed radiography
  writes it, with Rescale Slope/Intercept and a Window Center/Width in the header;
* ``dicom-rle``: the same data set compressed with RLE Lossless (pydicom's own encoder);
* ``png16``: a 16-bit grayscale PNG of the same stored pixel values.

Then every file is read ``--repeats`` times by each reader, interleaved, single process:

* ``full``: :func:`nervus_lightning.data.images.read_image`, what the data loader does for one
  image before resizing: DICOM through the modality LUT, the file's window (VOI LUT) and the
  MONOCHROME1 inversion; PNG scaled by ``bit_depth=12``;
* ``decode only``: the pixels as an array and nothing else (``pydicom.dcmread(...).pixel_array``,
  or ``numpy.asarray(PIL.Image.open(...))``), i.e. the cost without the LUT steps and scaling.

The table gives images per second (median over repeats) and the ratio to reading the PNG with
``read_image``. pydicom's bundled ``CT_small.dcm`` (128 x 128) is timed too as a real file.

Usage::

    python benchmarks/dicom_speed.py                       # 512 and 2048 px, 40 files each
    python benchmarks/dicom_speed.py --sizes 1024 --count 100 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from nervus_lightning.data.images import read_image

BITS = 12


def synthetic_radiograph(size: int, rng: np.random.Generator) -> np.ndarray:
    """A 12-bit image: a bright elliptic 'body' on a dark background, with noise."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    body = np.clip(1.0 - (x / 0.8) ** 2 - (y / 0.95) ** 2, 0.0, 1.0) ** 0.5
    values = 300 + 3000 * body + rng.normal(0, 40, (size, size))
    return np.clip(values, 0, 2**BITS - 1).astype(np.uint16)


def write_dicom(pixels: np.ndarray, path: Path, rle: bool = False) -> None:
    """Write ``pixels`` as a MONOCHROME1 CR-like DICOM file (optionally RLE compressed)."""
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = DicomDataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, BITS, BITS - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.tobytes()
    if rle:
        ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)


def decode_dicom(path: Path) -> np.ndarray:
    import pydicom

    return pydicom.dcmread(path).pixel_array


def decode_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def read_full(path: Path) -> np.ndarray:
    return read_image(path, 1, bit_depth=BITS).numpy()


def images_per_second(files: list[Path], reader: Callable[[Path], np.ndarray]) -> float:
    start = time.perf_counter()
    for file in files:
        reader(file)
    return len(files) / (time.perf_counter() - start)


def run(sizes: list[int], count: int, repeats: int) -> pd.DataFrame:
    from pydicom.data import get_testdata_file

    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases: list[tuple[str, int, list[Path]]] = []
        for size in sizes:
            files: dict[str, list[Path]] = {"dicom": [], "dicom-rle": [], "png16": []}
            for i in range(count):
                pixels = synthetic_radiograph(size, rng)
                stem = folder / f"{size}_{i}"
                write_dicom(pixels, stem.with_suffix(".dcm"))
                write_dicom(pixels, Path(f"{stem}_rle.dcm"), rle=True)
                Image.fromarray(pixels).save(stem.with_suffix(".png"))
                files["dicom"].append(stem.with_suffix(".dcm"))
                files["dicom-rle"].append(Path(f"{stem}_rle.dcm"))
                files["png16"].append(stem.with_suffix(".png"))
            # Same pixels, same display: the DICOM window spans the 12-bit range and MONOCHROME1
            # is inverted, so the PNG read must equal one minus the DICOM read.
            dicom = read_full(files["dicom"][0])
            png = read_full(files["png16"][0])
            assert np.allclose(dicom, 1.0 - png, atol=2e-3), "DICOM and PNG reads disagree"
            cases += [(kind, size, paths) for kind, paths in files.items()]
        ct = Path(get_testdata_file("CT_small.dcm"))
        cases.append(("dicom (pydicom CT_small)", 128, [ct] * count))

        readers = {
            "full": read_full,
            "decode only": lambda p: decode_png(p) if p.suffix == ".png" else decode_dicom(p),
        }
        timings: dict[tuple[str, int, str], list[float]] = {}
        for _ in range(repeats):
            for kind, size, paths in cases:
                for name, reader in readers.items():
                    rate = images_per_second(paths, reader)
                    timings.setdefault((kind, size, name), []).append(rate)
    for (kind, size, name), rates in timings.items():
        rows.append(
            {
                "file": kind,
                "size": size,
                "reader": name,
                "images_per_s": statistics.median(rates),
            }
        )
    table = pd.DataFrame(rows)
    reference = table[(table.file == "png16") & (table.reader == "full")].set_index("size")
    table["x_png16_full"] = [
        row.images_per_s / reference.loc[row.size, "images_per_s"]
        if row.size in reference.index
        else float("nan")
        for row in table.itertuples()
    ]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    table = run(args.sizes, args.count, args.repeats)
    pd.set_option("display.width", 120)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "dicom_speed.csv", index=False, float_format="%.3f")


if __name__ == "__main__":
    main()
