"""The tutorial notebook runs top to bottom (on CPU, in a temporary folder)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

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
        assert (runs / run / "evaluation" / "report.html").is_file()
        assert (runs / run / "evaluation" / "metrics.csv").is_file()
