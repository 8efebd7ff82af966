"""Every third-party import is a declared dependency (pyproject.toml).

A module that imports a package only installed as someone else's dependency (``requests``
through hvac, ``pydantic_core`` through pydantic) works until that someone changes. The
runtime packages may use only ``[project] dependencies``; tests and benchmarks may also
use the ``dev`` extra.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ("cloudless", "workflows", "activities", "workers", "agent", "policies", "transit")
DEVELOPMENT = ("tests", "bench")
LOCAL = {*RUNTIME, *DEVELOPMENT}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(requirements: list[str]) -> set[str]:
    return {_canonical(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in requirements}


def _imports(package: str) -> dict[str, str]:
    """Top-level modules imported (absolutely) under ``package``, with one file each."""
    found: dict[str, str] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.partition(".")[0], str(path.relative_to(ROOT)))
    return found


def _undeclared(packages: tuple[str, ...], declared: set[str]) -> list[str]:
    distributions = importlib.metadata.packages_distributions()
    problems = []
    for package in packages:
        for module, where in sorted(_imports(package).items()):
            if module in LOCAL or module in sys.stdlib_module_names or module == "__future__":
                continue
            providers = {_canonical(d) for d in distributions.get(module, [])}
            if not providers & declared:
                problems.append(f"{where} imports {module} (from {sorted(providers) or '?'})")
    return problems


def test_runtime_imports_are_declared_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _undeclared(RUNTIME, _declared(project["dependencies"])) == []


def test_test_and_bench_imports_are_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _declared(project["dependencies"] + project["optional-dependencies"]["dev"])
    assert _undeclared(DEVELOPMENT, declared) == []
