"""Import rules `lint-imports` cannot see for itself.

`lint-imports` (``[tool.importlinter]`` in pyproject.toml) checks the package layers on the
import graph, but an import inside a function is easy to use to dodge it (the cycle
workflows -> activities -> workflows hid that way). So no Cloudless package imports a
Cloudless module inside a function: such a dependency is either allowed at module level,
or a cycle to break. Third-party imports may stay local (to keep a CLI start fast).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The packages lint-imports checks.
PACKAGES = ("cloudless", "workflows", "activities", "workers", "agent", "policies", "transit")


def _sources() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "_pb2" not in path.name:
                yield path


def _imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: always within a Cloudless package
        return ["." * node.level + (node.module or "")]
    return [node.module or ""]


def _ours(module: str) -> bool:
    return module.startswith(".") or module.split(".")[0] in PACKAGES


def local_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every Cloudless module imported inside a function."""
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found += [(node.lineno, m) for m in _imported(node) if _ours(m)]
    return sorted(set(found))


def test_no_function_local_import_of_a_cloudless_module() -> None:
    problems = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        problems += [
            f"{rel}:{line}: imports {module} inside a function; import it at module level "
            "(lint-imports then checks it) or break the cycle it hides"
            for line, module in local_imports(path.read_text())
        ]
    assert not problems, "\n".join(problems)


def test_the_check_sees_nested_and_relative_imports_only_of_our_packages() -> None:
    source = """
import docker
from workflows.cluster import Ledger

def f():
    import docker
    from workflows.cluster import ClusterWorkflow
    def g():
        import activities.ledger
    from . import sibling
    import json
"""
    assert local_imports(source) == [(7, "workflows.cluster"), (9, "activities.ledger"), (10, ".")]


def test_the_vocabulary_imports_only_the_standard_library() -> None:
    """policies may import cloudless.vocabulary because it depends on nothing else."""
    tree = ast.parse((ROOT / "cloudless" / "vocabulary.py").read_text())
    imported = {
        module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for module in _imported(node)
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
