"""The package's layering: no import cycle, also not through imports inside functions.

The graph is built from the source with :mod:`ast` (nothing is imported): every ``import`` and
``from ... import`` of a ``nervus_lightning`` module, at module level or inside a function,
becomes an edge; relative imports are resolved, and ``from nervus_lightning.x import y`` where
``y`` is a submodule is an edge to ``x.y``. Not counted: a parent package's ``__init__`` that
Python runs on the way (no dependency the importing module chose), and the body of an
``if __name__ == "__main__":`` block (it runs only when the file is the program, as a module
object of its own, never when the module is imported).

Run as a script to print the figures the layering is measured by: the cycles, the imports
inside functions, the ten longest functions and the files over 500 lines::

    python tests/test_import_graph.py
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

PACKAGE = "nervus_lightning"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE


@dataclass(frozen=True)
class Import:
    """One import of a package module: where it stands and whether it is inside a function."""

    source: str
    target: str
    line: int
    in_function: bool


def module_files(root: Path = SOURCE) -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of the package under ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def _imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def known(name: str) -> str | None:
        """The module ``name`` names, or its nearest package module that exists."""
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_main_guard(child):
                continue
            inside = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names if a.name.split(".")[0] == PACKAGE]
            elif isinstance(child, ast.ImportFrom):
                base = (
                    _resolve_relative(module, is_package, child.level, child.module)
                    if child.level
                    else child.module or ""
                )
                if base.split(".")[0] == PACKAGE:
                    for alias in child.names:
                        sub = f"{base}.{alias.name}"
                        targets.append(sub if sub in modules else base)
            for target in targets:
                resolved = known(target)
                if resolved and resolved != module:
                    found.append(Import(module, resolved, child.lineno, inside))
            visit(child, inside)

    visit(tree, False)
    return list(dict.fromkeys(found))  # ``from x import a, b`` of one module is one edge


def _is_main_guard(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
        and any(
            isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators
        )
    )


def package_imports(root: Path = SOURCE) -> list[Import]:
    """Every import of a package module by a package module, in file order."""
    modules = module_files(root)
    return [imp for name, path in modules.items() for imp in _imports_of(name, path, modules)]


def import_graph(imports: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
        graph.setdefault(imp.target, set())
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                connect(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(components)


def simple_cycles(graph: dict[str, set[str]], limit: int = 10_000) -> list[list[str]]:
    """Elementary cycles, each once, starting at its smallest module (at most ``limit``)."""
    cycles: list[list[str]] = []
    for component in strongly_connected(graph):
        members = set(component)
        for start in component:
            # Only cycles whose smallest member is ``start``: each cycle is found once.
            allowed = {m for m in members if m >= start}
            path = [start]

            def extend(v: str, allowed: set[str] = allowed, path: list[str] = path) -> None:
                for w in sorted(graph[v] & allowed):
                    if len(cycles) >= limit:
                        return
                    if w == path[0]:
                        cycles.append(list(path))
                    elif w not in path:
                        path.append(w)
                        extend(w)
                        path.pop()

            extend(start)
    return cycles


def function_lengths(root: Path = SOURCE) -> list[tuple[int, str]]:
    """``(lines, module:qualified name)`` of every function and method, longest first."""
    out = []
    for name, path in module_files(root).items():
        tree = ast.parse(path.read_text(encoding="utf-8"))

        def walk(node: ast.AST, prefix: str, name: str = name) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    qual = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        out.append((child.end_lineno - child.lineno + 1, f"{name}:{qual}"))
                    walk(child, qual + ".")
                else:
                    walk(child, prefix)

        walk(tree, "")
    return sorted(out, reverse=True)


def long_files(root: Path = SOURCE, over: int = 500) -> list[tuple[int, str]]:
    """``(lines, path)`` of every module longer than ``over`` lines, longest first."""
    out = []
    for path in root.rglob("*.py"):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > over:
            out.append((lines, str(path.relative_to(root.parent))))
    return sorted(out, reverse=True)


def _describe(cycle: list[str]) -> str:
    short = [m.removeprefix(PACKAGE + ".") for m in cycle + cycle[:1]]
    return " -> ".join(short)


def test_no_import_cycles() -> None:
    imports = package_imports()
    graph = import_graph(imports)
    cycles = simple_cycles(graph, limit=50)
    where = {(i.source, i.target): i for i in imports}
    lines = []
    for cycle in cycles[:20]:
        steps = [
            f"{a}:{where[a, b].line}{' (in a function)' if where[a, b].in_function else ''}"
            for a, b in pairwise(cycle + cycle[:1])
        ]
        lines.append(_describe(cycle) + "   [" + ", ".join(steps) + "]")
    assert not cycles, "import cycles (move the shared piece down a layer):\n" + "\n".join(lines)


def test_errors_is_a_leaf() -> None:
    """The exceptions and the CSV column conventions import nothing of the package."""
    assert f"{PACKAGE}.errors" in module_files()
    imports = [i for i in package_imports() if i.source == f"{PACKAGE}.errors"]
    assert imports == []


def test_moved_names_keep_their_old_import_paths() -> None:
    """What moved down a layer is still importable where users found it, as the same object."""
    from nervus_lightning import errors, files
    from nervus_lightning.data import images, schema
    from nervus_lightning.outputs import atomic_write
    from nervus_lightning.survival import competing, ipcw
    from nervus_lightning.tasks.classification import UNKNOWN, obvious_positive_class
    from nervus_lightning.tasks.classification.classes import obvious_positive_class as moved
    from nervus_lightning.tasks.survival import SurvivalTask
    from nervus_lightning.tasks.survival.task import SurvivalTask as survival_task

    assert schema.NervusInputError is errors.NervusInputError
    assert (schema.ID_COLUMN, schema.SPLIT_COLUMN, schema.csv_lines) == (
        errors.ID_COLUMN,
        errors.SPLIT_COLUMN,
        errors.csv_lines,
    )
    assert images.ImageReadError is errors.ImageReadError
    assert competing.aalen_johansen is ipcw.aalen_johansen
    assert atomic_write is files.atomic_write
    assert SurvivalTask is survival_task and obvious_positive_class is moved and UNKNOWN == -1


#: Modules that may import Hydra or OmegaConf: the command line, where the configs live, the
#: sweep summary (a Hydra callback), and ``workflows.evaluate`` (it reads a run folder's saved
#: ``.hydra/config.yaml`` file with OmegaConf to show it in the report; its options are plain).
HYDRA_READERS = ("cli", "config", "sweep", "workflows.evaluate")
#: Hydra used as a library, no config read: ``hydra.utils.get_class`` imports a ``_target_``.
HYDRA_AS_LIBRARY = {"models.plugins": {"hydra"}}
#: The ``python -m nervus_lightning.<command>`` shims and the command-line module each one runs.
SHIMS = {
    "__main__": "cli.train",
    "train": "cli.train",
    "predict": "cli.predict",
    "explain": "cli.explain",
    "export": "cli.export",
    "preview": "cli.preview",
    "evaluate": "cli.evaluate",
}


def _third_party_imports(path: Path) -> set[str]:
    """Top-level package names of every import in ``path``, inside functions too."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_command_line_reads_hydra_configs() -> None:
    """The library (workflows, data, models, tasks...) takes plain arguments: no module outside
    :data:`HYDRA_READERS` imports hydra or omegaconf, not even inside a function."""
    readers = []
    for name, path in module_files().items():
        short = name.removeprefix(PACKAGE + ".")
        if short in HYDRA_READERS or short.split(".")[0] in HYDRA_READERS:
            continue
        found = _third_party_imports(path) & {"hydra", "omegaconf"}
        if found - HYDRA_AS_LIBRARY.get(short, set()):
            readers.append(short)
    assert readers == [], f"modules that read Hydra configs outside cli/: {readers}"


