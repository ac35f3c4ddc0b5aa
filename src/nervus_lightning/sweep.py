"""One table of every job of a sweep (``python -m nervus_lightning -m ...``).

This module owns ``sweep_summary.csv`` in the sweep folder: one row per job with its status, its
command-line overrides (one column per key), the sweep objective ``best_val_loss`` and the
validation, test and external metrics of its ``summary.json`` flattened to columns named
``<split>/<label>/<metric>`` (e.g. ``val/label_cancer/auroc``). Rows are sorted by
``best_val_loss``, best first; failed jobs come last with ``status=failed``. The column ``best``
marks the one job with the lowest ``best_val_loss``; ``sweep_best.json`` repeats that job, its
overrides (the parameters an Optuna search chose) and its checkpoint.

:func:`summarize_sweep` builds the table from the folders alone; :class:`SweepSummary` is the
Hydra callback (registered in ``conf/train.yaml``) that writes both files after every job, so they
exist even when a failed job stops the sweep, and once more when the sweep ends. When an Optuna
search (``hparams_search=optuna``) keeps its study in ``hydra.sweeper.storage``, the callback also
prepares the study for continuing: trials left running by a killed search are marked failed, and
a sweep folder that already holds jobs is refused (their folders would be overwritten).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from nervus_lightning.outputs import write_csv, write_json

log = logging.getLogger(__name__)

SUMMARY_FILE = "sweep_summary.csv"
BEST_FILE = "sweep_best.json"
# What the training function returns and a sweeper minimises: the lowest validation loss of the
# run (the score of the checkpoint it selects).
OBJECTIVE = "best_val_loss"
OBJECTIVE_DIRECTION = "minimize"
# The exit status of a user error (nervus_lightning.cli's convention).
USER_ERROR_STATUS = 2
# Training-split metrics are optimistic and would double the width of the table.
_SKIPPED_SPLITS = ("train",)
_SPLIT_RANK = {"val": 0, "test": 1, "external": 2}


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Folders holding ``.hydra/overrides.yaml`` (any depth, so custom subdirs work)."""
    dirs = [p.parent.parent for p in sweep_dir.rglob("overrides.yaml") if p.parent.name == ".hydra"]
    return sorted(dirs, key=lambda d: _natural_key(d.relative_to(sweep_dir).as_posix()))


def _natural_key(text: str) -> list[Any]:
    """'2' before '10'."""
    parts: list[Any] = []
    for chunk in text.replace("/", " / ").split():
        parts.append((0, int(chunk), "") if chunk.isdigit() else (1, 0, chunk))
    return parts


def _overrides(job_dir: Path) -> dict[str, str]:
    items = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
    out = {}
    for item in items:
        key, _, value = str(item).partition("=")
        out[key] = value
    return out


def _flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for split, labels in metrics.items():
        if split in _SKIPPED_SPLITS or not isinstance(labels, Mapping):
            continue
        for label, values in labels.items():
            if not isinstance(values, Mapping):
                continue
            for metric, value in values.items():
                # "reasons" explains missing values in words; it is no metric.
                if metric == "reasons" or isinstance(value, Mapping):
                    continue
                out[f"{split}/{label}/{metric}"] = None if value is None else float(value)
    return out


def _metric_column_order(columns: list[str]) -> list[str]:
    def rank(column: str) -> tuple[int, str]:
        split = column.split("/", 1)[0]
        if split in _SPLIT_RANK:
            return _SPLIT_RANK[split], ""
        return (3, split) if split.startswith("external_") else (4, split)

    return sorted(columns, key=rank)  # stable: metric order within a split is kept


