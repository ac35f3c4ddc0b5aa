"""docs/design.md names every module of the package, and names none that does not exist: the
map a newcomer reads stays the code's."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "src" / "nervus_lightning"
SHIMS = {"__main__.py", "train.py", "predict.py", "evaluate.py", "preview.py", "explain.py"}


def named_files() -> set[str]:
    text = (ROOT / "docs" / "design.md").read_text()
    names = set(re.findall(r"`([a-z_/]+\.py)`", text))
    return {name for name in names if not name.startswith("tests/")}


def test_every_module_is_on_the_design_page():
    modules = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py"
    }
    missing = sorted(modules - named_files())
    assert not missing, f"add these modules to docs/design.md: {missing}"


def test_every_file_the_design_page_names_exists():
    absent = sorted(name for name in named_files() if not (PACKAGE / name).is_file())
    assert not absent, f"docs/design.md names files that do not exist: {absent}"
    assert SHIMS <= named_files()
