"""Code shape of src/: the ten longest functions and the files over 500 lines.

Reads every ``.py`` file under ``src/`` with :mod:`ast`; a function's length is
``end_lineno - lineno + 1`` (decorators excluded, nested functions counted inside their parent
and also on their own). Run from the repository root::

    python benchmarks/code_shape.py [--top N] [--max-lines N]
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def function_lengths(path: Path) -> list[tuple[str, int]]:
    """(qualified name, line count) of every function and method in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                found.append((name, child.end_lineno - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10, help="how many functions to list")
    parser.add_argument("--max-lines", type=int, default=500, help="list files longer than this")
    args = parser.parse_args()

    files = sorted(SRC.rglob("*.py"))
    functions = [
        (length, name, path.relative_to(SRC))
        for path in files
        for name, length in function_lengths(path)
    ]
    functions.sort(key=lambda row: (-row[0], str(row[2]), row[1]))
    print(f"{args.top} longest functions in src/ (lines):")
    for length, name, rel in functions[: args.top]:
        print(f"  {length:4d}  {name}  ({rel})")

    long_files = sorted(
        (
            (len(path.read_text(encoding="utf-8").splitlines()), path.relative_to(SRC))
            for path in files
        ),
        key=lambda row: (-row[0], str(row[1])),
    )
    long_files = [row for row in long_files if row[0] > args.max_lines]
    print(f"\nfiles in src/ over {args.max_lines} lines:")
    for count, rel in long_files:
        print(f"  {count:4d}  {rel}")
    if not long_files:
        print("  (none)")


if __name__ == "__main__":
    main()
