"""The README's links lead somewhere: every relative link names a file of the repository, and
every ``#anchor`` a heading of its target (GitHub's heading ids). The documentation site's own
links are checked by ``mkdocs build --strict`` (``.ci/run``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _heading_ids(path: Path) -> set[str]:
    """GitHub's ids of a Markdown file's headings: lower case, punctuation but ``-`` dropped."""
    ids, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            title = line.lstrip("#").strip().lower()
            ids.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return ids


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists() or (anchor and anchor not in _heading_ids(dest)):
            broken.append(target)
    return broken


@pytest.mark.parametrize("readme", ["README.md", "benchmarks/README.md"])
def test_readme_links_resolve(readme):
    assert broken_links(ROOT / readme) == []


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "guide.md").write_text("# Guide\n\n## Your data: one CSV\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](guide.md#your-data-one-csv) [gone](missing.md) [bad](guide.md#no-such) [x](#guide)"
    )
    assert broken_links(page) == ["missing.md", "guide.md#no-such", "#guide"]
