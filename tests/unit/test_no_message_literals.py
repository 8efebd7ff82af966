"""No Temporal message or workflow-type name is a string literal outside cloudless.contracts.

Every update, signal and query (and every workflow type a client starts) is named through
its entity contract, so a rename is one edit and a typo cannot reach Temporal as an
"unknown update". This scans the source of every package, the benchmarks and the tests.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = (
    "cloudless",
    "workflows",
    "activities",
    "workers",
    "agent",
    "transit",
    "policies",
    "bench",
    "tests",
)
#: Where the names are declared.
CONTRACTS = ROOT / "cloudless" / "contracts"

#: Client-side calls whose first argument names a message.
MESSAGE_CALLS = frozenset(
    {
        "execute_update",
        "start_update",
        "execute_update_with_start_workflow",
        "start_update_with_start_workflow",
        "signal",
        "query",
        "signal_with_start",
    }
)
#: Calls whose first argument names a workflow type.
WORKFLOW_CALLS = frozenset(
    {
        "start_workflow",
        "execute_workflow",
        "start_child_workflow",
        "execute_child_workflow",
        "WithStartWorkflowOperation",
        "ScheduleActionStartWorkflow",
    }
)
#: ``@workflow.<kind>(name=...)`` decorators that register a name.
DECORATORS = frozenset({"update", "signal", "query", "defn"})
#: The contract descriptors: constructing one with a literal name belongs in the contracts.
DESCRIPTORS = frozenset({"Update", "Query", "Signal", "WorkflowType"})


def _files() -> Iterator[Path]:
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if CONTRACTS not in path.parents:
                yield path


def _callee(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _literal(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _first_arg(call: ast.Call) -> ast.expr | None:
    return call.args[0] if call.args and not isinstance(call.args[0], ast.Starred) else None


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_workflow_decorator(call: ast.Call) -> bool:
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr in DECORATORS
        and isinstance(func.value, ast.Name)
        and func.value.id == "workflow"
    )


def violations(source: str) -> list[tuple[int, str]]:
    """(line, why) of every message or workflow-type name written as a literal."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        callee = _callee(node)
        if _is_workflow_decorator(node):
            if _literal(_keyword(node, "name")):
                found.append((node.lineno, f"@workflow.{callee}(name=<literal>)"))
            continue
        if callee in MESSAGE_CALLS | WORKFLOW_CALLS | DESCRIPTORS and _literal(_first_arg(node)):
            found.append((node.lineno, f"{callee}(<literal>, ...)"))
        if callee in MESSAGE_CALLS | WORKFLOW_CALLS and _literal(_keyword(node, "start_signal")):
            found.append((node.lineno, f"{callee}(start_signal=<literal>)"))
        if callee in DESCRIPTORS and _literal(_keyword(node, "name")):
            found.append((node.lineno, f"{callee}(name=<literal>)"))
    return sorted(found)


def test_no_message_name_is_a_literal_outside_the_contracts() -> None:
    problems = []
    for path in _files():
        source = path.read_text()
        rel = path.relative_to(ROOT).as_posix()
        for line, why in violations(source):
            problems.append(f"{rel}:{line}: {why}; name it through cloudless.contracts")
    assert not problems, "\n".join(problems)


def test_the_scan_finds_each_kind_of_literal() -> None:
    source = """
await handle.execute_update("apply", inp)
await handle.start_update("apply", inp, wait_for_stage=s)
await client.execute_update_with_start_workflow("apply", inp, start_workflow_operation=op)
await handle.signal("replicas_lost", sig)
await workflow.get_external_workflow_handle(wid).signal("facts", sig)
await handle.query("status")
await client.start_workflow("NodeWorkflow", inp, id=i, task_queue=q, start_signal="enroll")
await client.execute_workflow("ExplainPlacementWorkflow", inp, id=i, task_queue=q)
op = WithStartWorkflowOperation("WorkloadWorkflow", inp, id=i, task_queue=q)
PING = Signal("ping", Ping)

@workflow.defn(name="X")
class X:
    @workflow.update(name="u")
    def u(self) -> None: ...
    @workflow.signal(name="s")
    def s(self) -> None: ...
    @workflow.query(name="q")
    def q(self) -> None: ...
"""
    assert [line for line, _ in violations(source)] == [
        2, 3, 4, 5, 6, 7, 8, 8, 9, 10, 11, 13, 15, 17, 19,
    ]  # fmt: skip


def test_the_scan_accepts_contract_names_and_unrelated_calls() -> None:
    source = """
await handle.execute_update(workload.APPLY.name, inp)
await workload.APPLY.execute(handle, inp)
signal.signal(sig, handler)
log.query(AuditQuery())
await client.start_workflow(node.WORKFLOW.name, inp, id=i, task_queue=q)

@workflow.defn(name=node.WORKFLOW.name)
class X:
    @workflow.update
    def apply(self) -> None: ...
    @workflow.signal(name=node.FACTS.name)
    def facts(self) -> None: ...
"""
    assert violations(source) == []
