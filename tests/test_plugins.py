"""A user's own model part plugs in from a YAML in their own config folder, through the real
command line, for training and for predict from the checkpoint alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from conftest import make_dataset

from nervus_lightning.data.schema import NervusInputError
from nervus_lightning.module import NervusModule

PLUGIN = '''
import torch
from torch import nn


class GatedSumMixer(nn.Module):
    """Project every feature vector to `width`, then a learned gate per modality."""

    def __init__(self, in_features, width=8):
        super().__init__()
        self.projections = nn.ModuleList(nn.Linear(f, width) for f in in_features)
        self.gates = nn.Parameter(torch.zeros(len(in_features)))
        self.out_features = width

    def forward(self, features):
        weights = torch.softmax(self.gates, dim=0)
        return sum(w * p(f) for w, p, f in zip(weights, self.projections, features))
'''


def _cli(module: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_user_mixer_from_own_config_folder_trains_and_predicts(tmp_path):
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "my_mixers.py").write_text(PLUGIN)
    conf = tmp_path / "my_conf" / "model" / "mixer"
    conf.mkdir(parents=True)
    (conf / "gated_sum.yaml").write_text(
        textwrap.dedent(
            """\
            _target_: my_mixers.GatedSumMixer
            width: 6
            """
        )
    )
    csv = make_dataset(tmp_path / "data", n=40, size=16)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")]),
    }
    run = tmp_path / "run"
    trained = _cli(
        "nervus_lightning",
        [
            f"data.csv={csv}",
            "model/mixer=gated_sum",
            "model/extractor=small_cnn",
            f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "data.image_size=16",
            "data.batch_size=16",
            "data.num_workers=0",
            "evaluation.n_bootstrap=0",
            f"hydra.run.dir={run}",
        ],
        env,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    sys.path.insert(0, str(plugin_dir))
    try:
        module = NervusModule.load_from_checkpoint(ckpt, map_location="cpu")
    finally:
        sys.path.remove(str(plugin_dir))
    assert type(module.net.mixer).__name__ == "GatedSumMixer"
    assert module.net.mixer.out_features == 6

    out = tmp_path / "predicted"
    predicted = _cli(
        "nervus_lightning.predict",
        [f"ckpt={ckpt}", f"data.csv={csv}", "evaluation.n_bootstrap=0", f"hydra.run.dir={out}"],
        env,
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    cols = ["prob_label_cls_no", "prob_label_cls_yes"]
    np.testing.assert_allclose(
        pd.read_csv(out / "predictions.csv")[cols],
        pd.read_csv(run / "predictions.csv")[cols],
        atol=1e-6,
    )


def test_unimportable_target_is_a_user_error(dataset):
    csv = dataset(n=24)
    from nervus_lightning.data.datamodule import NervusDataModule

    schema = NervusDataModule(csv, image_size=16).schema
    with pytest.raises(NervusInputError, match=r"model\.mixer\._target_='nowhere\.Mixer'"):
        NervusModule(
            schema,
            extractor="resnet18",
            mixer={"_target_": "nowhere.Mixer"},
            image_size=16,
            evaluation=None,
        )
    with pytest.raises(NervusInputError, match=r"model\.head\.widht"):
        NervusModule(schema, extractor="resnet18", head={"name": "mlp", "widht": 3}, image_size=16)
