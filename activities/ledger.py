"""Activities that read and write the ``cluster/<name>`` ledger and node entities.

Workflows cannot query or update other workflows, so these activities do it with the
Temporal client on their behalf. Placement runs here too: the scheduler decides on the
coordinator's long-lived node index (:mod:`activities.scheduling`), which would be far too
large to pass through workflow history, and commits through the ledger.
"""

from __future__ import annotations

import asyncio
import dataclasses
import zlib
from collections import Counter
from typing import TYPE_CHECKING

from temporalio import activity
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.ledger_writer import LedgerWriter
from activities.scheduler_index import SchedulerState
from activities.scheduler_inputs import placement_request, resources, workload_meta
from cloudless.model import (
    Allocation,
    AwaitCapacityInput,
    CandidateScore,
    CapacityAvailable,
    ClusterSnapshot,
    CommitPlanInput,
    CommitPlanResult,
    ConsumeTokenInput,
    EnrollSignal,
    ExplainInput,
    ExplainResult,
    LedgerOp,
    LedgerWorkload,
    NodeRecord,
    NodeWorkflowInput,
    Placement,
    PlacementRequest,
    PlacementResult,
    Preemption,
    ReplicasPreempted,
    Resources,
    UpsertNodeInput,
)
from cloudless.naming import cluster_workflow_id, node_workflow_id, task_queue, workload_workflow_id
from cloudless.spec import Workload, parse_workload
from policies import scheduler as sched

if TYPE_CHECKING:
    from workflows.cluster import ClusterWorkflow


class PlanRejected(Exception):
    """The ledger refused a plan (it would over-commit a node, or a node is not Ready)."""


#: How many decisions a placement tries before giving up on contention.
MAX_PLAN_ATTEMPTS = 8
#: Tries of a wake-up or eviction signal before giving up on it.
SIGNAL_ATTEMPTS = 5
#: Replicas one decision may make room for by preemption (each is one eviction plan).
MAX_PREEMPTIONS = 16


def _cause_type(err: WorkflowUpdateFailedError) -> str | None:
    cause = err.cause
    return cause.type if isinstance(cause, ApplicationError) else None


def _candidates(pick: sched.Pick) -> list[CandidateScore]:
    # model_construct: the values are ours and well-typed; validating three models per
    # placed replica was ~5 % of the coordinator's CPU in a 10,000-replica burst.
    return [
        CandidateScore.model_construct(
            node_id=c.node_id,
            score=round(c.score, 2),
            factors={k: round(v, 3) for k, v in c.factors.items()},
        )
        for c in pick.candidates
    ]


def _legacy_request(req: PlacementRequest) -> sched.PlacementRequest:
    """Inputs recorded before workflows sent the manifest carry only the old fields."""
    return sched.PlacementRequest(
        count=len(req.replica_ids),
        resources=resources(req.resources),
        workload_key=req.workload,
        runtime=req.runtime,
        node_selector=dict(req.node_selector),
        zones=frozenset(req.zones),
        strategy="spread" if req.strategy == "spread" else "binpack",
    )


@dataclasses.dataclass
class _Plan:
    """One decision turned into ledger terms."""

    allocations: list[Allocation]
    releases: list[Allocation]
    preemptions: list[Preemption]
    candidates: dict[str, sched.Pick]


