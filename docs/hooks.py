"""MkDocs hook: the docstrings write Sphinx roles (:func:`name`, :math:`x`), which Markdown keeps
as text before the code span; the API pages show the code span alone."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:py:)?(?:attr|class|data|exc|func|math|meth|mod|obj):(?=<code>)")


def on_page_content(html: str, **kwargs: object) -> str:
    return _ROLE.sub("", html)
