"""The embedded demo data set: scikit-learn's handwritten digits as small "radiographs" + a table.

This module owns :func:`build_demo_dataset`, which writes, without any download, a Nervus-style
CSV and its PNG images so that ``python -m nervus_lightning`` runs with no arguments and every
task (binary and multi-class classification, regression, survival) has a target whose answer
depends on both the image and the tabular inputs.

Each of the 1,797 digits of :func:`sklearn.datasets.load_digits` (row ``i`` is ``demo_{i:04d}``)
is upscaled bilinearly from 8 x 8 to 32 x 32 and saved as a grayscale PNG. About a third are
16-bit PNGs (with an ``sBIT`` chunk of 16) and the others 8-bit, holding the same picture, so the
16-bit reading path is exercised. Columns:

=================  ==========================================================================
``uniqID``         ``demo_0000`` ... (the number is the row of ``load_digits``)
``imgpath``        ``images/demo_0000.png``, **relative to the CSV's folder**: the data module
                   resolves relative ``imgpath`` values against the directory of the CSV
``input_age``      float, years, about N(60, 12) clipped to [20, 95]
``input_sex``      0/1
``input_marker``   float, N(0, 1); it enters ``label_value``
``label_parity``   ``even`` / ``odd`` (binary classification of the digit)
``label_size``     ``small`` (0-3), ``medium`` (4-6), ``large`` (7-9)
``label_value``    digit + 1.5 * input_marker + N(0, 0.5^2) noise (regression)
``label_death``    1 = event, 0 = censored
``period_death``   follow-up time (years) = min(event time, censoring time)
``true_loghazard_death``
                   the true log-hazard of ``label_death`` (formula below), for benchmarks that
                   compare a model's C-index with the best one possible. Not an input: the
                   schema ignores columns that are not ``input_*``, ``label_*``, ``period_*``
``split``          ``train`` 60 %, ``val`` 20 %, ``test`` 10 %, ``external`` 10 %
                   (the external set is half of what a 60/20/20 split would make test),
                   stratified by digit so that every class is in every split
``group``          ``site_a`` (about 60 %) / ``site_b``
=================  ==========================================================================

Survival times follow a proportional-hazards model,
``h(t) = h0 * exp(0.25 * (digit - 4.5) + 0.4 * (age - 60) / 10)`` with ``h0 = ln 2 / 5`` (a
median survival of five years at the reference point); censoring times are exponential and
independent, with the rate chosen so that the expected censored fraction is 30 %. The hazard
needs both inputs: the digit is only in the image, the age only in the table.
``true_loghazard_death`` is ``log h(t) = log h0 + 0.25 * (digit - 4.5) + 0.4 * (age - 60) / 10``
with ``age`` the ``input_age`` of the CSV (rounded to 6 decimals); its Harrell C-index is the
best any model can reach on average (the risk that generated the times).

:func:`write_multiview_demo` writes a second, small data set with *two images per case*
(``imgpath_frontal``, ``imgpath_lateral``) whose label needs both views; see its docstring.

Everything is drawn from one ``numpy`` generator seeded with ``seed``, so a build is
reproducible bit for bit. The data set is written into a temporary folder and renamed into
place, so a crash never leaves half a data set, and a complete existing build is reused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, PngImagePlugin

__all__ = [
    "DEMO_CSV_NAME",
    "DEMO_VERSION",
    "MULTIVIEW_CSV_NAME",
    "build_demo_dataset",
    "build_folder_once",
    "default_cache_root",
    "folder_is_complete",
    "write_multiview_demo",
]

# 2: adds true_loghazard_death (the other columns and the images are those of version 1).
DEMO_VERSION = 2
DEMO_CSV_NAME = "demo.csv"
MULTIVIEW_CSV_NAME = "multiview.csv"
_INFO_NAME = "build_info.json"
_IMAGE_SIDE = 32
_CENSORED_FRACTION = 0.30
#: Unit of ``period_death`` (``data.time_unit`` of the demo data).
DEMO_TIME_UNIT = "years"
_BASELINE_HAZARD = float(np.log(2.0) / 5.0)  # per year: median survival 5 years at the reference
_SPLIT_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.1, "external": 0.1}
_SIZE_CLASSES = ("small",) * 4 + ("medium",) * 3 + ("large",) * 3  # indexed by digit


def default_cache_root() -> Path:
    """``$NERVUS_LIGHTNING_CACHE`` if set, else ``~/.cache/nervus_lightning``."""
    configured = os.environ.get("NERVUS_LIGHTNING_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "nervus_lightning"


def build_demo_dataset(root: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Write the demo data set (once) and return the path of its CSV.

    The files go to ``<root>/demo_v<DEMO_VERSION>/seed_<seed>/`` (``demo.csv``, ``images/``,
    ``build_info.json``). A complete earlier build with the same seed is reused as it is; an
    incomplete one (missing images, other version) is replaced. Several processes may call this
    at the same time (e.g. one per GPU): each builds privately and the first to finish wins.

    Args:
        root: cache folder; ``None`` means :func:`default_cache_root`.
        seed: seed of every random choice (tabular values, targets, splits, 16-bit picks).

    Returns:
        Path of ``demo.csv``; its ``imgpath`` values are relative to its folder.
    """
    base = Path(root) if root is not None else default_cache_root()
    target = base / f"demo_v{DEMO_VERSION}" / f"seed_{seed}"
    build_folder_once(
        target,
        lambda folder: _is_complete(folder, seed),
        lambda folder: _write_dataset(folder, seed),
    )
    return target / DEMO_CSV_NAME


