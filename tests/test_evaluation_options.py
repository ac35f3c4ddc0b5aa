"""The ``evaluation:`` settings are declared once (a dataclass per task kind plus the shared
ones), checked once with the command line's messages, and carried as objects to the model and the
report; the task base class declares ``gather``, the DDP hook of losses that compare cases."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml

from nervus_lightning.data.schema import DataSchema, LabelSpec
from nervus_lightning.errors import NervusInputError
from nervus_lightning.evaluation.options import EvaluationOptions
from nervus_lightning.module import NervusModule
from nervus_lightning.options import keyword_names
from nervus_lightning.tasks import TASKS, ClassificationTask, RegressionTask, SurvivalTask
from nervus_lightning.tasks.base import Task, TaskOptions, evaluation_options
from nervus_lightning.tasks.classification import ClassificationOptions
from nervus_lightning.tasks.survival import SurvivalOptions
from nervus_lightning.workflows.evaluate import check_evaluation_options, evaluate_run

CONFIG = Path(__file__).resolve().parents[1] / "conf" / "evaluation" / "default.yaml"

# (options class, key, bad value, the message the command line has always printed)
BAD_VALUES = [
    (EvaluationOptions, "n_bootstrap", -1, "evaluation.n_bootstrap=-1 must be an integer >= 0."),
    (EvaluationOptions, "ci", 1.0, "evaluation.ci=1.0 must be a number > 0 and < 1."),
    (EvaluationOptions, "seed", 1.5, "evaluation.seed=1.5 must be an integer >= 0."),
    (
        EvaluationOptions,
        "max_rows_bootstrap",
        1,
        "evaluation.max_rows_bootstrap=1 must be an integer >= 2.",
    ),
    (
        EvaluationOptions,
        "train_metrics",
        "no",
        "evaluation.train_metrics='no' must be true or false.",
    ),
    (EvaluationOptions, "train_figures", 1, "evaluation.train_figures=1 must be true or false."),
    (
        EvaluationOptions,
        "proportion_ci",
        "wald",
        "evaluation.proportion_ci='wald' is not one of ['wilson', 'exact'].",
    ),
    (
        ClassificationOptions,
        "threshold",
        "yoden",
        "evaluation.threshold='yoden' is not one of ['youden', 'sensitivity']. "
        "Did you mean 'youden'?",
    ),
    (
        ClassificationOptions,
        "target_sensitivity",
        0,
        "evaluation.target_sensitivity=0 must be a number > 0 and <= 1.",
    ),
    (
        ClassificationOptions,
        "positive_class",
        "malignant",
        "evaluation.positive_class='malignant' must map label names to classes, e.g. "
        "evaluation.positive_class={label_cancer:malignant}.",
    ),
    (SurvivalOptions, "max_rows_exact", 0, "evaluation.max_rows_exact=0 must be an integer >= 2."),
]


@pytest.mark.parametrize("options_class, key, value, message", BAD_VALUES)
def test_each_options_dataclass_rejects_a_bad_value_with_the_cli_message(
    options_class, key, value, message
) -> None:
    with pytest.raises(NervusInputError) as built:
        options_class(**{key: value})
    assert str(built.value) == message
    # The mapping of an evaluation: block goes through the same check, with the same words.
    with pytest.raises(NervusInputError) as checked:
        check_evaluation_options({key: value})
    assert str(checked.value) == message


def test_an_unknown_key_names_the_closest_one_and_every_option() -> None:
    with pytest.raises(NervusInputError) as err:
        check_evaluation_options({"thresold": "youden"})
    allowed = sorted(keyword_names(evaluate_run, skip=("predictions_path", "out_dir")))
    assert str(err.value) == (
        "unknown option evaluation.thresold. Did you mean 'evaluation.threshold'? "
        f"Options of evaluation: {allowed}."
    )


def test_the_options_declared_are_the_config_block_and_evaluate_runs_keywords() -> None:
    declared = [f.name for f in fields(EvaluationOptions) if f.name != "tasks"]
    for cls in TASKS.values():
        declared += [f.name for f in fields(cls.options_class)]
    assert len(declared) == len(set(declared)), "a setting declared by two kinds"
    keywords = keyword_names(evaluate_run, skip=("predictions_path", "out_dir"))
    assert sorted(declared) == sorted(keywords)
    assert sorted(declared) == sorted(yaml.safe_load(CONFIG.read_text(encoding="utf-8")))
    # The config's defaults are the dataclasses' defaults (null: the stored contract).
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    defaults = EvaluationOptions.from_mapping({}, {k: c.options_class for k, c in TASKS.items()})
    flat = defaults.to_dict()
    for key, value in config.items():
        if key in ("threshold", "target_sensitivity"):  # the config spells the contract's default
            assert flat[key] is None
        else:
            assert flat[key] == value, key


def test_values_are_checked_and_normalised_once_into_objects() -> None:
    options = evaluation_options(
        {"n_bootstrap": 200.0, "ci": 0.9, "threshold": "sensitivity", "max_rows_exact": 500}
    )
    assert options.n_bootstrap == 200 and isinstance(options.n_bootstrap, int)
    assert options.of("classification") == ClassificationOptions(threshold="sensitivity")
    assert options.of("survival") == SurvivalOptions(max_rows_exact=500)
    assert options.of("regression") == TaskOptions()
    assert evaluation_options(options) is options  # an object is not checked again
    assert ClassificationOptions(positive_class={}).positive_class is None
    assert ClassificationOptions(target_sensitivity=1).target_sensitivity == 1.0


def _binary_schema() -> DataSchema:
    return DataSchema(
        labels=[LabelSpec("label_y", "classification", classes=["benign", "malignant"])],
        input_columns=["input_a"],
        input_mean=[0.0],
        input_std=[1.0],
    )


def test_the_model_checks_its_evaluation_settings_once_and_the_task_reads_its_own() -> None:
    evaluation = {"threshold": "sensitivity", "positive_class": {"label_y": "malignant"}}
    module = NervusModule(_binary_schema(), extractor=None, evaluation=evaluation)
    assert module.task.options == ClassificationOptions(
        threshold="sensitivity", positive_class={"label_y": "malignant"}
    )
    assert module.task.threshold_method == "sensitivity" and module.task.target_sensitivity == 0.9
    assert module.hparams["evaluation"] == evaluation  # stored as given, plain values
    # A setting of another kind is checked too (it used to pass unseen until the report).
    with pytest.raises(NervusInputError, match=r"evaluation\.max_rows_exact=0"):
        NervusModule(
            _binary_schema(), extractor=None, evaluation={**evaluation, "max_rows_exact": 0}
        )


def test_the_model_takes_an_options_object_and_stores_plain_values() -> None:
    options = evaluation_options(
        {"threshold": "sensitivity", "target_sensitivity": 0.8, "positive_class": {"label_y": 1}}
    )
    with pytest.raises(NervusInputError, match="is not a class of 'label_y'"):
        NervusModule(_binary_schema(), extractor=None, evaluation=options)
    options = evaluation_options(
        {"target_sensitivity": 0.8, "positive_class": {"label_y": "benign"}}
    )
    module = NervusModule(_binary_schema(), extractor=None, evaluation=options)
    assert module.task.positive_classes == {"label_y": "benign"}
    assert module.task.target_sensitivity == 0.8
    stored = module.hparams["evaluation"]
    assert stored == options.to_dict() and isinstance(stored, dict)
    assert evaluation_options(stored) == options  # a checkpoint rebuilds the same settings


def test_every_task_declares_gather_none_by_default() -> None:
    assert Task.gather is None
    tasks = [
        ClassificationTask([LabelSpec("label_y", "classification", ["no", "yes"])]),
        RegressionTask([LabelSpec("label_v", "regression", mean=0.0, std=1.0)]),
        SurvivalTask([LabelSpec("label_death", "survival", period="period_death")]),
    ]
    for task in tasks:
        assert task.gather is None, type(task).__name__


def test_gather_is_the_modules_all_gather_only_while_fitting_with_several_processes() -> None:
    module = NervusModule(
        DataSchema(
            labels=[LabelSpec("label_death", "survival", period="period_death")],
            input_columns=["input_a"],
            input_mean=[0.0],
            input_std=[1.0],
        ),
        extractor=None,
    )

    class _Trainer:  # what setup reads of a trainer
        world_size = 2
        datamodule = None

    module._trainer = _Trainer()
    module.setup("validate")
    assert module.task.gather is None
    module.setup("fit")
    assert module.task.gather == module._gather_global_batch
    seen = []
    module.all_gather = lambda t, sync_grads: seen.append(sync_grads) or torch.stack([t, t])
    assert module.task.gather(torch.arange(3.0)).tolist() == [0, 1, 2, 0, 1, 2]
    assert seen == [True]  # with gradients