def test_root_command_modules_are_shims() -> None:
    """``python -m nervus_lightning[.X]`` runs ``cli.X.main``; the module holds nothing else."""
    for name, target in SHIMS.items():
        path = SOURCE / f"{name}.py"
        imports = _imports_of(f"{PACKAGE}.{name}", path, module_files())
        assert [i.target for i in imports] == [f"{PACKAGE}.{target}"], name
        body = ast.parse(path.read_text(encoding="utf-8")).body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        # ``from nervus_lightning.cli.X import main`` and ``if __name__ == "__main__": main()``
        assert len(body) == 2 and _is_main_guard(body[1]), name


def _layer(short: str) -> int:
    """docs/design.md's layers, top (0) to bottom: cli and the shims, workflows, the parts."""
    if short.split(".")[0] == "cli" or short in SHIMS:
        return 0
    if short.split(".")[0] == "workflows":
        return 1
    return 2


def test_layers_import_downwards_only() -> None:
    """No part (data, models, tasks, survival, evaluation, module...) imports workflows or cli,
    and workflows do not import cli, also not inside a function (the package's ``__init__``
    may name the workflows lazily, PEP 562)."""
    upward = [
        f"{imp.source} -> {imp.target} (line {imp.line})"
        for imp in package_imports()
        if imp.source != PACKAGE
        and _layer(imp.target.removeprefix(PACKAGE + "."))
        < _layer(imp.source.removeprefix(PACKAGE + "."))
    ]
    assert upward == [], f"imports from a lower layer up: {upward}"


def test_the_graph_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The helper finds a cycle closed only by an import inside a function, relative or not."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from nervus_lightning.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n    return a\n")
    imports = package_imports(pkg)
    assert Import(f"{PACKAGE}.a", f"{PACKAGE}.sub.b", 1, False) in imports
    assert Import(f"{PACKAGE}.sub.b", f"{PACKAGE}.a", 2, True) in imports
    assert simple_cycles(import_graph(imports)) == [[f"{PACKAGE}.a", f"{PACKAGE}.sub.b"]]


def main() -> None:
    imports = package_imports()
    graph = import_graph(imports)
    top = [i for i in imports if not i.in_function]
    cycles_all = simple_cycles(graph)
    cycles_top = simple_cycles(import_graph(top))
    inside = [i for i in imports if i.in_function]
    print(f"modules: {len(module_files())}, package imports: {len(imports)}")
    print(f"imports inside functions: {len(inside)} (module edges), statements:", end=" ")
    print(len({(i.source, i.line) for i in inside}))
    print(f"import cycles counting imports inside functions: {len(cycles_all)}")
    print(f"import cycles of module-level imports only: {len(cycles_top)}")
    print("strongly connected components:")
    for comp in strongly_connected(graph):
        print("  " + ", ".join(m.removeprefix(PACKAGE + ".") for m in comp))
    if len(cycles_all) <= 40:
        for cycle in cycles_all:
            print("  cycle: " + _describe(cycle))
    print("ten longest functions:")
    for n, name in function_lengths()[:10]:
        print(f"  {n:4d}  {name.removeprefix(PACKAGE + '.')}")
    print("files over 500 lines:")
    for n, path in long_files():
        print(f"  {n:4d}  {path}")


if __name__ == "__main__":
    main()
