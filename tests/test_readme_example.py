"""The README's "Use from Python" example runs exactly as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from conftest import skip_without_disk

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_example() -> str:
    text = README.read_text()
    section = text.split("## Use from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_library_example_runs(tmp_path, monkeypatch, capsys):
    skip_without_disk(tmp_path, 800)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_python_example(), "README.md", "exec"), namespace)
    assert "['even', 'odd']" in capsys.readouterr().out
    # The restored checkpoint is the trained model: same probabilities on the test split.
    model, restored = namespace["model"], namespace["restored"]
    loader = namespace["datamodule"].eval_dataloader("test")
    (trained,) = model.infer(loader, "cpu")
    (again,) = restored.infer(loader, "cpu")
    assert trained.shape == (len(namespace["datamodule"].split_frame("test")), 2)
    np.testing.assert_allclose(trained.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(again, trained, atol=1e-6)