def build_folder_once(
    target: Path, is_complete: Callable[[Path], bool], write: Callable[[Path], None]
) -> None:
    """Make ``target`` a complete data set folder unless it already is one.

    ``write(folder)`` fills a private temporary folder next to ``target``, which is then renamed
    into place, so a crash never leaves half a data set under ``target``; ``is_complete(folder)``
    says whether a folder holds a whole build (an incomplete one is replaced). Several processes
    may build at once: the first to finish wins and the others' work is dropped.
    """
    if is_complete(target):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(staging)
        _move_into_place(staging, target, is_complete)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, target: Path, is_complete: Callable[[Path], bool]) -> None:
    try:
        os.rename(staging, target)
        return
    except OSError:
        if is_complete(target):  # another process finished first
            return
        if not target.exists():
            raise
    stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex}")
    os.rename(target, stale)
    try:
        os.rename(staging, target)
    finally:
        shutil.rmtree(stale, ignore_errors=True)


def _is_complete(folder: Path, seed: int) -> bool:
    return folder_is_complete(
        folder,
        DEMO_CSV_NAME,
        lambda rows: {"version": DEMO_VERSION, "seed": seed, "rows": rows},
        lambda path: path.is_file(),
    )


def folder_is_complete(
    folder: Path,
    csv_name: str,
    expected_info: Callable[[int], dict],
    image_ok: Callable[[Path], bool],
) -> bool:
    """Whether ``folder`` holds a whole demo build: its CSV, its ``build_info.json`` equal to
    ``expected_info(number of CSV rows)`` (written last by a build), and every ``imgpath`` cell
    (relative to the folder) passing ``image_ok``."""
    csv, info = folder / csv_name, folder / _INFO_NAME
    if not (csv.is_file() and info.is_file()):
        return False
    try:
        recorded = json.loads(info.read_text())
        table = pd.read_csv(csv, usecols=["imgpath"])
    except (OSError, ValueError):
        return False
    if recorded != expected_info(len(table)):
        return False
    return all(image_ok(folder / cell) for cell in table["imgpath"])


