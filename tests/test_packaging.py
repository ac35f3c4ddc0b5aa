"""The configs are found whether the package is installed from a wheel or editable."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from nervus_lightning.config import config_dir

ROOT = Path(__file__).resolve().parents[1]


def test_source_checkout_uses_repository_conf():
    assert Path(config_dir()) == ROOT / "conf"


def test_wheel_ships_conf_and_hydra_finds_it(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            "-q",
        ],
        check=True,
    )
    wheel = next((tmp_path / "dist").glob("nervus_lightning-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "nervus_lightning/conf/train.yaml" in names
    assert "nervus_lightning/conf/predict.yaml" in names
    assert "nervus_lightning/conf/model/extractor/resnet18.yaml" in names
    assert "nervus_lightning/evaluation/templates/report.html.j2" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # Import the package from the unpacked wheel only (as an installed wheel would be), from a
    # directory that has no conf/ of its own, and compose the real config with Hydra.
    code = (
        "import nervus_lightning.config as c, hydra\n"
        "from hydra import compose, initialize_config_dir\n"
        "d = c.config_dir()\n"
        f"assert d.startswith({str(site)!r}), d\n"
        "with initialize_config_dir(config_dir=d, version_base='1.3'):\n"
        "    cfg = compose('train', overrides=['task=regression'])\n"
        "print(cfg.task.name, cfg.model.extractor.name)\n"
        "from nervus_lightning.evaluation.report import _TEMPLATES\n"
        "assert _TEMPLATES.get_template('report.html.j2').filename.startswith("
        f"{str(site)!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["regression", "small_cnn"]  # the demo's (conf/data/demo.yaml)
