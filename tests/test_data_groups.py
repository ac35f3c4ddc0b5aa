"""The demo and a user's CSV get their own settings: ``data.csv=PATH`` alone picks ``data=csv``.

Before, ``python -m nervus_lightning data.csv=trial.csv`` kept the demo's data group and read the
user's radiographs at the demo's 32 px; the demo could not have settings of its own (a small
network, its epochs) without giving them to every user CSV too.
"""

from __future__ import annotations

import json

import pytest
from conftest import compose_config, run_command
from omegaconf import OmegaConf

from nervus_lightning.cli.overrides import with_csv_data_group
from nervus_lightning.errors import NervusInputError


def test_a_csv_alone_picks_the_csv_group():
    assert with_csv_data_group(["data.csv=x.csv"]) == ["data=csv", "data.csv=x.csv"]
    # Next to data.csv, so that a flag's value (--cfg job) does not end the overrides.
    args = ["data.csv=x.csv", "--cfg", "job"]
    assert with_csv_data_group(args) == ["data=csv", *args]
    cfg = compose_config(["data.csv=x.csv"])
    assert cfg.data.image_size == 256 and cfg.model.extractor.name == "resnet18"
    assert cfg.trainer.max_epochs == 10 and "widths" not in cfg.model.extractor


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["task=survival"],
        ["data=whas500"],
        ["data=csv", "data.csv=x.csv"],
        ["data=gbsg2", "data.csv=x.csv"],
        ["-m", "data=csv,whas500", "data.csv=x.csv"],
    ],
)
def test_other_command_lines_are_left_alone(args):
    assert with_csv_data_group(args) == args


def test_the_demo_group_with_a_csv_is_refused():
    with pytest.raises(NervusInputError, match=r"data=demo .* leave data= out"):
        with_csv_data_group(["data=demo", "data.csv=x.csv"])


def test_the_demo_has_its_own_network_and_epochs():
    demo = compose_config([])
    assert demo.data.csv is None and demo.data.image_size == 32
    assert demo.model.extractor.name == "small_cnn"
    assert list(demo.model.extractor.widths) == [16, 32, 64]
    assert demo.model.extractor.convs_per_stage == 1 and demo.trainer.max_epochs == 20
    for task in ("regression", "survival"):
        other = compose_config([f"task={task}"])
        assert other.model.extractor == demo.model.extractor
        assert other.trainer.max_epochs == 20
    # The command line still wins: another network on the demo gets no recipe of the small CNN.
    resnet = compose_config(["model/extractor=resnet18"])
    assert resnet.model.extractor.name == "resnet18" and resnet.trainer.max_epochs == 10
    assert compose_config(["trainer.max_epochs=3"]).trainer.max_epochs == 3


@pytest.mark.parametrize("task", ["classification", "regression", "survival"])
def test_tabular_recipes_of_a_csv_match_the_demo_without_workers(task):
    demo = OmegaConf.to_container(compose_config([f"task={task}", "model/extractor=none"]))
    csv = OmegaConf.to_container(
        compose_config(["data.csv=x.csv", f"task={task}", "model/extractor=none"])
    )
    assert csv["data"]["num_workers"] == 0
    for key in ("trainer", "early_stopping", "model"):
        assert csv[key] == demo[key]
    assert csv["data"]["batch_size"] == demo["data"]["batch_size"]


def _run(args, cwd):
    return run_command("nervus_lightning", args, cwd)


def test_the_command_line_applies_the_rule(tmp_path):
    out = _run(["data.csv=x.csv", "--cfg", "job"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    data = OmegaConf.create(out.stdout).data
    assert data.image_size == 256 and data.csv == "x.csv"
    out = _run(["data=demo", "data.csv=x.csv"], tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "data=demo is the embedded demo data" in out.stderr


def test_the_readme_demo_command_as_written(tmp_path):
    """`python -m nervus_lightning` with nothing else: the full run to the report, as a newcomer
    runs it (about 22 s; benchmarks/demo_time.py measures it)."""
    out = _run([], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    assert (run_dir / "evaluation" / "report.html").stat().st_size > 10_000
    summary = json.loads((run_dir / "summary.json").read_text())
    text = json.dumps(summary)
    assert "small_cnn" in (run_dir / "evaluation" / "report.html").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for label in ("label_parity", "label_size"):
        assert metrics["test"][label]["auroc"] > 0.97, text[:2000]
