"""MkDocs hook: the docstrings write Sphinx roles (:func:`name`, :math:`x`) and ``.. math::``
directives, which Markdown keeps as text; the API pages show the code span or block alone."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:py:)?(?:attr|class|data|exc|func|math|meth|mod|obj):<code>~?")
# A ``.. math::`` directive: its indented formula already shows as a code block.
_MATH_DIRECTIVE = re.compile(r"<p>\.\. math::</p>\s*")


def on_page_content(html: str, **kwargs: object) -> str:
    return _MATH_DIRECTIVE.sub("", _ROLE.sub("<code>", html))
