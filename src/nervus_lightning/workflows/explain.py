"""Explanations of a trained model: where did it look, and how much did each input matter
(``python -m nervus_lightning.explain ckpt=PATH [data.csv=PATH] [split=test] [n=32]``).

This module owns which cases are explained, the explained target and the files; the Grad-CAM and
Integrated Gradients computations are :mod:`nervus_lightning.models.attribution`'s:

* **Grad-CAM** (captum's ``LayerGradCam``, upsampled to ``data.image_size`` with
  ``LayerAttribution.interpolate``, bilinear) for each case and each label, of the head output of
  the *explained target*: the predicted class of a classification label (its logit; the class of
  ``pred_<label>`` in ``predictions.csv``, so the stored operating threshold of a binary label
  applies), the output of a regression label, the log-risk of a survival label. Negative evidence
  is cut (``relu_attributions=True``), as in Selvaraju et al. The tabular inputs of a fused model
  stay at the case's own values. Files: ``explain/<label>/<uniqID>.npy`` (float32, image size
  squared, in the layer's units: gradient times activation, not normalised) and
  ``explain/<label>/<uniqID>.png`` (the map scaled to its own maximum, drawn over the image as
  the network gets it and as ``python -m nervus_lightning.preview`` shows it), listed in
  ``explain/cases.csv``.
* **The layer** is chosen per torchvision family, or named with ``explain.layer=<module path>``
  (:func:`~nervus_lightning.models.attribution.find_gradcam_layer`; the Grad-CAM and Integrated
  Gradients computations live in :mod:`nervus_lightning.models.attribution`).
* **Per-input attribution** for models with tabular inputs (``explain/attribution.csv``): captum's
  Integrated Gradients of the same target, from a baseline of a black image (all zeros, the
  darkest input the network can get) and the training mean of every ``input_*`` column (zero
  after the model's standardisation, i.e. an "average patient"). The attributions of one case
  add up to the output minus the output at the baseline (completeness), so the image's share
  (the sum over its pixels) and each column's can be compared: the CSV holds, per label and
  input, the mean over the explained cases of the absolute attribution.

**Several views** (``imgpath_<view>`` columns): each view gets its own Grad-CAM, from a forward
that runs that view live through its extractor (the layer is found in that view's extractor) with
the other views' and the tabular features fixed (computed once per batch, no gradient), so a
shared extractor's layer fires once per call
(:func:`~nervus_lightning.models.attribution.view_forward`). Files
``explain/<label>/<uniqID>__<view>.npy`` and ``.png``, listed in ``cases.csv`` as
``map_<view>`` and ``overlay_<view>``; a view the case lacks (``view_mask`` False,
``data.missing_views=allow``) gets no file (empty cells), and ``cases.csv`` names it in
``missing_views``. Integrated Gradients then has one input per view (``image/<view>`` in
``attribution.csv``, each from a black image) besides the tabular columns, also for a model
without tabular inputs. A missing view's pixels never reach the output (its features are the
learned "missing" embedding whatever the pixels), so its attribution is exactly zero; it enters
the mean over cases as a zero, i.e. the mean says how much the view moved the output over the
explained cases, present or not.
**Volumes** (``data.volume_size``): 3D Grad-CAM maps written as NIfTI over the network's input
(``<uniqID>_gradcam.nii.gz`` beside ``<uniqID>_input.nii.gz``, listed as ``map`` and ``input``),
and mid-slice PNGs (``overlay``) (:mod:`nervus_lightning.workflows.explain_volumes`); with
several views, as above per view: ``<uniqID>__<view>_gradcam.nii.gz`` in that view's own world
coordinates, ``map_<view>``, ``input_<view>`` and ``overlay_<view>``.
The command line lives in :mod:`nervus_lightning.cli.explain`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from nervus_lightning.checkpoints import checkpoint_datamodule, load_trained
from nervus_lightning.data.preview import to_png_array
from nervus_lightning.data.sources import resolve_data
from nervus_lightning.errors import ID_COLUMN, SPLIT_COLUMN, NervusInputError
from nervus_lightning.models.attribution import (
    GradCamLayer,
    gradcam_layers,
    input_attributions,
    require_captum,
    view_grad_cams,
)
from nervus_lightning.models.ensemble import member_nets
from nervus_lightning.options import check_number
from nervus_lightning.workflows.explain_volumes import network_affine, write_volume_case
from nervus_lightning.workflows.predict import inference_device
from nervus_lightning.workflows.settings import MISSING

log = logging.getLogger(__name__)

EXPLAIN_DIR = "explain"
CASES = "cases.csv"
ATTRIBUTION = "attribution.csv"
IMAGE_INPUT = "image"
#: Blend of the heat map over the image: opacity at the map's maximum (zero where it is zero).
_OVERLAY_ALPHA = 0.6
_COLORMAP = "jet"


# -- files ---------------------------------------------------------------------------------------
def file_stem(uniq_id: Any) -> str:
    """``uniqID`` with characters that are unsafe in file names replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(uniq_id))