def summarize_sweep(sweep_dir: str | Path, errors: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The summary table of the jobs under ``sweep_dir`` (nothing is written).

    Args:
        sweep_dir: the folder of a multirun (``hydra.sweep.dir``).
        errors: job folder (relative to ``sweep_dir``) -> error message, for jobs known to have
            failed; their ``error`` column gets the message.

    Returns:
        One row per job folder, columns ``job, status, <override keys>, best_val_loss,
        <split>/<label>/<metric> ..., best_checkpoint`` (plus ``error`` when a job failed),
        sorted by ``best_val_loss`` ascending, failed jobs last. ``status`` is ``ok`` for a job
        with a ``summary.json`` and ``failed`` for one without.
    """
    sweep_dir = Path(sweep_dir)
    errors = dict(errors or {})
    rows, override_keys, metric_keys = [], [], []
    for job_dir in _job_dirs(sweep_dir):
        job = job_dir.relative_to(sweep_dir).as_posix()
        overrides = _overrides(job_dir)
        override_keys += [k for k in overrides if k not in override_keys]
        row: dict[str, Any] = {"job": job, **overrides}
        summary_path = job_dir / "summary.json"
        summary = None
        if summary_path.is_file():
            try:
                summary = json.loads(summary_path.read_text())
            except json.JSONDecodeError as err:
                errors.setdefault(job, f"unreadable summary.json: {err}")
        if summary is None or job in errors:
            row["status"] = "failed"
            row["error"] = errors.get(job, "no summary.json (the job did not finish)")
        else:
            row["status"] = "ok"
            objective = summary.get(OBJECTIVE)
            row[OBJECTIVE] = math.nan if objective is None else float(objective)
            metrics = _flatten_metrics(summary.get("metrics") or {})
            metric_keys += [k for k in metrics if k not in metric_keys]
            row.update(metrics)
            row["best_checkpoint"] = summary.get("best_checkpoint")
        rows.append(row)

    columns = ["job", "status", *override_keys, OBJECTIVE, *_metric_column_order(metric_keys)]
    columns.append("best_checkpoint")
    if any(r["status"] == "failed" for r in rows):
        columns.append("error")
    table = pd.DataFrame(rows, columns=columns)
    if table.empty:
        return table
    table[OBJECTIVE] = pd.to_numeric(table[OBJECTIVE])
    table["_failed"] = table["status"] == "failed"
    # Stable sort: equal objectives keep the job order.
    table = table.sort_values(["_failed", OBJECTIVE], kind="stable", na_position="last")
    table = table.drop(columns="_failed").reset_index(drop=True)
    # After sorting, the first row is the best one if it finished with a number.
    best = table[OBJECTIVE].notna() & (table["status"] == "ok")
    table.insert(table.columns.get_loc(OBJECTIVE) + 1, "best", best & (best.cumsum() == 1))
    return table


def best_job(table: pd.DataFrame, override_keys: list[str] | None = None) -> dict[str, Any] | None:
    """The row flagged ``best`` as a JSON-ready dict (``None`` when no job finished).

    ``params`` holds the job's overrides: every column between ``status`` and ``best_val_loss``
    (or only ``override_keys`` when given).
    """
    if table.empty or not table["best"].any():
        return None
    row = table[table["best"]].iloc[0]
    columns = list(table.columns)
    keys = override_keys or columns[columns.index("status") + 1 : columns.index(OBJECTIVE)]
    params = {k: row[k] for k in keys if k in row and not _missing(row[k])}
    return {
        "objective": OBJECTIVE,
        "direction": OBJECTIVE_DIRECTION,
        "job": str(row["job"]),
        OBJECTIVE: float(row[OBJECTIVE]),
        "params": params,
        "best_checkpoint": row["best_checkpoint"],
        "n_jobs": int(len(table)),
        "n_finished": int((table["status"] == "ok").sum()),
    }


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def write_sweep_summary(
    sweep_dir: str | Path, errors: Mapping[str, str] | None = None
) -> Path | None:
    """Write ``sweep_summary.csv`` (and ``sweep_best.json`` once a job finished) into
    ``sweep_dir``; ``None`` when it holds no job yet."""
    sweep_dir = Path(sweep_dir)
    table = summarize_sweep(sweep_dir, errors)
    if table.empty:
        return None
    best = best_job(table)
    if best is not None:
        write_json(sweep_dir / BEST_FILE, best)
    return write_csv(sweep_dir / SUMMARY_FILE, table)


class SweepSummary(Callback):
    """Hydra callback: keep ``sweep_summary.csv`` up to date during and after a multirun."""

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None
        self.errors: dict[str, str] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.get("sweeper") or {}
        storage = sweeper.get("storage")
        if not storage or "optuna" not in str(sweeper.get("_target_", "")):
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir() and _job_dirs(sweep_dir):
            # Hydra turns an exception raised here into a warning; the search must not start.
            print(
                f"nervus_lightning: error: hydra.sweep.dir={sweep_dir} already holds the jobs of "
                "an earlier search; continuing the study there would overwrite their folders. "
                "Leave hydra.sweep.dir at its default (a new timestamped folder) or name a new "
                "one.",
                file=sys.stderr,
            )
            raise SystemExit(USER_ERROR_STATUS)
        continue_study(str(storage), sweeper.get("study_name"))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra_cfg = config.get("hydra")
        if hydra_cfg is None or hydra_cfg.get("mode") != RunMode.MULTIRUN:
            return
        job_dir = Path(hydra_cfg.runtime.output_dir).resolve()
        # The job folder is <sweep dir>/<subdir>; going up from it gives this very sweep's folder
        # even when hydra.sweep.dir holds ${now:...}.
        depth = len(Path(str(hydra_cfg.sweep.subdir)).parts)
        self.sweep_dir = job_dir.parents[depth - 1] if depth else job_dir.parent
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value
            job = job_dir.relative_to(self.sweep_dir).as_posix()
            self.errors[job] = f"{type(error).__name__}: {error}"
        self._write()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.sweep_dir is None:
            self.sweep_dir = Path(config.hydra.sweep.dir).resolve()
        path = self._write()
        if path is not None:
            log.info("sweep summary: %s", path)

    def _write(self) -> Path | None:
        try:
            return write_sweep_summary(self.sweep_dir, self.errors)
        except Exception as err:  # a summary must never turn a finished sweep into a failure
            log.warning("could not write the sweep summary in %s: %s", self.sweep_dir, err)
            return None


def continue_study(storage: str, study_name: str | None) -> int:
    """Prepare an Optuna study in ``storage`` to be continued; return its finished trials.

    Trials still marked running belong to a search that was killed (the Hydra sweeper runs one
    search per study at a time): they are marked failed, so that they neither count as finished
    nor stay running forever. A study that does not exist yet is left to the sweeper to create.
    """
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no such study yet
        return 0
    stale = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    for trial in stale:
        study._storage.set_trial_state(trial._trial_id, optuna.trial.TrialState.FAIL)
    finished = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    log.info(
        "continuing Optuna study %r in %s: %d finished trials%s",
        study.study_name,
        storage,
        finished,
        f", {len(stale)} left running by a killed search marked failed" if stale else "",
    )
    return finished
