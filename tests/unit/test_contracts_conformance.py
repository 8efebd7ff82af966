"""Every workflow the coordinator registers matches its contract in cloudless.contracts.

The contract is what callers rely on: message names and the types they send and decode.
A handler renamed, added or retyped in a workflow without its contract (or the other way
round) fails here, before a caller's Update lands on "unknown update" at runtime.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import pytest
from temporalio.workflow import _Definition

from cloudless.contracts import WORKFLOW_TYPES, Query, Signal, Update, WorkflowType
from cloudless.contracts.names import ledger_task_queue, task_queue
from workflows import ALL_WORKFLOWS, LEDGER_WORKFLOWS, SHARED_QUEUE_WORKFLOWS


def _definition(cls: type) -> _Definition:
    return _Definition.must_from_class(cls)


def _contract(cls: type) -> WorkflowType[Any, Any]:
    name = _definition(cls).name
    assert name in WORKFLOW_TYPES, f"{cls.__name__} ({name}) has no contract"
    return WORKFLOW_TYPES[name]


def _same_type(declared: Any, actual: Any) -> bool:
    """Equal types, with ``X | None`` and ``Optional[X]`` (and None and NoneType) alike."""
    if declared is None:
        declared = type(None)
    if actual is None:
        actual = type(None)
    if isinstance(declared, types.UnionType):
        declared = typing.Union[declared.__args__]  # noqa: UP007  (normalize to compare)
    if isinstance(actual, types.UnionType):
        actual = typing.Union[actual.__args__]  # noqa: UP007
    return bool(declared == actual)


def _input_of(arg_types: list[type] | None) -> Any:
    assert arg_types is not None
    assert len(arg_types) <= 1, f"one input model per message, got {arg_types}"
    return arg_types[0] if arg_types else None


WORKFLOWS = pytest.mark.parametrize("cls", ALL_WORKFLOWS, ids=lambda c: c.__name__)


def test_every_registered_workflow_has_a_contract_and_every_contract_a_workflow() -> None:
    registered = {_definition(cls).name for cls in ALL_WORKFLOWS}
    assert registered == set(WORKFLOW_TYPES)


def test_workers_register_each_workflow_on_the_queue_its_contract_names() -> None:
    assert set(ALL_WORKFLOWS) == set(LEDGER_WORKFLOWS) | set(SHARED_QUEUE_WORKFLOWS)
    assert not set(LEDGER_WORKFLOWS) & set(SHARED_QUEUE_WORKFLOWS)
    for ledger_cls in LEDGER_WORKFLOWS:
        assert _contract(ledger_cls).task_queue("c") == ledger_task_queue("c"), ledger_cls
    for shared_cls in SHARED_QUEUE_WORKFLOWS:
        assert _contract(shared_cls).task_queue("c") == task_queue("c"), shared_cls


@WORKFLOWS
def test_run_input_and_result(cls: type) -> None:
    defn, contract = _definition(cls), _contract(cls)
    assert _same_type(contract.input, _input_of(defn.arg_types)), contract.name
    assert _same_type(contract.result, defn.ret_type), contract.name


@WORKFLOWS
def test_updates(cls: type) -> None:
    defn, contract = _definition(cls), _contract(cls)
    assert set(defn.updates) == set(contract.updates), contract.name
    for name, update in defn.updates.items():
        declared = contract.updates[str(name)]
        assert isinstance(declared, Update)
        assert _same_type(declared.input, _input_of(update.arg_types)), f"{contract.name}.{name}"
        assert _same_type(declared.result, update.ret_type), f"{contract.name}.{name}"


@WORKFLOWS
def test_signals(cls: type) -> None:
    defn, contract = _definition(cls), _contract(cls)
    assert set(defn.signals) == set(contract.signals), contract.name
    for name, signal in defn.signals.items():
        declared = contract.signals[str(name)]
        assert isinstance(declared, Signal)
        assert _same_type(declared.input, _input_of(signal.arg_types)), f"{contract.name}.{name}"


@WORKFLOWS
def test_queries(cls: type) -> None:
    defn, contract = _definition(cls), _contract(cls)
    assert set(defn.queries) == set(contract.queries), contract.name
    for name, query in defn.queries.items():
        declared = contract.queries[str(name)]
        assert isinstance(declared, Query)
        assert _same_type(declared.input, _input_of(query.arg_types)), f"{contract.name}.{name}"
        assert _same_type(declared.result, query.ret_type), f"{contract.name}.{name}"


def test_type_comparison_is_not_vacuous() -> None:
    assert not _same_type(int, str)
    assert not _same_type(int | None, int)
    assert _same_type(int | None, typing.Optional[int])  # noqa: UP045
    assert _same_type(None, type(None))
    assert not _same_type(tuple[int, int], tuple[int, int, int])
