"""Batched replica starts (``run_replicas``) and enrollment tokens in ledger batches.

``run_replicas`` replaces one activity per replica: each replica must still get its own
retries and its own outcome, so one unreachable node does not fail the others' starts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
import pytest
from temporalio.testing import ActivityEnvironment

from activities.agent_client import AgentClientPool
from activities.agents import AgentActivities
from cloudless.api import agent_pb2
from cloudless.model import (
    ConsumeTokenInput,
    LedgerOp,
    NodeRecord,
    NodeState,
    ReplicaPhase,
    Resources,
    RunReplicaInput,
    RunReplicasInput,
    UpsertNodeInput,
)
from workflows.cluster import ClusterWorkflow, Ledger

MANIFEST = {
    "apiVersion": "cloudless.dev/v1",
    "kind": "Workload",
    "metadata": {"name": "web", "labels": {"app": "web"}},
    "spec": {
        "replicas": 3,
        "container": {"image": "cloudless/busybox:latest"},
        "resources": {"cpu": "100m", "memory": "64Mi"},
    },
}


def _error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "boom", "")


class FakeStub:
    def __init__(self, node: str, script: dict[str, list[grpc.StatusCode | None]]) -> None:
        self.node, self.script = node, script
        self.specs: list[agent_pb2.ReplicaSpec] = []

    async def RunReplica(
        self, request: agent_pb2.RunReplicaRequest, timeout: float
    ) -> agent_pb2.RunReplicaResponse:
        self.specs.append(request.spec)
        steps = self.script.get(self.node, [])
        code = steps.pop(0) if steps else None
        if code is not None:
            raise _error(code)
        return agent_pb2.RunReplicaResponse(
            status=agent_pb2.ReplicaStatus(
                replica_id=request.spec.replica_id,
                phase="Running",
                runtime_id=f"rt-{request.spec.replica_id}",
                started_at=1.0,
            )
        )


class FakePool:
    def __init__(self, script: dict[str, list[grpc.StatusCode | None]]) -> None:
        self.stubs: dict[str, FakeStub] = {}
        self.script = script

    async def stub(self, node_id: str, address: str) -> FakeStub:
        return self.stubs.setdefault(node_id, FakeStub(node_id, self.script))


def _item(rid: str, node: str, epoch: int) -> RunReplicaInput:
    return RunReplicaInput(
        node_id=node,
        address=f"{node}:1",
        namespace="default",
        workload="web",
        replica_id=rid,
        generation=2,
        spec_hash="h",
        manifest={},
        epoch=epoch,
    )


async def test_each_replica_gets_its_own_retries_and_outcome() -> None:
    script: dict[str, list[grpc.StatusCode | None]] = {
        "flaky": [grpc.StatusCode.UNAVAILABLE, None],  # transient once: retried
        "bad": [grpc.StatusCode.FAILED_PRECONDITION],  # permanent: reported, not retried
    }
    pool = FakePool(script)
    acts = AgentActivities(cast(AgentClientPool, pool))
    batch = RunReplicasInput(
        manifest=MANIFEST,
        replicas=[_item("r1", "ok", 1), _item("r2", "flaky", 2), _item("r3", "bad", 3)],
    )
    result = await ActivityEnvironment().run(acts.run_replicas, batch)
    by_id = {o.replica_id: o for o in result.outcomes}
    assert [o.replica_id for o in result.outcomes] == ["r1", "r2", "r3"]
    for rid in ("r1", "r2"):
        out = by_id[rid].result
        assert out is not None and out.phase == ReplicaPhase.RUNNING
        assert out.runtime_id == f"rt-{rid}"
    assert len(pool.stubs["flaky"].specs) == 2
    assert by_id["r3"].result is None and by_id["r3"].error_type == "ReplicaStartFailed"
    assert len(pool.stubs["bad"].specs) == 1
    # Per-replica fields on the shared spec; the manifest's parts on every one.
    spec = pool.stubs["flaky"].specs[-1]
    assert (spec.replica_id, spec.generation, spec.spec_hash, spec.epoch) == ("r2", 2, "h", 2)
    assert spec.image == "cloudless/busybox:latest" and spec.cpu_millis == 100


def _cluster() -> Any:
    wf = ClusterWorkflow.__new__(ClusterWorkflow)
    wf._ledger = Ledger()
    wf._tokens = {}
    wf._token_nodes = {}
    return wf


def _token(jti: str, node: str, bound: bool = False) -> LedgerOp:
    return LedgerOp(
        consume_token=ConsumeTokenInput(
            jti=jti,
            expires_at=datetime.now(UTC) + timedelta(minutes=5),
            node_id=node,
            bound_to_node=bound,
        )
    )


def test_token_op_is_single_use_and_a_retry_is_a_no_op() -> None:
    wf = _cluster()
    assert wf._apply_op(_token("j1", "n1")).consumed
    assert wf._apply_op(_token("j1", "n1")).consumed  # the same enrollment, retried
    reused = wf._apply_op(_token("j1", "n2"))
    assert reused.error_type == "TokenReused" and not reused.consumed


@pytest.mark.parametrize("bound", [False, True])
def test_token_op_guards_enrolled_node_names(bound: bool) -> None:
    wf = _cluster()
    wf._apply_op(
        LedgerOp(
            upsert=UpsertNodeInput(
                record=NodeRecord(node_id="n1", capacity=Resources(cpu_millis=1000)),
                state=NodeState.READY,
            )
        )
    )
    out = wf._apply_op(_token("j2", "n1", bound=bound))
    assert out.consumed if bound else out.error_type == "NodeAlreadyEnrolled"
