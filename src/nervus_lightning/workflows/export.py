"""Deployment files of a checkpoint (the command line: ``python -m nervus_lightning.export
ckpt=PATH [format=onnx|torch_export]``).

This module owns the step from a checkpoint to a stand-alone network and its preprocessing
contract:

* :class:`DeployableNet` wraps a :class:`~nervus_lightning.module.NervusModule`'s network so that
  it takes plain named tensors (``image``: ``[B, C, H, W]`` float32 in ``[0, 1]``, the image as
  ``python -m nervus_lightning.preview`` shows it, or ``[B, V, C, H, W]`` with one image per
  view for a model trained on ``imgpath_<view>`` columns; ``tabular``: ``[B, n]`` float32, the
  raw ``input_*`` values; ``view_mask``: ``[B, V]`` bool, True where the view is present, for a
  model trained with ``data.missing_views=allow``) and returns one tensor per label, already
  transformed by the task
  (probabilities, original units, log hazard). Intensity normalisation of images and
  standardisation of tabular inputs stay inside the graph.
* :func:`export_model` writes it as an ONNX file (``format=onnx``) or a ``torch.export`` program
  (``format=torch_export``, a ``.pt2`` file for :func:`torch.export.load`), with a dynamic batch
  dimension, and a JSON beside it (:func:`deployment_contract`) that lists what happens *before*
  the graph (reading, DICOM LUTs and window, frame, bit depth, channels, resize), the input and
  output names and shapes, class names, thresholds, and for survival the training aggregates
  needed to turn a risk into survival probabilities; for several images per case, which slice
  of the image input is which view (``views``: view name and CSV column, in order).
* A model trained on 3D volumes (``data.volume_size``) takes ``image`` as ``[B, 1, D, H, W]``
  (``[B, V, 1, D, H, W]`` with several views), the volume as training read it; its JSON states
  that reading instead of the 2D steps: orientation (LPS), voxel spacing or resize to the shape,
  crop or pad about the centre, window and scaling to ``[0, 1]``. Settings only, as in the
  schema: no value of a patient.

The command line lives in :mod:`nervus_lightning.cli.export`.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nervus_lightning.checkpoints import load_trained
from nervus_lightning.errors import NervusInputError

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torch_export": ".pt2"}
DEFAULT_OPSET = 18
#: Output name prefix per task: what the tensor holds (as in ``predictions.csv``).
#: The batch size of the example inputs; not 0 or 1, which torch.export would specialise on.
_EXAMPLE_BATCH = 2


class DeployableNet(nn.Module):
    """A trained network as a deployment graph: named raw inputs in, transformed outputs out.

    ``forward(*inputs)`` takes the tensors named by :attr:`input_names` in that order and returns
    a tuple with one tensor per label, named by :attr:`output_names`.
    """

    def __init__(self, module: Any) -> None:
        super().__init__()
        self.net = module.net
        self.task = module.task
        schema = module.schema
        self.input_names: list[str] = []
        if schema.has_images:
            self.input_names.append("image")
        if schema.input_columns:
            self.input_names.append("tabular")
        if schema.multiview and schema.missing_views == "allow":
            self.input_names.append("view_mask")
        self.output_names = [self.task.export_name(j) for j in range(len(schema.labels))]
        self.eval()

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, inputs, strict=True))
        outputs = self.net(
            image=named.get("image"), tabular=named.get("tabular"), view_mask=named.get("view_mask")
        )
        return tuple(self.task.transform_output(out, j) for j, out in enumerate(outputs))


def example_inputs(module: Any, batch: int = _EXAMPLE_BATCH) -> tuple[torch.Tensor, ...]:
    """Random inputs of the right shapes (images in ``[0, 1]``, tabular around the means, every
    view present)."""
    schema = module.schema
    generator = torch.Generator().manual_seed(0)
    inputs = []
    if schema.has_images:
        views = (len(schema.views),) if schema.multiview else ()
        inputs.append(torch.rand(batch, *views, *_image_shape(module), generator=generator))
    if schema.input_columns:
        mean = torch.tensor(schema.input_mean, dtype=torch.float32)
        std = torch.tensor(schema.input_std, dtype=torch.float32)
        noise = torch.randn(batch, len(mean), generator=generator)
        inputs.append(mean + std * noise)
    if schema.multiview and schema.missing_views == "allow":
        inputs.append(torch.ones(batch, len(schema.views), dtype=torch.bool))
    return tuple(inputs)


def _image_shape(module: Any) -> list[int]:
    """One case's image (one view) as the graph takes it: ``[C, H, W]``, or ``[1, D, H, W]``
    for a volume."""
    if module.schema.is_volume:
        return [1, *(int(n) for n in module.schema.volume["shape"])]
    size = int(module.hparams.image_size)
    return [int(module.hparams.in_channels), size, size]


def _input_entries(module: Any) -> list[dict[str, Any]]:
    schema = module.schema
    entries = []
    if schema.has_images:
        entry: dict[str, Any] = {
            "name": "image",
            "shape": ["batch", *_image_shape(module)],
            "dtype": "float32",
            "range": [0.0, 1.0],
        }
        if schema.multiview:
            entry["shape"] = ["batch", len(schema.views), *_image_shape(module)]
            entry["views"] = list(schema.views)
            entry["columns"] = list(schema.view_columns)
        else:
            entry["column"] = schema.image_column
        entry["meaning"] = (
            "the volume after the steps of 'preprocessing' (0 = bottom of the window, 1 = "
            "top), axes 2-4 (D, H, W) running to the patient's superior, posterior and left; "
            "intensity normalisation is inside the graph"
            if schema.is_volume
            else "the image after the steps of 'preprocessing' (0 = black, 1 = white), as "
            "`python -m nervus_lightning.preview` shows it; intensity normalisation "
            "(ImageNet mean/std) is inside the graph"
        ) + (
            "; one image (volume) per view, on axis 1 in the order of 'views'"
            if schema.multiview
            else ""
        )
        entries.append(entry)
    if schema.input_columns:
        entries.append(
            {
                "name": "tabular",
                "shape": ["batch", len(schema.input_columns)],
                "dtype": "float32",
                "columns": list(schema.input_columns),
                "meaning": "the raw values of these CSV columns, in this order; standardisation "
                "with the training mean/std is inside the graph",
            }
        )
    if schema.multiview and schema.missing_views == "allow":
        entries.append(
            {
                "name": "view_mask",
                "shape": ["batch", len(schema.views)],
                "dtype": "bool",
                "views": list(schema.views),
                "meaning": "True where the case has an image of that view; where False, pass "
                "any image (zeros) for that view: the model uses its learned 'missing' "
                "embedding instead",
            }
        )
    return entries


def _output_entries(module: Any, names: list[str]) -> list[dict[str, Any]]:
    entries = []
    for j, (spec, name) in enumerate(zip(module.schema.labels, names, strict=True)):
        entry: dict[str, Any] = {"name": name, "label": spec.name, "task": spec.task}
        entry.update(module.task.export_output(j))
        # The evaluation contract (positive class, threshold...) or, for survival, the
        # training aggregates (baseline hazard on a rounded time grid, eval times,
        # risk-group cut points): the same as schema.json, no case-level data.
        entry.update(module.task.export_label(j))
        entries.append(entry)
    return entries


def _volume_preprocessing(schema: Any) -> dict[str, Any]:
    shape = [int(n) for n in schema.volume["shape"]]
    spacing = schema.volume["spacing"]
    if spacing is None:
        size_step = (
            f"resize: each volume resized to {shape[0]} x {shape[1]} x {shape[2]} voxels (D, H, "
            "W) over its own extent (trilinear), so the voxel size follows each volume's field "
            "of view"
        )
    else:
        size_step = (
            f"resample: to a voxel size of {spacing[0]} x {spacing[1]} x {spacing[2]} mm (z, y, "
            "x along D, H, W; trilinear, the volume's centre kept where it is), then crop, or "
            f"pad with 0, about the centre to {shape[0]} x {shape[1]} x {shape[2]} voxels "
            "(the centre voxel stays the centre, the extra voxel of an odd difference at the end)"
        )
    return {
        "image_column": schema.image_column,
        "image_columns": schema.image_columns,
        "views": list(schema.views) or None,
        "volume": True,
        "orientation": schema.volume["orientation"],
        "axes": ["superior", "posterior", "left"],
        "shape": shape,
        "spacing": None if spacing is None else [float(s) for s in spacing],
        "spacing_meaning": (
            "resized to shape over each volume's extent"
            if spacing is None
            else "mm per voxel along D, H, W; then crop/pad about the centre to shape"
        ),
        "window": schema.window,
        "auto_window": schema.auto_window,
        "in_channels": 1,
        "steps": [
            "read: a NIfTI file (.nii, .nii.gz), a folder holding one DICOM series (slices "
            "ordered by their position along the slice normal), or one multi-frame DICOM file",
            f"orient: permute and flip the axes (no interpolation) so that the array's axes "
            f"run to the patient's superior, posterior and left ({schema.volume['orientation']}"
            "; NIfTI's RAS affine converted): array[d] is an axial slice from the feet up",
            "intensities: each slice's modality LUT (Rescale Slope/Intercept; a NIfTI's "
            "scl_slope/scl_inter), then the window given by 'window' ([center, width]: a DICOM "
            "LINEAR window in modality units; auto: the series' own VOI LUT or Window Center/"
            "Width (its central slice's) or a NIfTI's cal_min/cal_max, else the [center, width] "
            "that 'auto_window' gives for the series' Modality or, for a NIfTI file, under "
            "'NIfTI', else the volume's full range; none: the full range), scaled to [0, 1] "
            "(0 = bottom of the window, 1 = top)",
            size_step,
            "add the channel axis: [1, D, H, W] per volume, float32",
        ],
        "reference": "nervus_lightning.data.volume_input.read_training_volume, "
        "nervus_lightning.data.volumes.read_volume",
    }


def _preprocessing(module: Any) -> dict[str, Any] | None:
    schema = module.schema
    if not schema.has_images:
        return None
    if schema.is_volume:
        return _volume_preprocessing(schema)
    size, channels = int(module.hparams.image_size), int(module.hparams.in_channels)
    return {
        "image_column": schema.image_column,
        "image_columns": schema.image_columns,
        "views": list(schema.views) or None,
        "bit_depth": schema.bit_depth,
        "window": schema.window,
        "auto_window": schema.auto_window,
        "frame": schema.frame,
        "in_channels": channels,
        "image_size": size,
        "steps": [
            "read: Pillow formats (PNG, JPEG with its EXIF orientation, TIFF, ...; first frame "
            "only) or DICOM (pydicom >= 3.0)",
            "DICOM: pick the frame given by 'frame' (middle, first, or mean of the modality-LUT "
            "output over all frames); apply the modality LUT (Rescale Slope/Intercept or Modality "
            "LUT Sequence); apply the VOI LUT or window given by 'window' (auto: the file's own "
            "VOI LUT Sequence or first Window Center/Width, else the [center, width] that "
            "'auto_window' gives for the file's Modality, else the full range; none: the full "
            "range; [center, width]: DICOM LINEAR window in modality units); scale to [0, 1] by "
            "the fixed output range of that step; invert MONOCHROME1 (1 - x)",
            "other files: 8-bit images divided by 255; wider integer images divided by "
            "2**bit_depth - 1; float images as they are when within [0, 1], else like wide integer "
            "images",
            f"channels: colour reduced to gray with 0.299 R + 0.587 G + 0.114 B (alpha dropped) "
            f"when in_channels is 1; gray repeated to 3 channels when in_channels is 3 "
            f"(here {channels})",
            f"resize to {size} x {size} (bilinear, antialiased, aspect ratio not kept), then "
            "clamp to [0, 1]",
        ],
        "reference": "nervus_lightning.data.images.read_image, nervus_lightning.data.dicom."
        "read_dicom, nervus_lightning.data.transforms.build_eval_transform",
    }


def deployment_contract(
    module: Any, model_file: Path, fmt: str, opset: int | None = None
) -> dict[str, Any]:
    """The JSON written beside an exported model (see the module docstring)."""
    wrapper = DeployableNet(module)
    flat_images = module.schema.has_images and not module.schema.is_volume
    return {
        "model_file": model_file.name,
        "format": fmt,
        "opset": opset if fmt == "onnx" else None,
        "torch_version": torch.__version__,
        "task": module.schema.task,
        "batch_dimension": "dynamic (the first axis of every input and output)",
        "inputs": _input_entries(module),
        "outputs": _output_entries(module, wrapper.output_names),
        "preprocessing": _preprocessing(module),
        "views": [
            {"view": view, "column": column}
            for view, column in zip(module.schema.views, module.schema.view_columns, strict=True)
        ]
        or None,
        "image_size": int(module.hparams.image_size) if flat_images else None,
        "in_channels": int(module.hparams.in_channels) if module.schema.has_images else None,
        "volume_size": list(module.schema.volume["shape"]) if module.schema.is_volume else None,
        "schema": module.export_schema(),
    }


def _require(package: str, fmt: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise NervusInputError(
            f"format={fmt} needs the Python package '{package}', which is not installed; "
            'install it with: pip install "nervus-lightning[export]"'
        )


def _dynamic_shapes(n_inputs: int) -> tuple[tuple[dict[int, Any], ...]]:
    # One entry per parameter of forward: its single *inputs parameter, a tuple of tensors.
    batch = torch.export.Dim("batch")
    return (tuple({0: batch} for _ in range(n_inputs)),)


def _write_onnx(wrapper: DeployableNet, inputs: tuple, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        # Every input's batch axis is the one Dim "batch"; the exporter warns that it shares
        # its name with itself and names the axis "batch" all the same.
        warnings.filterwarnings("ignore", message=".*axis name: batch will not be used.*")
        program = _onnx_program(wrapper, inputs, opset)
    program.save(str(path))


def _onnx_program(wrapper: DeployableNet, inputs: tuple, opset: int) -> Any:
    # The torch.export-based exporter: it checks the graph against the dynamic batch axis
    # instead of tracing one batch size, and is where torch's ONNX support goes on.
    return torch.onnx.export(
        wrapper,
        inputs,
        dynamo=True,
        input_names=wrapper.input_names,
        output_names=wrapper.output_names,
        dynamic_shapes=_dynamic_shapes(len(inputs)),
        opset_version=opset,
        external_data=False,
        verbose=False,
    )


def _write_torch_export(wrapper: DeployableNet, inputs: tuple, path: Path) -> None:
    program = torch.export.export(wrapper, inputs, dynamic_shapes=_dynamic_shapes(len(inputs)))
    torch.export.save(program, str(path))


def export_model(
    ckpt: str | Path,
    fmt: str = "onnx",
    out: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
) -> tuple[Path, Path]:
    """Export the network of ``ckpt``; return the paths of the model file and its JSON.

    Args:
        ckpt: a checkpoint written by training.
        fmt: ``onnx`` or ``torch_export``.
        out: the model file to write; ``None``: beside the checkpoint, with its name and the
            format's suffix (``.onnx``, ``.pt2``). The JSON is the model file's name plus
            ``.json``.
        opset: the ONNX opset (``onnx`` only).
    """
    if fmt not in FORMATS:
        raise NervusInputError(
            f"format={fmt!r} is not an export format; use format=onnx (an ONNX file for "
            "onnxruntime and other runtimes) or format=torch_export (a torch.export program)."
        )
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise NervusInputError(
            f"checkpoint not found: {ckpt}. Pass ckpt=PATH of a .ckpt file written by training "
            "(summary.json of a run names its best_checkpoint)."
        )
    if fmt == "onnx":
        _require("onnx", fmt)
        _require("onnxscript", fmt)
        if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
            raise NervusInputError(
                f"format=onnx needs torch >= 2.5 (its torch.export-based ONNX exporter); this is "
                f"torch {torch.__version__}. Upgrade torch, or use format=torch_export."
            )
    module = load_trained(ckpt, map_location="cpu")
    module.eval()
    path = Path(out) if out is not None else ckpt.with_suffix(FORMATS[fmt])
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = DeployableNet(module)
    inputs = example_inputs(module)
    with torch.no_grad():
        if fmt == "onnx":
            _write_onnx(wrapper, inputs, path, opset)
        else:
            _write_torch_export(wrapper, inputs, path)
    contract = deployment_contract(module, path, fmt, opset)
    contract_path = path.with_name(path.name + ".json")
    contract_path.write_text(json.dumps(contract, indent=2) + "\n")
    log.info("exported %s to %s (preprocessing contract: %s)", ckpt, path, contract_path)
    return path, contract_path
