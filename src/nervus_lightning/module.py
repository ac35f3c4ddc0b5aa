"""``NervusModule``: a ``NervusNet`` with its task, optimiser, losses and epoch metrics.

The Lightning glue only: the network is assembled by :mod:`nervus_lightning.models.build` (plain
modules, no Lightning) and what a label means is the task's (:mod:`nervus_lightning.tasks`).

Built from a data schema (labels, classes, input statistics) and plain component choices, so it
works from any Lightning project without Hydra. Its hyper-parameters hold only plain Python
values and its state only tensors, so ``torch.load(ckpt, weights_only=True)`` reads every
checkpoint and :meth:`NervusModule.load_from_checkpoint` restores a model that predicts alone.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from nervus_lightning.data.schema import DataSchema
from nervus_lightning.distributed import concat_records, gather_cases
from nervus_lightning.errors import SPLIT_COLUMN, TRAIN, VAL
from nervus_lightning.evaluation.options import EvaluationOptions
from nervus_lightning.files import atomic_write
from nervus_lightning.models.build import build_ensemble
from nervus_lightning.models.build import component_options as _options
from nervus_lightning.models.ensemble import member_nets
from nervus_lightning.models.linear_start import (
    linear_penalty,
    resolve_linear,
    start_heads,
    start_linear_terms,
)
from nervus_lightning.optimisation import build_optimisation, check_optimisation_options
from nervus_lightning.options import check_number
from nervus_lightning.survival.shrinkage import shrink_net
from nervus_lightning.tasks.base import evaluation_options
from nervus_lightning.tasks.registry import build_task

#: Checkpoint key of the linear terms' chosen penalties (:meth:`NervusModule.start_linear_terms`).
LINEAR_CHOICES_KEY = "nervus_linear_choices"
#: Checkpoint key of the Cox labels' calibration slopes (:meth:`NervusModule.shrink_to_validation`).
SHRINKAGE_KEY = "nervus_shrinkage"

EVAL_STAGES = ("val", "test")
TASK_STATE_KEY = "nervus_task_state"
#: Batch entries that are model inputs, not per-case values the epoch's losses need.
INPUT_KEYS = ("image", "tabular")
_OUTPUT_KEY = "_output_"
#: Config keys of the task group that select demo data, not task options.
_DEMO_KEYS = ("name", "demo_labels", "demo_positive_class")


def check_ensemble(value: Any) -> int:
    """``model.ensemble`` as a number of networks (a whole number, at least 1)."""
    return int(check_number("model.ensemble", value, low=1, integer=True))


class NervusModule(L.LightningModule):
    """Lightning wrapper of a Nervus model.

    Args:
        schema: the data module's ``schema`` (labels, classes, input columns and statistics).
        extractor: image extractor: a torchvision model name, a dict ``{name, pretrained,
            weights_path, shared}``, ``None``/``"none"`` for no image input, or any ``nn.Module``
            mapping (B, C, H, W) images to (B, F) features (then pass it again to
            ``load_from_checkpoint``). With several views per case (``schema.views``),
            ``shared: true`` (default) runs one extractor on every view and ``shared: false``
            builds one per view; a given ``nn.Module`` is shared.
        tabular: tabular MLP options ``{name: mlp|none, hidden, dropout, norm, linear}``.
            ``linear``: a linear term of the standardised tabular inputs beside the network in
            every head (``NervusNet(linear=True)``: the network's path starts at exactly zero
            and, for Cox heads, the term at the linear Cox fit of the training split, so the
            model starts as fitted linear Cox). ``"auto"`` (the config's default): on for Cox
            survival heads with tabular inputs and no images (:func:`linear_term_by_default`);
            absent or ``False`` (this class's default, and checkpoints written before the
            option existed): off.
        mixer: fusion options ``{name: concat, hidden, dropout, norm}``, used whenever there is
            more than one feature block (image views, tabular); built with ``in_features`` (views
            in order, tabular last) and, when its class takes it, ``modalities``
            (``image/<view>``..., ``tabular``; the single image of an ``imgpath`` CSV is
            ``image/image``),
            or ``{_target_: your_pkg.YourMixer, ...}`` for your own class (see
            :mod:`nervus_lightning.models.plugins`); likewise ``extractor``, ``tabular``, ``head``.
        head: the output layer of each label: ``linear`` (default), ``mlp`` or ``{_target_...}``.
        task: task options ``{name, ...}`` (e.g. ``loss`` for regression); name defaults to the
            schema's task.
        optimizer: ``{name: adam|adamw|sgd|radam, lr, weight_decay, ...}``.
        scheduler: ``{name: none|cosine|plateau, ...}``.
        in_channels: image channels (used to build and probe the extractor).
        image_size: image side in pixels (used to build and probe the extractor).
        channels_last: run the image extractor in channels-last memory format.
        ensemble: number of independently initialised networks trained side by side and
            combined into one model (``model.ensemble``; see
            :mod:`nervus_lightning.models.ensemble`); 1: a single network.
        evaluation: the ``evaluation.*`` settings (a mapping, checked here once, or an
            :class:`~nervus_lightning.evaluation.options.EvaluationOptions`); the task reads its
            kind's: for classification the contract stored with the model, ``threshold``
            (``youden``/``sensitivity``), ``target_sensitivity`` and ``positive_class`` (label ->
            class; required for binary labels whose classes are not an obvious pair such as
            no/yes). The others are kept for provenance (in the hyper-parameters as a plain
            mapping).
        run_config: the resolved run configuration, stored in checkpoints for provenance.

    Every option is checked when the module is built (a typo raises ``NervusInputError``
    naming the key and the allowed values), so nothing fails after training has started.
    Checkpoints never need the pretrained weights file again: they record the extractor as
    built empty, and their state dict holds the trained weights.
    """

    def __init__(
        self,
        schema: DataSchema | dict,
        extractor: str | dict | nn.Module | None = "resnet18",
        tabular: str | dict | None = "mlp",
        mixer: str | dict | None = "concat",
        head: str | dict | None = "linear",
        task: str | dict | None = None,
        optimizer: str | dict | None = "adam",
        scheduler: str | dict | None = "none",
        in_channels: int = 1,
        image_size: int = 64,
        channels_last: bool = False,
        ensemble: int = 1,
        evaluation: dict | EvaluationOptions | None = None,
        run_config: dict | None = None,
    ) -> None:
        super().__init__()
        schema = schema.to_dict() if isinstance(schema, DataSchema) else dict(schema)
        # Checked once, here; the hyper-parameters keep plain values (weights_only checkpoints).
        evaluation_settings = evaluation_options(evaluation)
        if isinstance(evaluation, EvaluationOptions):
            evaluation = evaluation.to_dict()
        custom_extractor = isinstance(extractor, nn.Module)
        self.save_hyperparameters(ignore=["extractor"] if custom_extractor else None)
        self.schema = DataSchema.from_dict(schema)
        self.channels_last = channels_last
        task_opts = _options(self.schema.task if task is None else task, self.schema.task)
        if task_opts["name"] != self.schema.task:
            raise ValueError(
                f"task '{task_opts['name']}' does not match the data schema's '{self.schema.task}'"
            )
        task_opts = {k: v for k, v in task_opts.items() if k not in _DEMO_KEYS}
        self.task = build_task(
            self.schema.task, self.schema.labels, evaluation=evaluation_settings, **task_opts
        )
        self.optimizer_options = _options(optimizer, "adam")
        self.scheduler_options = _options(scheduler, "none")
        check_optimisation_options(self.optimizer_options, self.scheduler_options)
        linear_option = False
        if isinstance(tabular, dict) and "linear" in tabular:
            tabular = dict(tabular)
            linear_option = tabular.pop("linear")
        self.linear = resolve_linear(linear_option, self.schema, self.task)
        self.ensemble = check_ensemble(ensemble)
        #: label name -> the penalised linear start chosen for its linear term (penalty, where
        #: it was chosen, the path): :meth:`start_linear_terms`, recorded in model_summary.json.
        self.linear_choices: dict[str, dict[str, Any]] = {}
        #: label name -> its calibration slope on val and the factor applied to its log
        #: hazards (:meth:`shrink_to_validation`), recorded in model_summary.json.
        self.shrinkage: dict[str, dict[str, Any]] = {}
        self.net = build_ensemble(
            self.ensemble,
            self.schema,
            [self.task.head_size(j) for j in range(len(self.schema.labels))],
            self.task.combine,
            extractor=extractor,
            tabular=tabular,
            mixer=mixer,
            head=head,
            in_channels=in_channels,
            image_size=image_size,
            linear=self.linear,
        )
        self._eval_records: dict[str, list[dict[str, torch.Tensor]]] = {}
        #: This epoch's training losses so far: per-label sums weighted by batch size, and the
        #: number of cases (:meth:`_add_train_losses`).
        self._train_sums: torch.Tensor | None = None
        self._train_cases = 0
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleList(
                    self.task.make_metrics(j) or nn.Identity()
                    for j in range(len(self.schema.labels))
                )
                for stage in EVAL_STAGES
            }
        )

    # -- forward ---------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if stage == "fit" and datamodule is not None and hasattr(datamodule, "split_frame"):
            train = datamodule.split_frame("train")
            self.task.fit_before_training(train)
            # The Cox loss sees the global batch: every process's cases.
            world = self.trainer.world_size if self._trainer else 1
            self.task.check_batches(train, datamodule.batch_size * world)
            if any(net.linear_terms is not None for net in member_nets(self.net)):
                frame = datamodule.split_frame()
                self.start_linear_terms(frame[frame[SPLIT_COLUMN].isin([TRAIN, VAL])])
            # Discrete-time survival heads start at the training Kaplan-Meier curve.
            start_heads(self.net, self.task, len(self.schema.labels), train)
        if stage == "fit" and self.trainer is not None and self.trainer.world_size > 1:
            # Losses that compare cases (Cox risk sets) see the global batch, with gradients.
            self.task.gather = self._gather_global_batch
        if self.channels_last:
            for extractor in self.net.image_extractors():
                extractor.to(memory_format=torch.channels_last)

    def _gather_global_batch(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's share of ``tensor``, concatenated along the first axis, with
        gradients (:attr:`nervus_lightning.tasks.base.Task.gather`)."""
        return self.all_gather(tensor, sync_grads=True).flatten(0, 1)

    def start_linear_terms(self, frame: Any) -> None:
        """Set each head's linear term to the task's penalised linear start (Cox: a ridge Cox
        fit), fitted on the training rows of ``frame`` with its penalty chosen on its validation
        rows, before the first epoch (:func:`~nervus_lightning.models.linear_start.
        start_linear_terms`); the penalty then stays on the term during training
        (:meth:`linear_penalty`). A resumed run loads its checkpoint's weights over the start
        and chooses the same penalty again (the choice is deterministic)."""
        self.linear_choices = start_linear_terms(
            self.net, self.task, self.schema.labels, self.schema.input_columns, frame
        )

    def linear_penalty(self) -> torch.Tensor | float:
        """The chosen ridge penalties of the linear terms, added to the training loss
        (:func:`~nervus_lightning.models.linear_start.linear_penalty`)."""
        return linear_penalty(self.net, self.linear_choices, self.schema.labels)

    def _image(self, batch: dict[str, Any]) -> torch.Tensor | None:
        image = batch.get("image")
        if image is not None and self.channels_last and image.ndim == 4:
            image = image.contiguous(memory_format=torch.channels_last)
        return image

    def forward(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        return self.net(
            image=self._image(batch), tabular=batch.get("tabular"), view_mask=batch.get("view_mask")
        )

    def _losses(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> list[torch.Tensor]:
        return [self.task.loss(out, batch, j) for j, out in enumerate(outputs)]

    def _log_losses(self, stage: str, losses: list[torch.Tensor], batch_size: int) -> torch.Tensor:
        # Epoch values only (on_step=False): with several processes, sync_dist joins them once
        # per epoch. Training: the mean over every process's batches (not the first process's
        # share). Validation and test: every process holds the whole split's value already.
        total = torch.stack(losses).sum()
        self.log(
            f"{stage}_loss",
            total,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch_size,
            sync_dist=True,
        )
        if len(losses) > 1:
            for spec, loss in zip(self.schema.labels, losses, strict=True):
                self.log(
                    f"{stage}_loss_{spec.name}",
                    loss,
                    on_step=False,
                    on_epoch=True,
                    batch_size=batch_size,
                    sync_dist=True,
                )
        return total

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        cases = len(batch["index"])
        if self.ensemble == 1:
            losses = self._losses(self(batch), batch)
            self._add_train_losses(losses, cases, batch_idx)
            return torch.stack(losses).sum() + self.linear_penalty()
        # Each member learns from its own loss; their weights are disjoint, so the sum trains
        # each one as if alone. The logged train_loss is the members' mean (one model's scale).
        image = self._image(batch)
        per_member = self.net.member_outputs(image, batch.get("tabular"), batch.get("view_mask"))
        losses = [self._losses(outputs, batch) for outputs in per_member]
        mean = [torch.stack(parts).mean() for parts in zip(*losses, strict=True)]
        self._add_train_losses(mean, cases, batch_idx)
        return torch.stack([torch.stack(parts).sum() for parts in losses]).sum() + (
            self.linear_penalty()
        )

    @torch.no_grad()
    def _add_train_losses(self, losses: list[torch.Tensor], cases: int, batch_idx: int) -> None:
        """Add one step's losses to the epoch's sums, and log the epoch's mean at its last step.

        ``self.log`` on every step cost about 0.8 ms of host time per step (Lightning's result
        bookkeeping), as much as a small network's whole step: the sums stay on the device
        (no synchronisation) and Lightning sees one value per epoch, the same case-weighted
        mean it computed before."""
        step = torch.stack([loss.detach().float() for loss in losses]) * cases
        self._train_sums = step if self._train_sums is None else self._train_sums + step
        self._train_cases += cases
        if self._trainer is not None and batch_idx + 1 == self.trainer.num_training_batches:
            self._log_train_epoch()

    def _log_train_epoch(self) -> None:
        if self._train_sums is None or not self._train_cases:
            return
        means = self._train_sums / self._train_cases
        self._train_sums, self._train_cases = None, 0
        self._log_losses("train", list(means.unbind()), batch_size=1)

    def on_train_epoch_end(self) -> None:
        # An epoch cut short (max_steps, an interruption) logs what it trained on.
        self._log_train_epoch()

    def _eval_step(self, stage: str, batch: dict[str, Any]) -> None:
        outputs = self(batch)
        # Losses and metrics are computed once per epoch on the whole split (see
        # _log_eval_epoch): with several processes every case then counts once, and the
        # survival loss sees the risk sets of the whole split rather than of each batch.
        record = {k: v for k, v in batch.items() if k not in INPUT_KEYS and torch.is_tensor(v)}
        record.update({f"{_OUTPUT_KEY}{j}": out.detach() for j, out in enumerate(outputs)})
        self._eval_records.setdefault(stage, []).append(record)

    def _log_eval_epoch(self, stage: str) -> None:
        records = self._eval_records.pop(stage, [])
        if not records:
            return
        world = self.trainer.world_size
        cases = gather_cases(concat_records(records), world, self.all_gather)
        outputs = [cases.pop(f"{_OUTPUT_KEY}{j}") for j in range(len(self.schema.labels))]
        gather, self.task.gather = self.task.gather, None  # every process has the whole split
        try:
            losses = self._losses(outputs, cases)
        finally:
            self.task.gather = gather
        self._log_losses(stage, losses, len(cases["index"]))
        # Each process updates the metrics with its share of the unique cases; torchmetrics
        # then joins the shares, so that every case counts once.
        share = slice(self.global_rank, None, world)
        mine = {k: v[share] for k, v in cases.items()}
        for j, (spec, out) in enumerate(zip(self.schema.labels, outputs, strict=True)):
            metrics = self.metrics[stage][j]
            if isinstance(metrics, nn.Identity):
                continue
            metrics.reset()
            self.task.update_metrics(metrics, out[share], mine, j)
            values = metrics.compute()
            metrics.reset()
            for name, value in values.items():
                # Every process holds the same value: the mean over processes is that value.
                self.log(f"{stage}_{name}_{spec.name}", value, on_epoch=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_eval_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval_epoch("test")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        outputs = self(batch)
        return {
            "index": batch["index"].cpu(),
            "outputs": [self.task.transform_output(o, j).cpu() for j, o in enumerate(outputs)],
        }

    # -- post-training state (e.g. the survival baseline hazard) ------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[TASK_STATE_KEY] = self.task.state_tensors()
        if self.linear_choices:  # the penalties chosen (numbers of the run, not of patients)
            checkpoint[LINEAR_CHOICES_KEY] = {
                name: {k: v for k, v in choice.items() if k != "path"}
                for name, choice in self.linear_choices.items()
            }
        if self.shrinkage:  # slopes and factors (numbers of the run, not of patients)
            checkpoint[SHRINKAGE_KEY] = dict(self.shrinkage)
        hparams = checkpoint.get("hyper_parameters")
        extractor = hparams.get("extractor") if hparams else None
        if isinstance(extractor, dict) and (
            extractor.get("pretrained") or extractor.get("weights_path")
        ):
            # The trained weights are in the state dict: a checkpoint that travels to another
            # site must rebuild the architecture empty, never look for the ImageNet file (or a
            # path of the training machine). The run config keeps where training started from.
            checkpoint["hyper_parameters"] = {
                **hparams,
                "extractor": {**extractor, "pretrained": False, "weights_path": None},
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.task.load_state_tensors(checkpoint.get(TASK_STATE_KEY, {}))
        self.linear_choices = dict(checkpoint.get(LINEAR_CHOICES_KEY) or {})
        self.shrinkage = dict(checkpoint.get(SHRINKAGE_KEY) or {})

    @torch.no_grad()
    def infer(self, loader: Any, device: torch.device | str | None = None) -> list[np.ndarray]:
        """Transformed outputs (probabilities, original units, log hazards) of every case of
        ``loader``, in its order: one ``(n, head_size)`` array per label.

        Runs on ``device`` (default: where the module is), in evaluation mode, in float32.
        """
        from lightning.fabric.utilities.apply_func import move_data_to_device

        device = torch.device(device) if device is not None else self.device
        was_training = self.training
        self.to(device).eval()
        per_label: list[list[torch.Tensor]] = [[] for _ in self.schema.labels]
        try:
            for batch in loader:
                batch = move_data_to_device(batch, device)
                for j, out in enumerate(self(batch)):
                    per_label[j].append(self.task.transform_output(out, j).cpu())
        finally:
            self.train(was_training)
        return [torch.cat(o).numpy() for o in per_label]

    def finalize(
        self,
        datamodule: Any,
        *checkpoint_paths: str,
        outputs: list[np.ndarray] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """Fit what the task estimates after training (survival baseline on ``train``, binary
        thresholds on ``val``) and store it in the given checkpoint files, so that each one
        alone is enough to predict.

        ``outputs``: this model's :meth:`infer` outputs for every case of the data module (CSV
        order), when the caller has them already; else the needed splits are inferred on
        ``device``.
        """
        splits = [s for s in self.task.post_training_splits if len(datamodule.split_frame(s))]
        if not splits:
            return
        by_split: dict[str, list[np.ndarray]] = {}
        for split in splits:
            if outputs is not None:
                rows = (datamodule.frame["split"] == split).to_numpy()
                by_split[split] = [o[rows] for o in outputs]
            else:
                by_split[split] = self.infer(datamodule.eval_dataloader(split), device)
        frames = {s: datamodule.split_frame(s) for s in splits}
        self.task.fit_after_training(by_split, frames)
        for path in checkpoint_paths:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            ckpt[TASK_STATE_KEY] = self.task.state_tensors()
            if self.shrinkage:  # the weights now output the shrunk log hazards
                ckpt["state_dict"] = {k: v.cpu() for k, v in self.state_dict().items()}
                ckpt[SHRINKAGE_KEY] = dict(self.shrinkage)
            atomic_write(path, lambda tmp, ckpt=ckpt: torch.save(ckpt, tmp))

    @torch.no_grad()
    def shrink_to_validation(
        self, datamodule: Any, device: torch.device | str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Multiply each Cox label's log hazards by its calibration slope on the validation
        rows when that is below 1 (:func:`nervus_lightning.survival.shrinkage.shrink_net`), in
        the weights themselves; before :meth:`finalize`, which fits the baseline hazard to the
        shrunk risks and writes the weights into the checkpoint. Returns (and keeps in
        :attr:`shrinkage`) each label's slope and factor; empty when the task does not shrink
        (``task.shrink=false``, discrete-time or competing-risk heads) or there is no
        validation split."""
        val = datamodule.split_frame("val")
        if not len(val):
            return {}
        chosen = shrink_net(
            self.net,
            lambda: self.infer(datamodule.eval_dataloader("val"), device),
            val,
            self.schema.labels,
            self.task,
        )
        if not chosen:
            return {}
        self.shrinkage = {name: choice.summary() for name, choice in chosen.items()}
        return self.shrinkage

    def export_schema(self) -> dict[str, Any]:
        """The schema for ``schema.json``: labels with what the task fitted after training."""
        out = self.schema.to_dict()
        out["group"] = self.schema.group_column
        for j, label in enumerate(out["labels"]):
            label.update(self.task.export_label(j))
        return out

    # -- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        return build_optimisation(
            self.parameters(),
            self.optimizer_options,
            self.scheduler_options,
            self.trainer.max_epochs if self._trainer is not None else None,
        )
