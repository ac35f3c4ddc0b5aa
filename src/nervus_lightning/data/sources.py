"""Where a run's data comes from: the user's ``data.csv``, the embedded demo data, or a
scikit-survival preset written once as a Nervus CSV into the cache.

Shared by training (:mod:`nervus_lightning.train`) and by ``explain`` of a checkpoint without
``data.csv`` (which reads again the data the run was trained on), so that neither imports the
other. ``cfg`` is a run config (Hydra's, or the ``run_config`` a checkpoint keeps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nervus_lightning.data.demo import build_demo_dataset, default_cache_root
from nervus_lightning.errors import NervusInputError
from nervus_lightning.files import atomic_write
from nervus_lightning.survival.presets import PRESETS, write_preset_csv


def plain(node: Any) -> Any:
    """A config node as plain Python containers (other values as they are)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def resolve_data(cfg: DictConfig) -> tuple[str | Path, list[str] | None, bool]:
    """The CSV to train on, its label columns and whether it is the built-in demo data."""
    data = cfg.data
    labels = plain(data.get("labels"))
    csv = data.get("csv")
    if csv:
        return csv, labels, False
    preset = data.get("preset") or "demo"
    if preset == "demo":
        return (
            build_demo_dataset(data.get("demo_root")),
            labels or plain(cfg.task.get("demo_labels")),
            True,
        )
    return (
        materialize_preset(preset, data.get("demo_root"), seed=data.get("split_seed", 0)),
        (labels),
        False,
    )


def materialize_preset(name: str, root: str | None = None, seed: int = 0) -> Path:
    """Write a scikit-survival preset as a Nervus CSV into the cache (once) and return its path."""
    if name not in PRESETS:
        raise NervusInputError(f"data.preset '{name}' is not one of {['demo', *PRESETS]}.")
    path = Path(root or default_cache_root()) / "presets" / f"{name}_split{seed}.csv"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: write_preset_csv(name, tmp, seed=seed))
    return path
