"""What a training run is told: :class:`TrainSettings` and its :class:`DataSettings`, plain values.

The command line composes a Hydra config and turns it into these
(``TrainSettings.from_config(OmegaConf.to_container(cfg, resolve=True))``); from Python, pass a
plain nested dict of the same shape as ``conf/train.yaml`` composes (the keys below), or build the
dataclasses directly. Nothing here imports Hydra, OmegaConf or Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: OmegaConf's mark of a value that was never set (``csv: ???``); ``OmegaConf.to_container``
#: keeps it as this string, and the run treats it as absent, as reading the config did.
MISSING = "???"
#: ``data.preset`` values of the built-in demo data (their builders: ``data.sources``).
DEMO_PRESETS = ("demo", "demo_volumes")


def _get(options: Mapping[str, Any] | None, key: str, default: Any = None) -> Any:
    """``options[key]``, or ``default`` where the key is absent or never set (``???``)."""
    if not options:
        return default
    value = options.get(key, default)
    return default if isinstance(value, str) and value == MISSING else value


@dataclass(frozen=True)
class DataSettings:
    """The ``data`` group: where the CSV is and how its images and rows are read.

    ``csv`` None: the built-in data set named by ``preset`` (``demo``, the default, the demo's
    volume set ``demo_volumes``, or a scikit-survival preset such as ``whas500``, written once
    into the cache under ``demo_root``).
    The other fields are :class:`~nervus_lightning.data.datamodule.NervusDataModule`'s arguments
    of the same names.
    """

    csv: str | None = None
    labels: list[str] | None = None
    preset: str | None = None
    demo_root: str | None = None
    split_seed: int = 0
    time_unit: str | None = None
    image_size: int = 256
    in_channels: int = 1
    bit_depth: Any = "auto"
    window: Any = "auto"
    frame: Any = "middle"
    missing_views: str = "refuse"
    cache: str = "auto"
    cache_dir: str | None = None
    cache_max_gb: float | None = None
    batch_size: int = 32
    num_workers: int = 0
    volume_size: list[int] | None = None
    spacing: list[float] | None = None

    @property
    def is_demo(self) -> bool:
        """Whether the run reads the embedded demo data, 2D or volumes (no CSV, no other
        preset)."""
        return not self.csv and (self.preset or "demo") in DEMO_PRESETS

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> DataSettings:
        """The ``data`` mapping of a plain config; absent keys take the defaults above."""
        return cls(
            csv=_get(data, "csv") or None,
            labels=_get(data, "labels"),
            preset=_get(data, "preset"),
            demo_root=_get(data, "demo_root"),
            split_seed=_get(data, "split_seed", 0),
            time_unit=_get(data, "time_unit"),
            image_size=data["image_size"],
            in_channels=data["in_channels"],
            bit_depth=_get(data, "bit_depth", "auto"),
            window=_get(data, "window", "auto"),
            frame=_get(data, "frame", "middle"),
            missing_views=_get(data, "missing_views", "refuse"),
            cache=_get(data, "cache", "auto"),
            cache_dir=_get(data, "cache_dir"),
            cache_max_gb=_get(data, "cache_max_gb"),
            batch_size=data["batch_size"],
            num_workers=data["num_workers"],
            volume_size=_get(data, "volume_size"),
            spacing=_get(data, "spacing"),
        )


@dataclass(frozen=True)
class TrainSettings:
    """Everything :func:`nervus_lightning.workflows.train.train` reads, as plain values.

    Attributes:
        data: the CSV and how it is read.
        task: the ``task`` group (``name``, loss options, ``demo_labels``,
            ``demo_positive_class``...), as :class:`~nervus_lightning.module.NervusModule`
            takes it.
        extractor, tabular, mixer, head: the ``model/*`` groups (``{"name": "none"}`` leaves
            an input out); ``head`` may be a name.
        channels_last, ensemble: ``model.channels_last`` and ``model.ensemble``.
        augmentation, sampler: the names of the ``augmentation`` and ``sampler`` choices.
        augmentation_options: the ``augmentation`` group's other keys (the ``volume``
            preset's strengths and ``flip_axes``; empty for the 2D presets).
        optimizer, scheduler: the ``optimizer`` and ``scheduler`` groups.
        trainer: ``lightning.Trainer``'s keyword arguments (the ``trainer`` group).
        checkpoint_policy: which checkpoint is the run's model (``best`` or ``each``).
        every_n_train_steps: also keep a checkpoint every so many steps (None: per epoch only).
        early_stopping: the ``early_stopping`` group (``patience``, ``min_delta``): stop once
            ``val_loss`` has not improved for ``patience`` epochs; None or ``patience: None``
            trains every epoch of ``trainer.max_epochs``.
        evaluation: the ``evaluation`` group (checked when training starts).
        explain: the ``explain`` group, or None (no explanation after training).
        seed: one seed for Python, NumPy, torch and the data loader workers.
        ckpt_path: a checkpoint to resume from (None: a new run, or a requeued job's own).
        run_config: the whole configuration as a plain dict, recorded in every checkpoint as
            given (:meth:`from_config` keeps it in step with the fields; a field changed
            afterwards with ``dataclasses.replace`` is not written into it).
    """

    data: DataSettings
    task: dict[str, Any]
    extractor: dict[str, Any]
    tabular: dict[str, Any]
    mixer: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    trainer: dict[str, Any]
    head: Any = "linear"
    channels_last: bool = False
    ensemble: Any = 1
    augmentation: str = "none"
    augmentation_options: dict[str, Any] = field(default_factory=dict)
    sampler: str = "none"
    checkpoint_policy: str = "best"
    every_n_train_steps: int | None = None
    early_stopping: dict[str, Any] | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    explain: dict[str, Any] | None = None
    seed: int = 42
    ckpt_path: str | None = None
    run_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainSettings:
        """The settings of a plain nested mapping shaped like the composed ``train`` config.

        ``config`` holds ``data``, ``task``, ``model`` (``extractor``, ``tabular``, ``mixer``,
        optional ``head``, ``channels_last``, ``ensemble``), ``augmentation`` and ``sampler``
        (each with a ``name``), ``optimizer``, ``scheduler``, ``trainer``, ``checkpoint``
        (``policy``, optional ``every_n_train_steps``), optional ``early_stopping``,
        ``evaluation`` and ``explain``,
        ``seed`` and optional ``ckpt_path``: what ``OmegaConf.to_container(cfg, resolve=True)``
        gives for a config composed from ``conf/train.yaml``. The whole mapping is kept as
        :attr:`run_config`, which every checkpoint records.
        """
        model = config["model"]
        checkpoint = config["checkpoint"]
        return cls(
            data=DataSettings.from_config(config["data"]),
            task=dict(config["task"]),
            extractor=dict(model["extractor"]),
            tabular=dict(model["tabular"]),
            mixer=dict(model["mixer"]),
            head=_get(model, "head") or "linear",
            channels_last=bool(_get(model, "channels_last", False)),
            ensemble=_get(model, "ensemble", 1),
            augmentation=config["augmentation"]["name"],
            augmentation_options={k: v for k, v in config["augmentation"].items() if k != "name"},
            sampler=config["sampler"]["name"],
            optimizer=dict(config["optimizer"]),
            scheduler=dict(config["scheduler"]),
            trainer=dict(config["trainer"]),
            checkpoint_policy=checkpoint["policy"],
            every_n_train_steps=_get(checkpoint, "every_n_train_steps") or None,
            early_stopping=_get(config, "early_stopping"),
            evaluation=dict(_get(config, "evaluation") or {}),
            explain=_get(config, "explain"),
            seed=config["seed"],
            ckpt_path=_get(config, "ckpt_path"),
            run_config=dict(config),
        )
