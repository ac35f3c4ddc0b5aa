"""Clusters: the submitit launchers (local run end to end; SLURM composed and rendered to its
sbatch script, never submitted: no SLURM here) and Lightning's SLURM plugin."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import lightning as L
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from omegaconf import OmegaConf
from test_sweep_summary import write_tiny_csv

from nervus_lightning.cluster import resume_checkpoint, trainer_options
from nervus_lightning.config import config_dir
from nervus_lightning.data.schema import NervusInputError

submitit = pytest.importorskip("submitit")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

SLURM_2X4 = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=gpu",
    "trainer=slurm",
    "trainer.num_nodes=2",
    "trainer.devices=4",
]


@pytest.fixture
def slurm_task(monkeypatch):
    """The environment of rank 0 of a 1-task SLURM batch job (what Lightning detects)."""
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)
    env = {
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_NAME": "nervus",
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "node1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def no_slurm(monkeypatch):
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)


@pytest.mark.slow  # two training processes at once: about 2 minutes on 2 busy cores
def test_submitit_local_two_jobs(tmp_path):
    """A 2-job multirun through hydra/launcher=submitit_local: each job is a submitit process."""
    csv = write_tiny_csv(tmp_path / "tiny.csv")
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nervus_lightning",
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10",
            f"data.csv={csv}",
            "model/extractor=none",
            "optimizer.lr=1e-3,1e-2",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "evaluation.n_bootstrap=0",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(sweep / "sweep_summary.csv", dtype={"job": str})
    assert sorted(table["job"]) == ["0", "1"]
    assert (table["status"] == "ok").all()
    assert sorted(table["optimizer.lr"]) == [0.001, 0.01]
    for job in ("0", "1"):
        assert (sweep / job / "predictions.csv").is_file()
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
    # The jobs ran as submitit jobs (their logs and result pickles are there), not in-process.
    logs = list((sweep / ".submitit").rglob("*_log.out"))
    results = list((sweep / ".submitit").rglob("*_result.pkl"))
    assert len(logs) == 2 and len(results) == 2


def _slurm_config(tmp_path, overrides=SLURM_2X4):
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose(
            "train",
            overrides=[*overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
            return_hydra_config=True,
        )


def test_slurm_preset_renders_the_2x4_job(tmp_path, monkeypatch):
    """The documented 2-node x 4-GPU command composes, and submitit turns it into the sbatch
    script a cluster would get (captured instead of calling sbatch)."""
    cfg = _slurm_config(tmp_path)
    launcher_cfg = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher_cfg["nodes"] == 2
    assert launcher_cfg["tasks_per_node"] == launcher_cfg["gpus_per_node"] == 4
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.devices == 4
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "gpu"

    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    scripts = []

    class Captured(Exception):
        pass

    def capture(self, command):
        scripts.append(self._make_submission_file_text(command, "uid"))
        raise Captured

    # No srun or sbatch here: submitit's check for srun passes, and sbatch is never called.
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    monkeypatch.setattr(submitit.SlurmExecutor, "_submit_command", capture)
    with pytest.raises(Captured):
        launcher.launch([["optimizer.lr=1e-3"]], initial_job_idx=0)
    script = scripts[0]
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=1440",
        # Lightning's requeue signal, 120 s before the kill (not submitit's USR2).
        "#SBATCH --signal=USR1@120",
    ):
        assert line in script, script
    assert "--signal=USR2" not in script
    assert "srun" in script


def test_slurm_plugin_switched_on_under_slurm(tmp_path, slurm_task):
    cfg = _slurm_config(tmp_path)
    options = trainer_options(OmegaConf.to_container(cfg.trainer, resolve=True))
    assert "slurm" not in options
    (environment,) = options["plugins"]
    assert isinstance(environment, SLURMEnvironment)
    assert environment.auto_requeue is True
    assert environment.requeue_signal == signal.SIGUSR1

    # Lightning takes it (on CPU here) and sets its requeue handler on SIGUSR1.
    cpu = {**options, "accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto"}
    cpu.pop("sync_batchnorm")
    cpu["precision"] = "32-true"
    trainer = L.Trainer(**cpu, default_root_dir=str(tmp_path), logger=False)
    assert trainer._accelerator_connector.cluster_environment is environment
    before = signal.getsignal(signal.SIGUSR1)
    trainer._signal_connector.register_signal_handlers()
    try:
        handlers = signal.getsignal(signal.SIGUSR1).signal_handlers
        assert trainer._signal_connector._slurm_sigusr_handler_fn in handlers
    finally:
        trainer._signal_connector.teardown()
        signal.signal(signal.SIGUSR1, before)


def test_slurm_plugin_options(slurm_task):
    options = trainer_options(
        {"max_epochs": 2, "slurm": {"auto_requeue": False, "requeue_signal": "USR2"}}
    )
    (environment,) = options["plugins"]
    assert environment.auto_requeue is False and environment.requeue_signal == signal.SIGUSR2
    with pytest.raises(NervusInputError, match="requeue_signal=SIGNOPE"):
        trainer_options({"slurm": {"requeue_signal": "SIGNOPE"}})
    with pytest.raises(NervusInputError, match="unknown keys"):
        trainer_options({"slurm": {"requeue": True}})


def test_no_plugin_outside_slurm(no_slurm):
    assert trainer_options({"max_epochs": 2, "slurm": {"auto_requeue": True}}) == {"max_epochs": 2}
    assert trainer_options({"max_epochs": 2}) == {"max_epochs": 2}


def test_resume_checkpoint(tmp_path, slurm_task, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")
    # A first start never resumes on its own; an explicit ckpt_path always wins.
    assert resume_checkpoint(None, run) is None
    assert resume_checkpoint("given.ckpt", run) == "given.ckpt"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert resume_checkpoint(None, run) == str(last)
    hpc = run / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"x")
    os.utime(last, ns=(1_000_000_000, 1_000_000_000))
    assert resume_checkpoint(None, run) == str(hpc)  # saved on the signal, after last.ckpt
    os.utime(hpc, ns=(1, 1))
    assert resume_checkpoint(None, run) == str(last)
    assert resume_checkpoint(None, tmp_path / "empty") is None


def test_resume_checkpoint_outside_slurm(tmp_path, no_slurm, monkeypatch):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert resume_checkpoint(None, tmp_path) is None


def test_requeue_signal_saves_and_resumes(tmp_path, slurm_task, monkeypatch):
    """SIGUSR1 in the middle of an epoch: Lightning saves hpc_ckpt_1.ckpt in the run folder and
    asks scontrol to requeue the job; the requeued job resumes from it at the same step."""
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.trainer.connectors import signal_connector

    requeues = []
    # Never call a real scontrol (this could be a SLURM login node).
    monkeypatch.setattr(signal_connector, "call", lambda cmd, **kw: requeues.append(cmd) or 0)

    class SignalAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 5 and not requeues:
                os.kill(os.getpid(), signal.SIGUSR1)
                trainer.should_stop = True  # SLURM would kill the job here

    def fit(ckpt_path, callbacks, max_epochs):
        options = trainer_options({"accelerator": "cpu", "devices": 1, "max_epochs": max_epochs})
        trainer = L.Trainer(
            **options,
            default_root_dir=str(tmp_path),
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_train_batches=8,
            limit_val_batches=0,
        )
        trainer.fit(BoringModel(), ckpt_path=ckpt_path)
        return trainer

    before = signal.getsignal(signal.SIGUSR1)
    try:
        first = fit(None, [SignalAt()], max_epochs=2)
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert requeues == [["scontrol", "requeue", "4242"]]
    assert (tmp_path / "hpc_ckpt_1.ckpt").is_file()
    assert first.global_step == 5

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    path = resume_checkpoint(None, tmp_path)
    assert path == str(tmp_path / "hpc_ckpt_1.ckpt")
    starts = []

    class StartStep(L.Callback):
        def on_train_start(self, trainer, *args):
            starts.append(trainer.global_step)

    try:
        resumed = fit(path, [StartStep()], max_epochs=2)
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert starts == [5]  # from the signal's step, not from scratch
    assert resumed.global_step == 16  # 2 epochs of 8 batches in all