class LedgerActivities:
    """Bound to one Temporal client and cluster by the coordinator worker; holds the
    coordinator's scheduler soft state."""

    def __init__(self, client: Client, cluster: str) -> None:
        self._client = client
        self._cluster = cluster
        self.scheduler = SchedulerState(lambda: self.snapshot(cluster))
        self.scheduler.poll_version = self._ledger_version
        self.writer = LedgerWriter(self._ledger)

    async def _ledger_version(self) -> int:
        from workflows.cluster import ClusterWorkflow

        return await self._ledger().query(ClusterWorkflow.version)

    def _request(self, workload: Workload, count: int) -> sched.PlacementRequest:
        """The scheduler request for ``count`` replicas, weighed by the cluster's settings."""
        return placement_request(workload, count, base_weights=self.scheduler.config.weights)

    def _ledger(self, cluster: str | None = None) -> WorkflowHandle[ClusterWorkflow, None]:
        from workflows.cluster import ClusterWorkflow

        return self._client.get_workflow_handle_for(
            ClusterWorkflow.run, cluster_workflow_id(cluster or self._cluster)
        )

    async def snapshot(self, cluster: str) -> ClusterSnapshot:
        from workflows.cluster import ClusterWorkflow

        compact = await self._ledger(cluster).query(ClusterWorkflow.snapshot)
        return compact.expand()

    async def commit(self, plan: CommitPlanInput) -> CommitPlanResult:
        """Commit through the batched writer; raises :class:`PlanRejected` as the ledger's
        validator would (the ledger deduplicates retried plans by ``plan_id``)."""
        result = await self.writer.submit(LedgerOp(commit=plan))
        if result.error_type == "PlanRejected":
            raise PlanRejected(result.error)
        if result.error_type or result.commit is None:
            raise ApplicationError(result.error, type=result.error_type or "LedgerError")
        if result.commit.applied:  # apply_batch does not echo a freshly applied plan
            return result.commit.model_copy(update={"allocations": plan.allocations})
        return result.commit

    async def _await_capacity(self, workload: str, res: Resources, version: int) -> bool:
        result = await self.writer.submit(
            LedgerOp(
                await_capacity=AwaitCapacityInput(workload=workload, resources=res, version=version)
            )
        )
        return bool(result.registered)

    async def _signal_workload(self, key: str, signal: str, arg: object) -> None:
        """Signal a workload, retrying briefly; never fails the caller.

        The write that prompted the signal is committed already, and a failed activity
        would be retried against the ledger's plan cache, which does not signal again. A
        lost wake-up costs the workload its retry backoff; a lost eviction is logged.
        """
        namespace, name = key.split("/", 1)
        handle = self._client.get_workflow_handle(workload_workflow_id(namespace, name))
        for attempt in range(SIGNAL_ATTEMPTS):
            try:
                await handle.signal(signal, arg)
                return
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    return  # a deleted workload needs no wake-up or eviction
                if attempt == SIGNAL_ATTEMPTS - 1:
                    activity.logger.warning("could not signal %s to %s: %s", signal, key, err)
                    return
                await asyncio.sleep(0.1 * 2**attempt)

    async def _wake(self, keys: list[str], reason: str) -> None:
        """Tell pending workloads that room may have appeared (instead of them polling)."""
        await asyncio.gather(
            *(
                self._signal_workload(k, "capacity_available", CapacityAvailable(reason=reason))
                for k in keys
            )
        )

    # ------------------------------------------------------------------ decisions

    def _decide(
        self, request: sched.PlacementRequest, index: sched.NodeIndex, replica_ids: list[str],
        req_resources: Resources, seed: int, allow_preemption: bool,
    ) -> tuple[sched.Decision, _Plan]:  # fmt: skip
        decision = sched.schedule(request, index, config=self.scheduler.config, rng_seed=seed)
        key = request.workload_key
        plan = _Plan([], [], [], {})
        for rid, pick in zip(replica_ids, decision.picks, strict=False):
            plan.allocations.append(
                Allocation(
                    replica_id=rid, workload=key, node_id=pick.node_id, resources=req_resources
                )
            )
            plan.candidates[rid] = pick
        unplaced = replica_ids[len(decision.picks) :]
        if unplaced and allow_preemption:
            self._preempt(request, index, decision, unplaced, req_resources, plan)
        return decision, plan

    def _preempt(
        self, request: sched.PlacementRequest, index: sched.NodeIndex, decision: sched.Decision,
        unplaced: list[str], req_resources: Resources, plan: _Plan,
    ) -> None:  # fmt: skip
        """Make room for unplaced replicas by evicting strictly lower-priority ones.

        Plans on a copy-on-write snapshot of the index with this decision's picks applied;
        the victims' releases and the new allocations then commit as one ledger plan, so
        the room cannot be taken by anyone else in between.
        """
        lower = {k: m for k, m in self.scheduler.workloads.items() if m.priority < request.priority}
        if not lower:
            return
        key = request.workload_key
        idx = index.snapshot()
        for pick in decision.picks:
            idx.allocate(pick.node_id, request.resources, workload_key=key)
        node_ids = idx.columns().node_ids
        running: list[sched.RunningReplica] = []
        for wkey, meta in sorted(lower.items()):
            slots, counts = idx.replica_slots([wkey])
            for slot, count in zip(slots.tolist(), counts.tolist(), strict=True):
                node_id = node_ids[slot]
                assert node_id is not None
                running.extend(
                    sched.RunningReplica(
                        replica_id=f"{wkey}@{node_id}#{i}",
                        node_id=node_id,
                        priority=meta.priority,
                        resources=resources(meta.resources),
                        workload_key=wkey,
                    )
                    for i in range(count)
                )
        if not running:
            return
        one = dataclasses.replace(request, count=1)
        evicted: Counter[tuple[str, str]] = Counter()
        for rid in unplaced[:MAX_PREEMPTIONS]:
            found = sched.plan_preemption(one, idx, running)
            if found is None:
                # Earlier evictions may have left room: place there without evicting more.
                again = sched.schedule(one, idx, config=self.scheduler.config, top_k=0)
                if not again.picks:
                    break
                node_id = again.picks[0].node_id
            else:
                node_id = found.node_id
                for v in found.victims:
                    idx.release(v.node_id, v.resources, workload_key=v.workload_key)
                    running.remove(v)
                    evicted[(v.workload_key, v.node_id)] += 1
                    plan.releases.append(
                        Allocation(
                            replica_id=f"preempted-by:{rid}",
                            workload=v.workload_key,
                            node_id=v.node_id,
                            resources=lower[v.workload_key].resources,
                        )
                    )
            idx.allocate(node_id, request.resources, workload_key=key)
            plan.allocations.append(
                Allocation(replica_id=rid, workload=key, node_id=node_id, resources=req_resources)
            )
        plan.preemptions = [
            Preemption(workload=w, node_id=n, count=c, priority=lower[w].priority)
            for (w, n), c in sorted(evicted.items())
        ]

    @activity.defn(name="place_replicas")
    async def place_replicas(self, req: PlacementRequest) -> PlacementResult:
        """Decide on the node index, commit through the ledger, re-sync and retry on a
        conflicting plan; replicas that fit nowhere are registered as pending so the
        ledger's next release or new node wakes the workload."""
        workload = parse_workload(req.manifest) if req.manifest else None
        meta = workload_meta(workload) if workload else LedgerWorkload(resources=req.resources)
        remaining = list(req.replica_ids)
        placements: list[Placement] = []
        preemptions: list[Preemption] = []
        reason = ""
        seed = zlib.crc32(req.plan_id.encode())
        sub = 0
        for attempt in range(MAX_PLAN_ATTEMPTS):
            index = await self.scheduler.current()
            version = self.scheduler.version
            request = (
                self._request(workload, len(remaining))
                if workload is not None
                else dataclasses.replace(_legacy_request(req), count=len(remaining))
            )
            decision, plan = self._decide(
                request, index, remaining, req.resources, seed + attempt, req.allow_preemption
            )
            reason = decision.reason
            if plan.allocations:
                commit = CommitPlanInput(
                    plan_id=req.plan_id if sub == 0 else f"{req.plan_id}.{sub}",
                    allocations=plan.allocations,
                    releases=plan.releases,
                    workloads={req.workload: meta},
                )
                reserved = self.scheduler.reserve(commit)
                try:
                    committed = await self.commit(commit)
                except PlanRejected as err:
                    self.scheduler.cancel(reserved)
                    activity.logger.info("plan %s rejected, re-syncing: %s", commit.plan_id, err)
                    self.scheduler.mark_stale()
                    continue
                except BaseException:
                    self.scheduler.cancel(reserved)
                    raise
                self.scheduler.committed(reserved, committed)
                sub += 1
                for a in committed.allocations:
                    pick = plan.candidates.get(a.replica_id)
                    placements.append(
                        Placement(
                            replica_id=a.replica_id,
                            node_id=a.node_id,
                            address=self._address(a.node_id),
                            score=round(pick.score, 2) if pick else None,
                            candidates=_candidates(pick) if pick else [],
                        )
                    )
                done = {a.replica_id for a in committed.allocations}
                remaining = [r for r in remaining if r not in done]
                if committed.applied and plan.preemptions:
                    preemptions += plan.preemptions
                    await self._evict(req.workload, meta.priority, plan.preemptions, commit.plan_id)
                if committed.woken:
                    await self._wake(committed.woken, f"{req.workload} released room")
                version = committed.version
            if not remaining:
                reason = ""
                break
            # Nothing (more) fits: wait for room, unless the ledger moved since we decided.
            if await self._await_capacity(req.workload, req.resources, version):
                break
            if not self.scheduler.behind and version == self.scheduler.version:
                await self.scheduler.resync()  # another coordinator changed the ledger
        else:
            if not placements:
                raise ApplicationError(
                    "placement kept conflicting with concurrent plans", type="PlanConflict"
                )
        return PlacementResult(
            placements=placements,
            unplaced=remaining,
            reason=reason if remaining else "",
            preemptions=preemptions,
        )

    def _address(self, node_id: str) -> str:
        return self.scheduler.addresses.get(node_id, "")

    async def _evict(
        self, by: str, priority: int, preemptions: list[Preemption], plan_id: str
    ) -> None:
        await asyncio.gather(
            *(
                self._signal_workload(
                    p.workload,
                    "replicas_preempted",
                    ReplicasPreempted(
                        node_id=p.node_id,
                        count=p.count,
                        plan_id=plan_id,
                        reason=(
                            f"preempted on {p.node_id} by {by} (priority {priority} > {p.priority})"
                        ),
                    ),
                )
                for p in preemptions
            )
        )

    @activity.defn(name="explain_placement")
    async def explain_placement(self, inp: ExplainInput) -> ExplainResult:
        """Dry run: decide for the manifest's replicas on the current index, commit nothing."""
        w = parse_workload(inp.manifest)
        index = await self.scheduler.current()
        request = self._request(w, w.spec.replicas)
        ids = [f"replica-{i + 1}" for i in range(w.spec.replicas)]
        decision = sched.schedule(request, index, config=self.scheduler.config, top_k=inp.top_k)
        lines = sched.format_decision(decision)
        if decision.unplaced:
            _, plan = self._decide(
                request, index.snapshot(), ids, workload_meta(w).resources, 0, True
            )
            for p in plan.preemptions:
                lines.append(
                    f"would preempt {p.count} replica(s) of {p.workload} (priority "
                    f"{p.priority}) on {p.node_id}"
                )
        return ExplainResult(
            lines=lines,
            placed=[
                Placement(
                    replica_id=rid,
                    node_id=pick.node_id,
                    address=self._address(pick.node_id),
                    score=round(pick.score, 2),
                    candidates=_candidates(pick),
                )
                for rid, pick in zip(ids, decision.picks, strict=False)
            ],
            unplaced=decision.unplaced,
            reason=decision.reason,
            ledger_version=self.scheduler.version,
        )

    @activity.defn(name="commit_plan")
    async def commit_plan(self, plan: CommitPlanInput) -> CommitPlanResult:
        try:
            result = await self.commit(plan)
        except PlanRejected as err:
            raise ApplicationError(str(err), type="PlanRejected", non_retryable=True) from err
        self.scheduler.plan_committed(plan, result)
        if result.woken:
            await self._wake(result.woken, "replicas were released")
        return result

    @activity.defn(name="publish_node")
    async def publish_node(self, inp: UpsertNodeInput) -> None:
        done = await self.writer.submit(LedgerOp(upsert=inp))
        if done.upsert is None:
            raise ApplicationError(done.error or "node upsert failed", type=done.error_type)
        result = done.upsert
        self.scheduler.node_changed(result)
        if result.woken:
            await self._wake(result.woken, f"node {inp.record.node_id} is {inp.state.value}")

    @activity.defn(name="consume_enrollment_token")
    async def consume_enrollment_token(self, inp: ConsumeTokenInput) -> None:
        """Record the token's single use through the batched writer (an enrollment burst
        would otherwise exceed the ledger's 10 in-flight Updates); a retry is a no-op."""
        done = await self.writer.submit(LedgerOp(consume_token=inp))
        if done.error_type in ("TokenReused", "NodeAlreadyEnrolled"):
            raise ApplicationError(done.error, type=done.error_type, non_retryable=True)
        if not done.consumed:
            raise ApplicationError(done.error or "token not recorded", type=done.error_type)

    @activity.defn(name="register_node")
    async def register_node(self, record: NodeRecord) -> None:
        """Start ``node/<id>`` or, for a node enrolling again, signal the running one."""
        from workflows.node import NodeWorkflow

        await self._client.start_workflow(
            NodeWorkflow.run,
            NodeWorkflowInput(cluster=self._cluster),
            id=node_workflow_id(record.node_id),
            task_queue=task_queue(self._cluster),
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal="enroll",
            start_signal_args=[EnrollSignal(record=record)],
        )
