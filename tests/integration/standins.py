"""Stand-in activities for ``workload/`` and ``node/``, registered under the real names.

As in Temporal's samples: the real workflow class runs on a real server, on a fresh task
queue, and every activity it calls is replaced by a stand-in that records the call and
answers from a tiny in-memory cluster. Used by ``test_workload_workflow.py``,
``test_node_workflow.py`` and the history recorder (``tests/histories/record.py``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from cloudless.model import (
    ClaimWorkloadInput,
    ClaimWorkloadResult,
    CommitPlanInput,
    CommitPlanResult,
    Leftovers,
    LeftoversInput,
    NodeRecord,
    NotifyWorkloadsInput,
    Placement,
    PlacementRequest,
    PlacementResult,
    ReconcileNodeInput,
    ReconcileNodeResult,
    ReconcileRequest,
    RemoveNodeInput,
    RemoveNodeResult,
    ReplicaPhase,
    RetireNodeInput,
    RunReplicaOutcome,
    RunReplicaResult,
    RunReplicasInput,
    RunReplicasResult,
    SignCertificateInput,
    SignCertificateResult,
    StopReplicaInput,
    StopReplicaResult,
    UpsertNodeInput,
)
from workers.coordinator import workflow_runner


@dataclass
class StandIns:
    """A small cluster: ``slots`` replicas fit on each node; nodes in ``down`` take none.

    Placement spreads (fewest replicas first, then node id), so tests know where replicas
    go; a request's ``avoid_nodes`` are used only when no other node has room, as the real
    placement does. ``calls`` records every activity call, in order, as (activity name,
    input).
    """

    slots: dict[str, int] = field(default_factory=lambda: {"n1": 2, "n2": 2})
    down: set[str] = field(default_factory=set)
    #: replica id -> node, as the ledger would hold it.
    allocated: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    #: What an agent answers to a start (Stopped: it exited at once with code 0).
    start_phase: ReplicaPhase = ReplicaPhase.RUNNING
    #: Nodes where every start fails (the replica exits right after it, with code 1).
    fail_on: set[str] = field(default_factory=set)
    #: ``wait_node_empty`` returns once this is set (set from the start).
    node_empty: asyncio.Event = field(default_factory=asyncio.Event)
    #: Nodes whose agent cannot be dialled: ``probe_agent`` and ``reconcile_node`` fail
    #: at once (non-retryable, so a test need not wait out the 2-minute deadline).
    unreachable: set[str] = field(default_factory=set)
    #: Nodes where ``stop_replica`` fails at once (non-retryable): the stop is given up.
    unstoppable: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.node_empty.set()

    def named(self, name: str) -> list[Any]:
        """Inputs of every call to activity ``name``, in order."""
        return [arg for n, arg in self.calls if n == name]

    def on(self, node_id: str) -> list[str]:
        return sorted(r for r, n in self.allocated.items() if n == node_id)

    # ------------------------------------------------------------------ workload/

    @activity.defn(name="place_replicas")
    async def place_replicas(self, req: PlacementRequest) -> PlacementResult:
        self.calls.append(("place_replicas", req))
        placements, unplaced = [], []
        for rid in req.replica_ids:
            free = [
                n for n, cap in self.slots.items() if n not in self.down and len(self.on(n)) < cap
            ]
            if not free:
                unplaced.append(rid)
                continue
            node = min(free, key=lambda n: (n in req.avoid_nodes, len(self.on(n)), n))
            self.allocated[rid] = node
            placements.append(Placement(replica_id=rid, node_id=node, address=f"{node}:7443"))
        reason = f"0/{len(self.slots)} nodes are available: no room" if unplaced else ""
        return PlacementResult(placements=placements, unplaced=unplaced, reason=reason)

    @activity.defn(name="commit_plan")
    async def commit_plan(self, plan: CommitPlanInput) -> CommitPlanResult:
        self.calls.append(("commit_plan", plan))
        for a in plan.releases:
            self.allocated.pop(a.replica_id, None)
        return CommitPlanResult(version=len(self.calls), applied=True)

    @activity.defn(name="claim_workload")
    async def claim_workload(self, inp: ClaimWorkloadInput) -> ClaimWorkloadResult:
        self.calls.append(("claim_workload", inp))
        return ClaimWorkloadResult(owner=len(self.calls))

    @activity.defn(name="run_replicas")
    async def run_replicas(self, batch: RunReplicasInput) -> RunReplicasResult:
        self.calls.append(("run_replicas", batch))
        return RunReplicasResult(
            outcomes=[
                RunReplicaOutcome(
                    replica_id=r.replica_id,
                    result=RunReplicaResult(phase=self.start_phase, runtime_id=f"rt-{r.replica_id}")
                    if r.node_id not in self.fail_on
                    else RunReplicaResult(
                        phase=ReplicaPhase.FAILED,
                        runtime_id=f"rt-{r.replica_id}",
                        message="exited right after start",
                        exit_code=1,
                    ),
                )
                for r in batch.replicas
            ]
        )

    @activity.defn(name="stop_replica")
    async def stop_replica(self, inp: StopReplicaInput) -> StopReplicaResult:
        self.calls.append(("stop_replica", inp))
        if inp.node_id in self.unstoppable:
            raise ApplicationError(
                f"agent {inp.node_id}: unreachable (stand-in)",
                type="AgentUnavailable",
                non_retryable=True,
            )
        return StopReplicaResult(found=True)

    @activity.defn(name="find_leftovers")
    async def find_leftovers(self, inp: LeftoversInput) -> Leftovers:
        self.calls.append(("find_leftovers", inp))
        return Leftovers()

    # ------------------------------------------------------------------ node/

    @activity.defn(name="publish_node")
    async def publish_node(self, inp: UpsertNodeInput) -> None:
        self.calls.append(("publish_node", inp))

    @activity.defn(name="probe_agent")
    async def probe_agent(self, record: NodeRecord) -> list[str]:
        self.calls.append(("probe_agent", record))
        self._dial(record.node_id)
        return ["exec"]

    @activity.defn(name="reconcile_node")
    async def reconcile_node(self, inp: ReconcileNodeInput) -> ReconcileNodeResult:
        self.calls.append(("reconcile_node", inp))
        self._dial(inp.node_id)
        return ReconcileNodeResult(kept=len(self.on(inp.node_id)))

    def _dial(self, node_id: str) -> None:
        if node_id in self.unreachable:
            raise ApplicationError(
                f"agent {node_id}: unreachable (stand-in)",
                type="AgentUnavailable",
                non_retryable=True,
            )

    @activity.defn(name="notify_workloads")
    async def notify_workloads(self, inp: NotifyWorkloadsInput) -> list[str]:
        self.calls.append(("notify_workloads", inp))
        return []

    @activity.defn(name="request_reconcile")
    async def request_reconcile(self, req: ReconcileRequest) -> bool:
        self.calls.append(("request_reconcile", req))
        return True

    @activity.defn(name="wait_node_empty")
    async def wait_node_empty(self, node_id: str) -> None:
        self.calls.append(("wait_node_empty", node_id))
        await self.node_empty.wait()

    @activity.defn(name="wait_node_released")
    async def wait_node_released(self, node_id: str) -> list[str]:
        self.calls.append(("wait_node_released", node_id))
        return []

    @activity.defn(name="retire_node")
    async def retire_node(self, inp: RetireNodeInput) -> list[str]:
        self.calls.append(("retire_node", inp))
        return self.on(inp.node_id)

    @activity.defn(name="remove_node")
    async def remove_node(self, inp: RemoveNodeInput) -> RemoveNodeResult:
        self.calls.append(("remove_node", inp))
        return RemoveNodeResult(removed=True, revoked=bool(inp.certificate_serial))

    @activity.defn(name="sign_node_certificate")
    async def sign_node_certificate(self, inp: SignCertificateInput) -> SignCertificateResult:
        """A certificate for the CSR, valid 30 days: its serial made up, its key id the
        CSR's text prefixed with "key of " (a real one is the CSR key's, as the gateway
        computes it for ``RenewCertificateInput.key_id``)."""
        self.calls.append(("sign_node_certificate", inp))
        n = len(self.named("sign_node_certificate"))
        now = datetime.now(UTC)
        return SignCertificateResult(
            certificate_pem=f"stand-in certificate {n} of {inp.node_id}",
            ca_pem="stand-in CA",
            not_after=now + timedelta(days=30),
            serial=f"{n:040x}",
            issued_at=now,
            key_id=f"key of {inp.csr_pem}",
        )

    def activities(self) -> list[Callable[..., Any]]:
        return [
            self.place_replicas,
            self.commit_plan,
            self.claim_workload,
            self.run_replicas,
            self.stop_replica,
            self.find_leftovers,
            self.publish_node,
            self.probe_agent,
            self.reconcile_node,
            self.notify_workloads,
            self.request_reconcile,
            self.wait_node_empty,
            self.wait_node_released,
            self.retire_node,
            self.remove_node,
            self.sign_node_certificate,
        ]


def fresh_queue(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def worker(client: Client, task_queue: str, workflows: Sequence[type], fake: StandIns) -> Worker:
    """The real workflow classes with the stand-ins, in the coordinator's sandbox."""
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(workflows),
        activities=fake.activities(),
        workflow_runner=workflow_runner(),
    )


async def eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        assert loop.time() < deadline, f"timed out waiting for {check}"
        await asyncio.sleep(0.05)
