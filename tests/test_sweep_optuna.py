"""``hparams_search=optuna``: an Optuna search through hydra-optuna-sweeper, its summary and its
persistent study."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_sweep_summary import write_tiny_csv

from nervus_lightning.config import config_dir

optuna = pytest.importorskip("optuna")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

FAST = [
    "model/extractor=none",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "evaluation.n_bootstrap=0",
]


def _search(tmp_path, sweep_dir, *overrides):
    csv = tmp_path / "tiny.csv"
    if not csv.exists():
        write_tiny_csv(csv)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "nervus_lightning",
            "hparams_search=optuna",
            f"data.csv={csv}",
            *FAST,
            f"hydra.sweep.dir={sweep_dir}",
            *overrides,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_search_space_names_real_options():
    """Every searched name is an option of the training config, at a value of its range."""
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
        sweeper = cfg.hydra.sweeper
        assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
        assert sweeper.direction == "minimize"
        assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
        assert sweeper.sampler.seed == cfg.seed == 42
        assert sweeper.storage is None and sweeper.n_jobs == 1
        params = dict(sweeper.params)
        assert set(params) == {
            "optimizer.lr",
            "optimizer.weight_decay",
            "model.tabular.dropout",
            "model/extractor",
            "data.batch_size",
        }
        assert params["optimizer.lr"].startswith("tag(log")
        assert params["optimizer.weight_decay"].startswith("tag(log")
        chosen = compose(
            "train",
            overrides=[
                "optimizer.lr=3e-4",
                "optimizer.weight_decay=1e-5",
                "model.tabular.dropout=0.3",
                "model/extractor=densenet121",
                "data.batch_size=16",
            ],
        )
    assert chosen.optimizer.lr == 3e-4 and chosen.optimizer.weight_decay == 1e-5
    assert chosen.model.tabular.dropout == 0.3 and chosen.data.batch_size == 16
    assert chosen.model.extractor.name == "densenet121"


def test_three_trials_summary_and_best(tmp_path):
    sweep = tmp_path / "search"
    db = tmp_path / "study.db"
    result = _search(
        tmp_path,
        sweep,
        "hydra.sweeper.n_trials=3",
        f"hydra.sweeper.storage=sqlite:///{db}",
        "hydra.sweeper.study_name=tiny",
    )
    assert result.returncode == 0, result.stderr[-3000:]

    table = pd.read_csv(sweep / "sweep_summary.csv", dtype={"job": str})
    assert len(table) == 3
    assert sorted(table["job"]) == ["0", "1", "2"]
    assert (table["status"] == "ok").all()
    # The searched values lie in the documented ranges; the extractor was fixed on the command line.
    assert table["optimizer.lr"].between(1e-5, 1e-2).all()
    assert table["optimizer.weight_decay"].between(1e-6, 1e-2).all()
    assert table["model.tabular.dropout"].between(0.0, 0.5).all()
    assert set(table["data.batch_size"]) <= {16, 32, 64}
    assert (table["model/extractor"] == "none").all()
    assert table["optimizer.lr"].nunique() == 3
    for _, row in table.iterrows():
        summary = json.loads((sweep / row["job"] / "summary.json").read_text())
        assert row["best_val_loss"] == pytest.approx(summary["best_val_loss"], rel=1e-12)

    # One best row, the minimum of the column.
    assert table["best"].sum() == 1
    best_row = table[table["best"]].iloc[0]
    assert best_row["best_val_loss"] == table["best_val_loss"].min()

    best = json.loads((sweep / "sweep_best.json").read_text())
    assert best["job"] == best_row["job"]
    assert best["objective"] == "best_val_loss" and best["direction"] == "minimize"
    assert best["best_val_loss"] == pytest.approx(table["best_val_loss"].min(), rel=1e-12)
    assert float(best["params"]["optimizer.lr"]) == pytest.approx(best_row["optimizer.lr"])
    assert best["best_checkpoint"] == best_row["best_checkpoint"]

    # Optuna's own record agrees: the study holds the 3 trials with the jobs' objectives.
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    values = sorted(t.value for t in study.trials)
    assert values == pytest.approx(sorted(table["best_val_loss"]), rel=1e-12)
    assert study.best_value == pytest.approx(best["best_val_loss"], rel=1e-12)
    assert study.best_params["optimizer.lr"] == pytest.approx(best_row["optimizer.lr"])
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.best_value == pytest.approx(best["best_val_loss"], rel=1e-12)


@pytest.mark.slow
def test_killed_search_continues(tmp_path):
    """A second run with the same storage adds trials to the study; a trial left running by a
    killed search is marked failed; reusing the first sweep folder is refused."""
    db = tmp_path / "study.db"
    storage = f"sqlite:///{db}"
    common = [f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=resume"]
    first = _search(tmp_path, tmp_path / "first", "hydra.sweeper.n_trials=2", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    # What a search killed during a trial leaves behind: a trial still marked running.
    study = optuna.load_study(study_name="resume", storage=storage)
    study.ask()
    assert len(study.trials) == 3

    second = _search(tmp_path, tmp_path / "second", "hydra.sweeper.n_trials=1", *common)
    assert second.returncode == 0, second.stderr[-3000:]
    states = [t.state for t in optuna.load_study(study_name="resume", storage=storage).trials]
    complete, fail = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    assert states == [complete, complete, fail, complete]
    assert len(pd.read_csv(tmp_path / "second" / "sweep_summary.csv")) == 1

    again = _search(tmp_path, tmp_path / "first", "hydra.sweeper.n_trials=1", *common)
    assert again.returncode == 2
    assert "already holds the jobs of an earlier search" in again.stderr
    assert len(optuna.load_study(study_name="resume", storage=storage).trials) == 4


def test_best_flag_and_best_json_on_folders(tmp_path):
    """The best row and sweep_best.json come from the folders: lowest best_val_loss of the jobs
    that finished, never a failed one."""
    from test_sweep_summary import _job, _summary

    from nervus_lightning.sweep import best_job, summarize_sweep, write_sweep_summary

    sweep = tmp_path / "sweep"
    _job(sweep, "0", ["optimizer.lr=0.1"], _summary(0.7, 0.6))
    _job(sweep, "1", ["optimizer.lr=1.0"])  # crashed
    _job(sweep, "2", ["optimizer.lr=0.01"], _summary(0.3, 0.9))
    _job(sweep, "3", ["optimizer.lr=0.02"], _summary(0.3, 0.8))  # a tie: the first job wins
    table = summarize_sweep(sweep)
    assert table["best"].tolist() == [True, False, False, False]
    assert table.loc[table["best"], "job"].item() == "2"
    write_sweep_summary(sweep)
    best = json.loads((sweep / "sweep_best.json").read_text())
    assert best == best_job(table)
    assert best["job"] == "2" and best["best_val_loss"] == 0.3
    assert best["params"] == {"optimizer.lr": "0.01"}
    assert best["n_jobs"] == 4 and best["n_finished"] == 3

    crashed_only = tmp_path / "crashed"
    _job(crashed_only, "0", ["optimizer.lr=1.0"])
    write_sweep_summary(crashed_only)
    assert (crashed_only / "sweep_summary.csv").exists()
    assert not (crashed_only / "sweep_best.json").exists()