def overlay(image: torch.Tensor, cam: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8: the map scaled to its maximum, coloured, over the image in gray.

    The image is drawn as the network gets it (0 black, 1 white, as the preview writes it); the
    colour's opacity follows the map, so regions the map leaves at zero show the plain image.
    """
    from matplotlib import colormaps

    base = to_png_array(image).astype(np.float64) / 255.0
    if base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=2)
    peak = float(cam.max())
    scaled = cam / peak if peak > 0 else np.zeros_like(cam)
    colour = colormaps[_COLORMAP](scaled)[..., :3]
    alpha = (_OVERLAY_ALPHA * scaled)[..., None]
    return np.rint(255.0 * ((1 - alpha) * base + alpha * colour)).astype(np.uint8)


def _explained_targets(module: Any, values: np.ndarray, j: int) -> tuple[np.ndarray, list[str]]:
    """Head column explained per case and its name: the predicted class (``pred_<label>`` of
    ``predictions.csv``), else the one output."""
    spec = module.schema.labels[j]
    if spec.classes:
        predicted = module.task.prediction_columns(values, j)[f"pred_{spec.name}"]
        index = np.array([spec.classes.index(c) for c in predicted], dtype=np.int64)
        return index, [str(c) for c in predicted]
    return np.zeros(len(values), dtype=np.int64), ["output"] * len(values)


@dataclass
class Explanation:
    """What :func:`explain_module` wrote: the cases table, the attribution table (or None)."""

    cases: pd.DataFrame
    attribution: pd.DataFrame | None
    out_dir: Path


def check_explain(
    module: Any, datamodule: Any, split: str, n: int | None, layer: str | None
) -> list[list[GradCamLayer]]:
    """Check the options against the model and data before any work (or training); return the
    Grad-CAM layer of each view (empty for a model without images), per network (one list; an
    ensemble's members one each)."""
    require_captum()
    if n is not None and int(n) < 1:
        raise NervusInputError(f"explain: n must be at least 1 or null (every case), got {n}.")
    present = datamodule.split_names()
    if split not in present:
        raise NervusInputError(
            f"{datamodule.csv}: explain split={split!r} has no rows; the CSV's splits are "
            f"{', '.join(present)}."
        )
    layers = [gradcam_layers(net, layer) for net in member_nets(module.net)]
    if layer and not layers[0]:
        raise NervusInputError(f"explain.layer={layer!r} given, but the model has no image input.")
    return layers


def explain_module(
    module: Any,
    datamodule: Any,
    out_dir: str | Path,
    *,
    split: str = "test",
    n: int | None = 32,
    layer: str | None = None,
    ig_steps: int = 16,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> Explanation:
    """Write Grad-CAM maps and overlays (models with images; one per present view) and
    ``attribution.csv`` (models with tabular inputs or several views) for the first ``n`` cases
    of ``split`` into ``out_dir``.

    Args:
        module: a trained :class:`~nervus_lightning.module.NervusModule`.
        datamodule: the data, read with the module's schema (as ``predict`` reads it).
        out_dir: the ``explain`` folder (created).
        split: the split whose cases are explained.
        n: the first ``n`` cases of the split, in CSV order; ``None``: all.
        layer: ``explain.layer``, a module path in the image extractor (see
            :func:`find_gradcam_layer`); ``None``: by torchvision family.
        ig_steps: Integrated Gradients steps (the completeness error shrinks with more).
        batch_size: cases per Grad-CAM pass (and per chunk of Integrated Gradients' steps).
        device: where the model runs.

    Returns:
        The rows of ``cases.csv`` and ``attribution.csv``.
    """
    from lightning.fabric.utilities.apply_func import move_data_to_device

    cam_layers = check_explain(module, datamodule, split, n, layer)
    device = torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = datamodule.split_frame(split)
    count = len(frame) if n is None else min(int(n), len(frame))
    frame = frame.head(count)
    dataset = datamodule.dataset(split)
    loader = DataLoader(Subset(dataset, range(count)), batch_size=batch_size, shuffle=False)
    module.to(device).eval()
    net, schema = module.net, module.schema
    views = list(schema.views) if schema.multiview else []
    volume = schema.is_volume
    tab_mean = torch.tensor(schema.input_mean or [], dtype=torch.float32, device=device)
    stems = _unique_stems(frame[ID_COLUMN])
    # Per-input attribution compares inputs: a tabular column or a second view to compare with.
    attribute = bool(schema.input_columns) or len(views) > 1
    rows: list[dict[str, Any]] = []
    per_input: list[list[np.ndarray]] = [[] for _ in schema.labels]
    worst_delta = 0.0
    for batch in loader:
        batch = move_data_to_device(batch, device)
        image, tabular = batch.get("image"), batch.get("tabular")
        mask = batch.get("view_mask")
        index = batch["index"].cpu().numpy()
        with torch.no_grad():
            outputs = net(image=image, tabular=tabular, view_mask=mask)
        for j, spec in enumerate(schema.labels):
            values = module.task.transform_output(outputs[j], j).cpu().numpy()
            target, explained = _explained_targets(module, values, j)
            target_t = torch.as_tensor(target, device=device)
            folder = out / file_stem(spec.name)
            cams: list[np.ndarray] = []
            if cam_layers[0]:
                # An ensemble's map is its members' maps averaged, each member's Grad-CAM of
                # its own output for the class the ensemble predicts.
                per_net = [
                    view_grad_cams(member, j, image, tabular, layers, target_t, mask, volume)
                    for member, layers in zip(member_nets(net), cam_layers, strict=True)
                ]
                cams = [torch.stack(m).mean(0).cpu().numpy() for m in zip(*per_net, strict=True)]
                folder.mkdir(exist_ok=True)
            for k, i in enumerate(index):
                row = frame.iloc[int(i)]
                entry = {
                    ID_COLUMN: row[ID_COLUMN],
                    SPLIT_COLUMN: row[SPLIT_COLUMN],
                    "label": spec.name,
                    "explained": explained[k],
                    "score": float(values[k, target[k]]),
                    "truth": row.get(spec.name),
                }
                if cams:
                    pictures = image[k].unbind(0) if views else (image[k],)
                    missing = []
                    for v, (cam, picture) in enumerate(zip(cams, pictures, strict=True)):
                        suffix = f"_{views[v]}" if views else ""
                        files = ("map", "input", "overlay") if volume else ("map", "overlay")
                        if mask is not None and not bool(mask[k, v]):
                            missing.append(views[v])
                            entry.update({f"{name}{suffix}": "" for name in files})
                            continue
                        stem = stems[int(i)] + (f"__{views[v]}" if views else "")
                        if volume:
                            # Each view is its own scan: its own affine.
                            path = row[schema.image_columns[v]]
                            written = write_volume_case(
                                folder,
                                stem,
                                picture,
                                cam[k],
                                network_affine(path, dataset.volume),
                                _COLORMAP,
                                _OVERLAY_ALPHA,
                            )
                        else:
                            np.save(folder / f"{stem}.npy", cam[k].astype(np.float32))
                            drawn = overlay(picture.detach().cpu(), cam[k])
                            Image.fromarray(drawn).save(folder / f"{stem}.png")
                            written = (f"{stem}.npy", f"{stem}.png")
                        for name, file in zip(files, written, strict=True):
                            entry[f"{name}{suffix}"] = f"{folder.name}/{file}"
                    if views:
                        entry["missing_views"] = ";".join(missing)
                rows.append(entry)
            if attribute:
                attr, delta = input_attributions(
                    net, j, image, tabular, tab_mean, target_t, ig_steps, mask, volume
                )
                per_input[j].append(attr)
                worst_delta = max(worst_delta, float(np.abs(delta).max()))
    for cam_layer in {id(c): c for c in cam_layers[0]}.values():
        if cam_layer.grid and min(cam_layer.grid) < 3:
            log.warning(
                "Grad-CAM: %s gives a %s map at input size %s, too coarse to show where the "
                "model looked; use a larger input or an earlier layer (explain.layer=...).",
                cam_layer.path,
                "x".join(map(str, cam_layer.grid)),
                "x".join(map(str, image.shape[-3 if volume else -2 :])),
            )
    cases = pd.DataFrame(rows)
    cases.to_csv(out / CASES, index=False)
    attribution = None
    if attribute:
        image_names = [f"{IMAGE_INPUT}/{v}" for v in views] or [IMAGE_INPUT]
        names = (image_names if cam_layers[0] else []) + list(schema.input_columns)
        attribution = attribution_table(
            [np.concatenate(a) for a in per_input], [s.name for s in schema.labels], names
        )
        attribution.to_csv(out / ATTRIBUTION, index=False)
        log.info("Integrated Gradients: largest completeness error %.3g", worst_delta)
    log.info("explained %d case(s) of split %s in %s", count, split, out)
    return Explanation(cases, attribution, out)


def attribution_table(
    per_label: list[np.ndarray], labels: list[str], inputs: list[str]
) -> pd.DataFrame:
    """``attribution.csv``: per label and input the mean absolute attribution over cases and its
    share of the label's total, largest first."""
    tables = []
    for label, values in zip(labels, per_label, strict=True):
        mean_abs = np.abs(values).mean(axis=0)
        total = mean_abs.sum()
        table = pd.DataFrame(
            {
                "label": label,
                "input": inputs,
                "mean_abs_attribution": mean_abs,
                "share": mean_abs / total if total > 0 else np.nan,
                "cases": len(values),
            }
        )
        tables.append(table.sort_values("mean_abs_attribution", ascending=False, kind="stable"))
    return pd.concat(tables, ignore_index=True)


def _unique_stems(ids: pd.Series) -> list[str]:
    stems: list[str] = []
    for i, uniq_id in enumerate(ids):
        stem = file_stem(uniq_id)
        stems.append(f"{stem}__{i}" if stem in stems else stem)
    return stems


def explain_settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """``split``, ``n``, ``layer`` and ``ig_steps`` of the ``explain`` config group, checked."""
    n, steps = options.get("n"), options.get("ig_steps", 16)
    if n is not None:
        check_number("explain.n", n, low=1, integer=True)
    check_number("explain.ig_steps", steps, low=1, integer=True)
    return {
        "split": str(options.get("split", "test")),
        "n": None if n is None else int(n),
        "layer": options.get("layer") or None,
        "ig_steps": int(steps),
    }


def check_explain_options(options: Mapping[str, Any] | None, module: Any, datamodule: Any) -> None:
    """Before training: with ``explain.after_training`` true, the options, captum, the split
    and the Grad-CAM layer are checked, so that nothing fails after the last epoch."""
    if options and options.get("after_training"):
        settings = explain_settings(options)
        check_explain(module, datamodule, settings["split"], settings["n"], settings["layer"])


def explain_after_training(
    options: Mapping[str, Any] | None, module: Any, datamodule: Any, run_dir: Path, device: Any
) -> None:
    """Training's ``explain.*`` options: with ``after_training`` true, explain the best model
    into ``run_dir/explain`` (before the report is written, so that it shows the gallery)."""
    if options and options.get("after_training"):
        out = Path(run_dir) / EXPLAIN_DIR
        explain_module(module, datamodule, out, device=device, **explain_settings(options))


def explain(
    ckpt: str | Path,
    csv: str | Path | None,
    out_dir: str | Path,
    *,
    split: str = "test",
    n: int | None = 32,
    layer: str | None = None,
    ig_steps: int = 16,
    batch_size: int = 16,
    num_workers: int = 0,
    device: str | torch.device = "auto",
) -> Explanation:
    """Explain the model of ``ckpt`` on ``csv`` (read as ``predict`` reads it); ``csv=None``:
    the data the checkpoint was trained on (its ``data.csv``, or the demo data or preset)."""
    require_captum()
    device = inference_device(device)
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise NervusInputError(f"checkpoint not found: {ckpt}. Pass ckpt=PATH of a .ckpt file.")
    module = load_trained(ckpt, map_location=device)
    if csv is None:
        csv = _training_csv(module, ckpt)
    datamodule = checkpoint_datamodule(module, csv, batch_size=batch_size, num_workers=num_workers)
    return explain_module(
        module,
        datamodule,
        out_dir,
        split=split,
        n=n,
        layer=layer,
        ig_steps=ig_steps,
        batch_size=batch_size,
        device=device,
    )


def _training_csv(module: Any, ckpt: Path) -> str | Path:
    config = module.hparams.get("run_config")
    if not config or "data" not in config:
        raise NervusInputError(
            f"{ckpt} does not record its training data; pass data.csv=PATH of the CSV to explain."
        )
    data, task = config["data"], config.get("task") or {}
    csv, _, _ = resolve_data(
        None if data.get("csv") == MISSING else data.get("csv"),
        data.get("labels"),
        preset=data.get("preset"),
        demo_root=data.get("demo_root"),
        split_seed=data.get("split_seed", 0),
        demo_labels=task.get("demo_labels"),
    )
    if not Path(csv).is_file():
        raise NervusInputError(
            f"{ckpt} was trained on {csv}, which is not on this machine; pass data.csv=PATH."
        )
    return csv
