"""The tutorial notebook runs top to bottom (on CPU, in a temporary folder)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import skip_without_disk
from sklearn.metrics import roc_auc_score
from sksurv.metrics import concordance_index_censored

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "tutorial.ipynb"
KERNEL = "nervus-lightning-test"


def _kernelspec_for_this_python(root: Path) -> Path:
    """A kernelspec that starts this very interpreter, so a fresh venv (``pip install -e
    .[test]``, no ``ipykernel install``) works and no other Python on PATH is picked up."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "nervus_lightning test",
                "language": "python",
            }
        )
    )
    return root


def test_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


@pytest.mark.slow
def test_tutorial_runs(tmp_path, monkeypatch):
    skip_without_disk(tmp_path, 800)
    monkeypatch.setenv("JUPYTER_PATH", str(_kernelspec_for_this_python(tmp_path / "jupyter")))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name=KERNEL, resources={"metadata": {"path": str(work)}}
    )
    client.execute()
    runs = work / "tutorial_runs"
    for run in ("classifier", "external", "survival"):
        assert "</html>" in (runs / run / "evaluation" / "report.html").read_text()

    # What the reader is shown is what the run wrote.
    summary = json.loads((runs / "classifier" / "summary.json").read_text())
    printed = "".join(
        output.get("text", "") for cell in nb.cells for output in cell.get("outputs", [])
    )
    shown = re.search(r"best validation loss: (\S+)", printed)
    assert shown and float(shown.group(1)) == pytest.approx(summary["best_val_loss"], abs=5e-5)

    # Every case of the study and of the external CSV is predicted once, in CSV order, with
    # probabilities; the external AUROC (positive class "odd") agrees with scikit-learn.
    for run, csv in (("classifier", "my_study.csv"), ("external", "my_external.csv")):
        pred = pd.read_csv(runs / run / "predictions.csv")
        assert list(pred.uniqID) == list(pd.read_csv(runs / csv).uniqID)
        probs = pred[["prob_label_parity_even", "prob_label_parity_odd"]].to_numpy()
        assert ((probs >= 0) & (probs <= 1)).all()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    table = pd.read_csv(runs / "external" / "evaluation" / "metrics.csv")
    auroc = table[(table.metric == "auroc") & (table.group == "all")].value.item()
    assert auroc == pytest.approx(
        roc_auc_score(pred.label_parity == "odd", pred.prob_label_parity_odd)
    )

    # The survival run's Harrell's C on the test split agrees with scikit-survival.
    pred = pd.read_csv(runs / "survival" / "predictions.csv")
    test = pred[pred.split == "test"]
    table = pd.read_csv(runs / "survival" / "evaluation" / "metrics.csv")
    rows = table[(table.metric == "c_index") & (table.group == "all") & (table.split == "test")]
    expected = concordance_index_censored(
        test.label_death == 1, test.period_death, test.risk_label_death
    )[0]
    assert rows.value.item() == pytest.approx(expected)