def _write_dataset(folder: Path, seed: int) -> None:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    digits = load_digits()
    digit = digits.target.astype(np.int64)
    n = len(digit)
    rng = np.random.default_rng(seed)

    age = np.round(np.clip(rng.normal(60.0, 12.0, n), 20.0, 95.0), 1)
    sex = rng.integers(0, 2, n)
    marker = np.round(rng.normal(0.0, 1.0, n), 3)
    value = np.round(digit + 1.5 * marker + rng.normal(0.0, 0.5, n), 3)
    effect = _log_hazard_ratio(digit, age)
    event, period = survival_outcome(effect, rng)
    split = stratified_split(digit, rng)
    group = np.where(rng.random(n) < 0.6, "site_a", "site_b")
    sixteen_bit = np.zeros(n, dtype=bool)
    sixteen_bit[rng.permutation(n)[: n // 3]] = True

    ids = [f"demo_{i:04d}" for i in range(n)]
    image_dir = folder / "images"
    image_dir.mkdir()
    paths = _write_images(digits.images, ids, sixteen_bit, image_dir)

    table = pd.DataFrame(
        {
            "uniqID": ids,
            "imgpath": [p.relative_to(folder).as_posix() for p in paths],
            "input_age": age,
            "input_sex": sex,
            "input_marker": marker,
            "label_parity": np.where(digit % 2 == 0, "even", "odd"),
            "label_size": [_SIZE_CLASSES[d] for d in digit],
            "label_value": value,
            "label_death": event,
            "period_death": period,
            "true_loghazard_death": np.round(np.log(_BASELINE_HAZARD) + effect, 6),
            "split": split,
            "group": group,
        }
    )
    table.to_csv(folder / DEMO_CSV_NAME, index=False)
    # Written last: its presence, with the CSV, marks the build as complete.
    (folder / _INFO_NAME).write_text(json.dumps({"version": DEMO_VERSION, "seed": seed, "rows": n}))


def _write_images(
    images: np.ndarray, ids: list[str], sixteen_bit: np.ndarray, image_dir: Path
) -> list[Path]:
    # load_digits pixels are counts 0..16; upscale all at once, then store at 8 or 16 bits.
    small = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)
    large = torch.nn.functional.interpolate(
        small, size=(_IMAGE_SIDE, _IMAGE_SIDE), mode="bilinear", align_corners=False
    )
    unit = large.squeeze(1).clamp(0.0, 1.0).numpy()
    sbit16 = PngImagePlugin.PngInfo()
    sbit16.add(b"sBIT", bytes([16]))
    paths = []
    for name, picture, wide in zip(ids, unit, sixteen_bit, strict=True):
        path = image_dir / f"{name}.png"
        if wide:
            pixels = np.rint(picture * 65535.0).astype(np.uint16)
            Image.fromarray(pixels).save(path, pnginfo=sbit16)
        else:
            Image.fromarray(np.rint(picture * 255.0).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def _log_hazard_ratio(digit: np.ndarray, age: np.ndarray) -> np.ndarray:
    """``0.25 * (digit - 4.5) + 0.4 * (age - 60) / 10``: log h(t) - log h0 (module docstring)."""
    return 0.25 * (digit - 4.5) + 0.4 * (age - 60.0) / 10.0


def survival_outcome(effect: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Event indicator and follow-up time of exponential event times, hazard h0 * exp(effect)
    with ``h0 = ln 2 / 5`` per year, and independent exponential censoring of 30 % on average."""
    hazard = _BASELINE_HAZARD * np.exp(effect)
    censoring_rate = _censoring_rate(hazard, _CENSORED_FRACTION)
    event_time = rng.exponential(1.0 / hazard)
    censor_time = rng.exponential(1.0 / censoring_rate, len(hazard))
    event = (event_time <= censor_time).astype(np.int64)
    period = np.maximum(np.round(np.minimum(event_time, censor_time), 4), 1e-4)
    return event, period


def _censoring_rate(hazard: np.ndarray, fraction: float) -> float:
    """Exponential censoring rate c with mean(c / (c + hazard)) == fraction, by bisection.

    With exponential event (rate h) and censoring (rate c) times, P(censored) = c / (c + h).
    """
    low, high = 1e-8, 1e3
    for _ in range(200):
        middle = np.sqrt(low * high)
        if np.mean(middle / (middle + hazard)) < fraction:
            low = middle
        else:
            high = middle
    return float(np.sqrt(low * high))


def stratified_split(
    strata: np.ndarray,
    rng: np.random.Generator,
    fractions: dict[str, float] = _SPLIT_FRACTIONS,
) -> np.ndarray:
    """A ``split`` value per case: each stratum's cases shuffled and cut by ``fractions``."""
    split = np.empty(len(strata), dtype=object)
    names = list(fractions)
    for value in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == value))
        bounds = np.round(np.cumsum([fractions[s] for s in names]) * len(members))
        start = 0
        for name, stop in zip(names, bounds.astype(int), strict=True):
            split[members[start:stop]] = name
            start = stop
    return split.astype(str)


def write_multiview_demo(
    folder: str | os.PathLike,
    n: int = 120,
    seed: int = 0,
    missing_fraction: float = 0.0,
) -> Path:
    """Write a small two-view data set into ``folder`` and return the path of its CSV.

    Each case shows one digit of :func:`sklearn.datasets.load_digits` in its ``frontal`` view and
    another, mirrored left to right, in its ``lateral`` view (32 x 32 8-bit PNGs under
    ``images/``, paths relative to the CSV). ``label_high_sum`` is ``yes`` when the two digits add
    up to 9 or more, else ``no``: no single view decides it. ``input_age`` (N(60, 12)) is a
    tabular input that adds a little to the odds (``yes`` cases are 5 years older on average).
    Splits: 60 % train, 20 % val, 20 % test.

    Args:
        folder: where to write ``multiview.csv`` and ``images/`` (created).
        n: number of cases.
        seed: seed of every random choice.
        missing_fraction: fraction of cases whose ``imgpath_lateral`` cell is left empty (a
            missing view, for ``data.missing_views=allow``); those cases are spread over splits.
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    folder = Path(folder)
    image_dir = folder / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    digits = load_digits()
    picks = rng.integers(0, len(digits.target), (n, 2))
    small = torch.from_numpy(digits.images[picks.ravel()].astype(np.float32) / 16.0)
    large = torch.nn.functional.interpolate(
        small.unsqueeze(1), size=(_IMAGE_SIDE, _IMAGE_SIDE), mode="bilinear", align_corners=False
    )
    pixels = np.rint(large.squeeze(1).clamp(0.0, 1.0).numpy() * 255.0).astype(np.uint8)
    pixels = pixels.reshape(n, 2, _IMAGE_SIDE, _IMAGE_SIDE)
    total = digits.target[picks].sum(axis=1)
    high = total >= 9
    age = np.round(np.clip(rng.normal(60.0, 12.0, n) + 5.0 * high, 20.0, 95.0), 1)
    split = np.array(["train"] * n, dtype=object)
    order = rng.permutation(n)
    split[order[int(0.6 * n) : int(0.8 * n)]] = "val"
    split[order[int(0.8 * n) :]] = "test"
    missing = np.zeros(n, dtype=bool)
    missing[rng.permutation(n)[: int(round(missing_fraction * n))]] = True

    rows = []
    for i in range(n):
        uniq = f"mv_{i:04d}"
        frontal = image_dir / f"{uniq}__frontal.png"
        lateral = image_dir / f"{uniq}__lateral.png"
        Image.fromarray(pixels[i, 0]).save(frontal)
        Image.fromarray(np.ascontiguousarray(pixels[i, 1, :, ::-1])).save(lateral)
        rows.append(
            {
                "uniqID": uniq,
                "imgpath_frontal": frontal.relative_to(folder).as_posix(),
                "imgpath_lateral": None if missing[i] else lateral.relative_to(folder).as_posix(),
                "input_age": age[i],
                "label_high_sum": "yes" if high[i] else "no",
                "split": split[i],
            }
        )
    csv = folder / MULTIVIEW_CSV_NAME
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv
