"""The contract descriptors and handles send exactly the declared name, argument and result
type through a Temporal handle; ``signal_unless_gone`` tells a gone workflow from a fault."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import pytest
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from cloudless.contracts import (
    WORKFLOW_TYPES,
    LedgerHandle,
    NodeHandle,
    SecretHandle,
    WorkflowType,
    WorkloadHandle,
    ledger,
    names,
    node,
    rotation,
    secret,
    signal_unless_gone,
    workload,
)
from cloudless.model import (
    CapacityAvailable,
    CompactSnapshot,
    EnrollSignal,
    LedgerNode,
    NodeAdminInput,
    NodeRecord,
    NodeStatus,
    ReplicasLost,
    ScaleInput,
    SchedulerSettings,
    WaitInput,
    WorkloadStatus,
    encode_ledger,
)
from cloudless.secrets.model import RevokeInput, SecretView
from cloudless.vocabulary import AdminAction, NodeState


@dataclass
class Call:
    kind: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]


@dataclass
class FakeHandle:
    """Records what a contract sends; answers with ``answer`` or raises ``errors`` in turn."""

    id: str = "fake/1"
    answer: Any = None
    errors: list[BaseException] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    def _record(self, kind: str, name: str, kwargs: dict[str, Any]) -> Any:
        self.calls.append(Call(kind, name, list(kwargs.pop("args", [])), kwargs))
        if self.errors:
            raise self.errors.pop(0)
        return self.answer

    async def execute_update(self, name: str, **kwargs: Any) -> Any:
        return self._record("update", name, kwargs)

    async def query(self, name: str, **kwargs: Any) -> Any:
        return self._record("query", name, kwargs)

    async def signal(self, name: str, **kwargs: Any) -> Any:
        return self._record("signal", name, kwargs)


def as_handle(fake: FakeHandle) -> WorkflowHandle[Any, Any]:
    return cast(WorkflowHandle[Any, Any], fake)


def rpc_error(status: RPCStatusCode) -> RPCError:
    return RPCError("boom", status, b"")


async def test_update_sends_name_argument_and_result_type() -> None:
    fake = FakeHandle(answer=7)
    settings = SchedulerSettings()
    got = await ledger.SET_SCHEDULER_SETTINGS.execute(
        as_handle(fake), settings, id="u-1", rpc_timeout=timedelta(seconds=3)
    )
    assert got == 7
    (call,) = fake.calls
    assert (call.kind, call.name, call.args) == ("update", "set_scheduler_settings", [settings])
    assert call.kwargs == {"id": "u-1", "result_type": int, "rpc_timeout": timedelta(seconds=3)}


async def test_messages_without_input_send_no_argument() -> None:
    fake = FakeHandle(answer=3)
    assert await workload.DELETE.execute(as_handle(fake)) == 3
    await workload.STATUS.query(as_handle(fake))
    assert [(c.kind, c.name, c.args) for c in fake.calls] == [
        ("update", "delete", []),
        ("query", "status", []),
    ]
    assert fake.calls[1].kwargs["result_type"] is WorkloadStatus


async def test_query_with_input() -> None:
    fake = FakeHandle(answer=["ns/w"])
    assert await ledger.NODE_WORKLOADS.query(as_handle(fake), "n1") == ["ns/w"]
    assert (fake.calls[0].name, fake.calls[0].args) == ("node_workloads", ["n1"])


async def test_signal_unless_gone_delivers() -> None:
    fake = FakeHandle()
    sig = CapacityAvailable(reason="room")
    assert await signal_unless_gone(as_handle(fake), workload.CAPACITY_AVAILABLE, sig)
    assert [(c.kind, c.name, c.args) for c in fake.calls] == [
        ("signal", "capacity_available", [sig])
    ]


@pytest.mark.parametrize("attempts", [1, 3, None])
async def test_a_gone_workflow_is_not_an_error(attempts: int | None) -> None:
    fake = FakeHandle(errors=[rpc_error(RPCStatusCode.NOT_FOUND)])
    sig = ReplicasLost(node_id="n1", reason="gone")
    assert not await signal_unless_gone(
        as_handle(fake), workload.REPLICAS_LOST, sig, attempts=attempts
    )
    assert len(fake.calls) == 1  # never retried


async def test_transient_faults_are_retried_then_raised() -> None:
    retried: list[RPCError] = []
    fake = FakeHandle(errors=[rpc_error(RPCStatusCode.UNAVAILABLE)] * 3)
    with pytest.raises(RPCError):
        await signal_unless_gone(
            as_handle(fake),
            workload.CAPACITY_AVAILABLE,
            CapacityAvailable(),
            attempts=3,
            delay=0.001,
            on_retry=retried.append,
        )
    assert len(fake.calls) == 3 and len(retried) == 2

    fake = FakeHandle(errors=[rpc_error(RPCStatusCode.UNAVAILABLE)] * 4)
    assert await signal_unless_gone(
        as_handle(fake), workload.CAPACITY_AVAILABLE, CapacityAvailable(), attempts=None,
        delay=0.001,
    )  # fmt: skip
    assert len(fake.calls) == 5


def test_id_schemes_and_queues_are_the_documented_ones() -> None:
    assert ledger.workflow_id("c") == "cluster/c"
    assert node.workflow_id("n1") == "node/n1"
    assert workload.workflow_id("ns", "w") == "workload/ns/w"
    assert workload.split_key(workload.key("ns", "a/b")) == ("ns", "a/b")
    assert secret.split_workflow_id(secret.workflow_id("ns", "db")) == ("ns", "db")
    assert rotation.workflow_id("c") == rotation.schedule_id("c") == "key-rotation/c"
    assert ledger.WORKFLOW.task_queue("c") == "cloudless-c-ledger"
    assert workload.WORKFLOW.task_queue("c") == names.task_queue("c") == "cloudless-c"


def test_visibility_queries() -> None:
    assert secret.live_secrets_query("c", "CloudlessKeyVersion < 3") == (
        "WorkflowType = 'SecretWorkflow' AND ExecutionStatus = 'Running' "
        "AND TaskQueue = 'cloudless-c' AND CloudlessKeyVersion < 3"
    )
    assert rotation.rotations_query("c") == (
        "WorkflowType = 'KeyRotationWorkflow' AND TaskQueue = 'cloudless-c'"
    )


def test_every_workflow_type_declares_each_message_once() -> None:
    for wf in WORKFLOW_TYPES.values():
        declared = [m.name for m in wf.messages]
        assert (
            len(declared)
            == len(set(declared))
            == (len(wf.updates) + len(wf.signals) + len(wf.queries))
        )


class _FakeClient:
    def __init__(self, fake: FakeHandle) -> None:
        self.fake = fake

    def get_workflow_handle(self, workflow_id: str, **_: Any) -> FakeHandle:
        self.fake.id = workflow_id
        return self.fake


async def test_handles_address_their_entity_and_send_typed_messages() -> None:
    fake = FakeHandle(answer=None)
    client: Any = _FakeClient(fake)
    wl = WorkloadHandle.of(client, "ns/w")
    assert (wl.id, wl.key, wl.namespace, wl.name) == ("workload/ns/w", "ns/w", "ns", "w")
    await wl.scale(ScaleInput(replicas=2))
    await wl.wait_settled(WaitInput(generation=3))
    await wl.replicas_lost(ReplicasLost(node_id="n1", reason="x"))
    await wl.capacity_available(CapacityAvailable())

    nd = NodeHandle(client, "n1")
    assert nd.id == "node/n1"
    await nd.admin(NodeAdminInput(action=AdminAction.CORDON))
    await nd.describe()
    await nd.facts(EnrollSignal(record=NodeRecord(node_id="n1")))

    sh = SecretHandle(client, "ns", "db")
    assert sh.id == "secret/ns/db"
    await sh.revoke(RevokeInput(token_id="t", expires_at=1.0))
    await sh.view()

    lh = LedgerHandle(client, "c")
    assert lh.id == "cluster/c"
    await lh.wait_node("n1", [NodeState.READY], timeout=5)
    await lh.node_workloads("n1")

    sent = [(c.kind, c.name, c.kwargs.get("result_type")) for c in fake.calls]
    assert sent == [
        ("update", "scale", workload.SCALE.result),
        ("update", "wait_settled", WorkloadStatus),
        ("signal", "replicas_lost", None),
        ("signal", "capacity_available", None),
        ("update", "admin", NodeStatus),
        ("query", "describe", NodeStatus | None),
        ("signal", "facts", None),
        ("update", "revoke", bool),
        ("query", "view", SecretView | None),
        ("update", "wait_node", LedgerNode | None),
        ("query", "node_workloads", list[str]),
    ]
    wait = fake.calls[-2].args[0]
    assert (wait.node_id, wait.states, wait.timeout_seconds) == ("n1", [NodeState.READY], 5)


async def test_ledger_snapshot_is_expanded() -> None:
    compact = CompactSnapshot(
        cluster="c", version=4, columns=encode_ledger([], {}), scheduler=SchedulerSettings()
    )
    fake = FakeHandle(answer=compact)
    snap = await LedgerHandle(_FakeClient(fake), "c").snapshot()  # type: ignore[arg-type]
    assert (snap.cluster, snap.version, snap.nodes) == ("c", 4, [])


def test_every_workflow_id_starts_with_its_types_prefix() -> None:
    """The front authorizes by id prefix: an id scheme and its declared prefix agree."""
    from cloudless.contracts import (
        audit,
        certs,
        enrollment,
        explain,
        ledger,
        node,
        reaper,
        rotation,
        secret,
        workload,
    )

    ids: dict[WorkflowType[Any, Any], str] = {
        audit.WORKFLOW: audit.workflow_id("dev"),
        certs.WORKFLOW: certs.workflow_id("dev"),
        certs.CA_WORKFLOW: certs.ca_workflow_id("dev"),
        enrollment.WORKFLOW: enrollment.workflow_id("jti"),
        explain.WORKFLOW: explain.workflow_id("default/web"),
        ledger.WORKFLOW: ledger.workflow_id("dev"),
        node.WORKFLOW: node.workflow_id("edge-1"),
        reaper.WORKFLOW: reaper.workflow_id("dev"),
        rotation.WORKFLOW: rotation.workflow_id("dev"),
        secret.WORKFLOW: secret.workflow_id("default", "db"),
        workload.WORKFLOW: workload.workflow_id("default", "web"),
    }
    assert {w.name for w in ids} == set(WORKFLOW_TYPES)
    for workflow, wid in ids.items():
        assert wid.startswith(workflow.id_prefix), (workflow, wid)
    prefixes = [w.id_prefix for w in ids]
    assert len(set(prefixes)) == len(prefixes)


async def test_a_failed_update_with_start_leaves_no_unretrieved_error() -> None:
    """The start half's future holds the same error; left unretrieved, asyncio reports it
    when the operation is collected (and CPython 3.11 can then fail an import)."""
    import gc

    from cloudless.contracts import workload as workload_contract
    from cloudless.model import WorkloadWorkflowInput
    from cloudless.testing.workloads import sleeper

    operations: list[Any] = [
        workload_contract.WORKFLOW.with_start(
            WorkloadWorkflowInput(cluster="c", manifest=sleeper("x", 1)),
            id="workload/default/x",
            cluster="c",
        )
    ]

    class Refusing:
        async def execute_update_with_start_workflow(self, *args: Any, **kwargs: Any) -> Any:
            error = RPCError("denied", RPCStatusCode.PERMISSION_DENIED, b"")
            kwargs["start_workflow_operation"]._workflow_handle.set_exception(error)
            raise error

    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        with pytest.raises(RPCError):
            await workload_contract.APPLY.execute_with_start(
                cast(Any, Refusing()), cast(Any, None), start=operations[0]
            )
        operations.clear()
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert not [c for c in reported if "never retrieved" in str(c.get("message", ""))], reported


async def test_an_update_refused_as_not_ready_is_sent_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Temporal's WorkflowNotReady (the workflow's task had just failed; the Update was not
    admitted) is retried; other refusals are not. The status is the one CI met."""
    from cloudless.contracts import _base, ledger

    raw = (
        b"\x08\t\x12TUnable to perform workflow execution update due to unexpected workflow "
        b"task failure.\x1aJ\nHtype.googleapis.com/temporal.api.errordetails.v1."
        b"WorkflowNotReadyFailure"
    )
    not_ready = RPCError("not ready", RPCStatusCode.FAILED_PRECONDITION, raw)
    assert _base.not_ready(not_ready)
    assert not _base.not_ready(RPCError("no", RPCStatusCode.FAILED_PRECONDITION, b""))
    assert not _base.not_ready(RPCError("no", RPCStatusCode.NOT_FOUND, raw))
    monkeypatch.setattr("cloudless.contracts._base.asyncio.sleep", _no_sleep)

    class Handle:
        calls = 0

        async def execute_update(self, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls < 3:
                raise not_ready
            return None

    handle = Handle()
    await ledger.WAIT_NODE.execute(cast(Any, handle), cast(Any, None))
    assert handle.calls == 3

    class Always(Handle):
        async def execute_update(self, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            raise not_ready

    always = Always()
    with pytest.raises(RPCError):
        await ledger.WAIT_NODE.execute(cast(Any, always), cast(Any, None))
    assert always.calls == _base.NOT_READY_RETRIES + 1


async def _no_sleep(_seconds: float) -> None:
    return None
