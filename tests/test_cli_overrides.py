"""Option typos on the command line: exit status 2 and the closest key, before any data is read."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from nervus_lightning.cli.overrides import check_overrides
from nervus_lightning.data.schema import NervusInputError


def run(args, cwd):
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


# One typo per entry point, each of a key the command's own config has.
ENTRY_POINT_TYPOS = [
    ("nervus_lightning", ["trainer.max_epoch=1"], "trainer.max_epochs"),
    ("nervus_lightning.predict", ["ckpt=a.ckpt", "data.csvv=b.csv"], "data.csv"),
    (
        "nervus_lightning.evaluate",
        ["predictions=p.csv", "evaluation.thresold=0.5"],
        "evaluation.threshold",
    ),
    ("nervus_lightning.explain", ["ckpt=a.ckpt", "explain.ig_step=4"], "explain.ig_steps"),
    ("nervus_lightning.export", ["ckpt=a.ckpt", "opsett=17"], "opset"),
    ("nervus_lightning.preview", ["data.image_sise=16"], "data.image_size"),
]


@pytest.mark.parametrize(("module", "args", "meant"), ENTRY_POINT_TYPOS)
def test_typo_exits_2_with_the_closest_key(module, args, meant, tmp_path):
    out = run(["-m", module, *args, "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.startswith("nervus_lightning: error: unknown option")
    assert f"Did you mean '{meant}'?" in out.stderr
    # Hydra's own answer, "To append to your config use +key=value", sends the user the wrong way.
    assert "+" not in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


def test_a_required_value_left_out_exits_2_naming_it(tmp_path):
    """``predict`` without ``data.csv`` ran until OmegaConf raised MissingMandatoryValue: exit
    status 1 and a traceback through Hydra."""
    out = run(["-m", "nervus_lightning.predict", "ckpt=a.ckpt", "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip() == (
        "nervus_lightning: error: python -m nervus_lightning.predict needs data.csv: "
        "add data.csv=... to the command line."
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("config_name", "args", "needs"),
    [
        ("predict", [], "needs ckpt, data.csv: add ckpt=... data.csv=..."),
        ("export", [], "nervus_lightning.export needs ckpt:"),
        ("evaluate", [], "needs predictions:"),
        ("train", ["data=csv"], "python -m nervus_lightning needs data.csv:"),
    ],
)
def test_required_values(config_name, args, needs):
    with pytest.raises(NervusInputError, match=re.escape(needs)):
        check_overrides(config_name, args)
    check_overrides(config_name, [*args, "--cfg", "job"])  # printing the config needs none
    check_overrides("predict", ["-m", "ckpt=a", "data.csv=a.csv,b.csv"])  # a sweep gives it


def test_misspelt_group_choice_exits_2(tmp_path):
    out = run(["-m", "nervus_lightning", "optimizer=adamm", "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "optimizer='adamm' is not one of ['adam', 'adamw', 'radam', 'sgd']" in out.stderr
    assert "Did you mean 'adam'?" in out.stderr and "search path" not in out.stderr


def test_correct_overrides_still_reach_hydra(tmp_path):
    out = run(
        ["-m", "nervus_lightning", "--cfg", "job", "task=regression", "trainer.max_epochs=3"],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "max_epochs: 3" in out.stdout and "name: regression" in out.stdout


# For each config group of training, one misspelt key (after the words before it) and the key
# meant.
GROUP_TYPOS = [
    ("trainer.max_epoch=1", "trainer.max_epochs"),
    ("optimizer.lrr=1e-3", "optimizer.lr"),
    ("scheduler=cosine scheduler.eta_mn=0", "scheduler.eta_min"),
    ("task.label_smothing=0.1", "task.label_smoothing"),
    ("model/extractor=resnet18 model.extractor.pretraind=false", "model.extractor.pretrained"),
    ("model.ensembel=2", "model.ensemble"),
    ("data.image_sise=32", "data.image_size"),
    ("evaluation.threshhold=youden", "evaluation.threshold"),
    ("explain.ig_step=4", "explain.ig_steps"),
    ("sed=1", "seed"),
    ("trainr.max_epochs=1", "trainer.max_epochs"),
    # The right name in the wrong group, or with the group left out.
    ("optimizer.max_epochs=1", "trainer.max_epochs"),
    ("lr=1e-3", "optimizer.lr"),
]


@pytest.mark.parametrize(("override", "meant"), GROUP_TYPOS)
def test_each_group_names_the_closest_key(override, meant):
    with pytest.raises(NervusInputError, match=rf"unknown option .* Did you mean '{meant}'\?"):
        check_overrides("train", override.split())


@pytest.mark.parametrize(
    ("config", "args", "meant"),
    [
        ("predict", ["ckpt=a", "evaluation.positive_clas=1"], "evaluation.positive_class"),
        ("predict", ["ckpt=a", "devise=cpu"], "device"),
        ("evaluate", ["predictions=p.csv", "evaluation.n_bootstrapp=10"], "evaluation.n_bootstrap"),
        ("explain", ["ckpt=a", "data.batchsize=4"], "data.batch_size"),
        ("export", ["ckpt=a", "fromat=onnx"], "format"),
        ("preview", ["splitt=val"], "split"),
    ],
)
def test_each_command_checks_its_own_config(config, args, meant):
    with pytest.raises(NervusInputError, match=rf"Did you mean '{meant}'\?"):
        check_overrides(config, args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model/extractor=resnt18"], "model/extractor='resnt18' is not one of .* 'resnet18'"),
        (["model/extractr=resnet18"], "unknown config group model/extractr .* 'model/extractor'"),
        (["model.extractor=resnet18"], "chosen with a slash: model/extractor=resnet18"),
        (["-m", "optimizer=adam,sgdd"], "optimizer='sgdd' is not one of .* 'sgd'"),
        (["-m", "optimizer.lrr=1e-3,1e-4"], "unknown option optimizer.lrr .* 'optimizer.lr'"),
        (["--cfg", "job", "optimizer.lrr=1e-3"], "unknown option optimizer.lrr"),
        (["-cn", "predict", "ckpt=a", "data.csvv=b"], "Did you mean 'data.csv'"),
    ],
)
def test_group_choices_sweeps_and_flags(args, message):
    with pytest.raises(NervusInputError, match=message):
        check_overrides("train", args)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["data.csv=trial.csv", "task=survival", "model/extractor=none", "task.model=deephit"],
        ["task=regression", "task.loss=mae", "optimizer=sgd", "scheduler=plateau"],
        ["-m", "optimizer.lr=1e-3,1e-4", "model/extractor=resnet18,densenet121"],
        ["-m", "optimizer.lr=interval(1e-4,1e-2)", "model/mixer=glob(*)"],
        ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=5"],
        ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"],
        ["data=whas500"],
        ["--cfg", "job", "trainer=ddp", "trainer.devices=2"],
        ["+trainer.gradient_clip_val=1.0", "~ckpt_path", "evaluation.positive_class={label_y:b}"],
        ["data.window=[-600,1500]", "data.labels=[label_a]", "data.csv=dicom.csv"],
        # Not a key typo: Hydra's own message (a sweep without -m) stays Hydra's.
        ["trainer.max_epochs=1,2"],
        ["--help"],
        ["--version"],
    ],
)
def test_valid_command_lines_pass(args):
    check_overrides("train", args)


def test_plugin_folder_groups_are_not_typos(tmp_path):
    (tmp_path / "my_conf" / "model" / "mixer").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "mixer" / "my_mixer.yaml").write_text(
        "_target_: my_pkg.MyMixer\nname: my_mixer\nwidth: 8\n"
    )
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"
    check_overrides("train", ["model/mixer=my_mixer", "model.mixer.width=16", searchpath])
    with pytest.raises(NervusInputError, match="Did you mean 'model.mixer.width'"):
        check_overrides("train", ["model/mixer=my_mixer", "model.mixer.widht=16", searchpath])
