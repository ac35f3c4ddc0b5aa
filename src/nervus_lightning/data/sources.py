"""Where a run's data comes from: the user's ``data.csv``, the embedded demo data (2D images, or
the demo's volume set), or a scikit-survival preset written once as a Nervus CSV into the cache.

Shared by training (:mod:`nervus_lightning.workflows.train`) and by ``explain`` of a checkpoint
without ``data.csv`` (which reads again the data the run was trained on), so that neither imports
the other. It takes the ``data`` options as plain values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nervus_lightning.data.demo import build_demo_dataset, default_cache_root
from nervus_lightning.data.demo_volumes import build_volume_demo
from nervus_lightning.errors import NervusInputError
from nervus_lightning.files import atomic_write
from nervus_lightning.survival.presets import PRESETS, write_preset_csv

#: The built-in demo data sets (``data.preset``) and their builders. Their labels share names,
#: so that each task's ``demo_labels`` and ``demo_positive_class`` fit both.
DEMO_BUILDERS = {"demo": build_demo_dataset, "demo_volumes": build_volume_demo}


def resolve_data(
    csv: str | Path | None,
    labels: Sequence[str] | None = None,
    *,
    preset: str | None = None,
    demo_root: str | Path | None = None,
    split_seed: int = 0,
    demo_labels: Sequence[str] | None = None,
) -> tuple[str | Path, list[str] | None, bool]:
    """The CSV to train on, its label columns and whether it is the built-in demo data.

    Args:
        csv: ``data.csv``; when given, the other arguments but ``labels`` do not matter.
        labels: ``data.labels``, the label columns (None: every ``label_*`` column).
        preset: ``data.preset`` when there is no CSV: ``demo`` (also for None), the demo's
            volume set ``demo_volumes`` (:mod:`~nervus_lightning.data.demo_volumes`) or a
            scikit-survival preset (:data:`~nervus_lightning.survival.presets.PRESETS`).
        demo_root: ``data.demo_root``, where the demo data and presets are written (None: the
            cache).
        split_seed: ``data.split_seed``, the seed of a preset's train/val/test split.
        demo_labels: the task's labels of the demo data (``task.demo_labels``), used when
            ``labels`` is None.
    """
    labels = list(labels) if labels else labels
    if csv:
        return csv, labels, False
    preset = preset or "demo"
    if preset in DEMO_BUILDERS:
        demo = labels or (list(demo_labels) if demo_labels else demo_labels)
        return DEMO_BUILDERS[preset](demo_root), demo, True
    return materialize_preset(preset, demo_root, seed=split_seed), labels, False


def materialize_preset(name: str, root: str | None = None, seed: int = 0) -> Path:
    """Write a scikit-survival preset as a Nervus CSV into the cache (once) and return its path."""
    if name not in PRESETS:
        raise NervusInputError(f"data.preset '{name}' is not one of {[*DEMO_BUILDERS, *PRESETS]}.")
    path = Path(root or default_cache_root()) / "presets" / f"{name}_split{seed}.csv"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: write_preset_csv(name, tmp, seed=seed))
    return path
