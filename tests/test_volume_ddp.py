"""3D volumes through several processes (``trainer=ddp`` on CPU with gloo), issue 21: the volume
path (reading, cache, 3D extractor) needs nothing of its own under DDP; every case counted once
and the same predictions as one process gives for the kept checkpoint."""

from __future__ import annotations

import pytest

pytest.importorskip("nibabel")

from test_ddp_cli import DDP, assert_every_case_once, assert_same_as_one_process, train_cli  # noqa: E402
from test_volume_training import SIZE, make_volume_csv  # noqa: E402

VOLUME_DDP = [o for o in DDP if not o.startswith(("model/extractor", "data.image_size"))] + [
    f"data.volume_size=[{SIZE},{SIZE},{SIZE}]",
    "model/extractor=small_cnn_3d",
    "model.extractor.widths=[8,16]",
]


@pytest.mark.slow
def test_ddp_on_volumes_counts_every_case_once(tmp_path, monkeypatch):
    # 46 cases, 23/11/12: odd splits make the distributed sampler pad with a repeated case.
    csv = make_volume_csv(tmp_path, n=46)
    run_dir = tmp_path / "run"
    monkeypatch.setattr("test_ddp_cli.DDP", VOLUME_DDP)
    out = train_cli(csv, run_dir)
    assert "sync_batchnorm is off" in out.stdout + out.stderr  # two processes ran
    predictions = assert_every_case_once(run_dir, csv)
    assert (predictions["split"] == "val").sum() == 11
    assert_same_as_one_process(run_dir, csv, tmp_path)
