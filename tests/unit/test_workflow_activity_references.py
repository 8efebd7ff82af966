"""Workflows import activities only as references (DESIGN section 1).

A workflow may name an activity method to schedule it
(``workflow.execute_activity_method(LedgerActivities.place_replicas, ...)``) and nothing
else: it never instantiates an activity class, calls one, or reads other attributes, and it
imports activity modules only inside ``workflow.unsafe.imports_passed_through()``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SCHEDULERS = {
    "execute_activity_method",
    "start_activity_method",
    "execute_local_activity_method",
    "start_local_activity_method",
}


def _passed_through(node: ast.With) -> bool:
    return any(
        isinstance(item.context_expr, ast.Call)
        and ast.unparse(item.context_expr.func) == "workflow.unsafe.imports_passed_through"
        for item in node.items
    )


def violations(source: str) -> list[str]:
    tree = ast.parse(source)
    allowed_imports: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and _passed_through(node):
            allowed_imports.update(id(n) for n in node.body)
    names: set[str] = set()
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "activities":
            if id(node) not in allowed_imports:
                problems.append(f"line {node.lineno}: activities imported outside the pass-through")
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import) and any(
            a.name.startswith("activities") for a in node.names
        ):
            problems.append(f"line {node.lineno}: import activities.* as a module")
    references: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in SCHEDULERS
            and node.args
            and isinstance(node.args[0], ast.Attribute)
        ):
            references.add(id(node.args[0]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in names and id(node) not in references:
                problems.append(
                    f"line {node.lineno}: {ast.unparse(node)} is not a scheduled activity"
                )
        elif (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names
        ):
            problems.append(f"line {node.lineno}: {node.func.id}(...) runs activity code")
    return problems


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.py")), ids=lambda p: p.name)
def test_workflows_name_activities_only_to_schedule_them(path: Path) -> None:
    assert violations(path.read_text()) == []


def test_the_check_sees_misuse() -> None:
    source = """
from activities.ledger import LedgerActivities
with workflow.unsafe.imports_passed_through():
    from activities.agents import AgentActivities
async def f():
    await workflow.execute_activity_method(AgentActivities.run_replicas, x)
    AgentActivities(pool)
    y = AgentActivities.BATCH
"""
    found = violations(source)
    assert len(found) == 3, found
