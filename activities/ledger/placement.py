"""Placement: decide on the coordinator's node index, commit through the ledger.

The scheduler (:mod:`policies.scheduler`) decides on the index the coordinator keeps in
memory (:mod:`activities.scheduler_index`); the decision becomes one ledger plan, which the
ledger's validator accepts or rejects (then the index re-syncs and the placement
decides again). Replicas that fit nowhere may take the room of lower-priority ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import zlib
from collections import Counter

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.ledger.base import LedgerBase, PlanRejected
from activities.scheduler_inputs import placement_request, resources, workload_meta
from cloudless.contracts import workload
from cloudless.contracts.limits import MAX_EXPLAINED_REPLICAS
from cloudless.model import (
    Allocation,
    CandidateScore,
    CommitPlanInput,
    ExplainInput,
    ExplainResult,
    Placement,
    PlacementRequest,
    PlacementResult,
    Preemption,
    ReplicasPreempted,
    Resources,
)
from cloudless.spec import Workload
from policies import scheduler as sched

#: How many decisions a placement tries before giving up on contention.
MAX_PLAN_ATTEMPTS = 8
#: Replicas one decision may make room for by preemption (each is one eviction plan).
MAX_PREEMPTIONS = 16


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


@dataclasses.dataclass
class _Plan:
    """One decision turned into ledger terms."""

    allocations: list[Allocation]
    releases: list[Allocation]
    preemptions: list[Preemption]
    candidates: dict[str, sched.Pick]


class PlacementActivities(LedgerBase):
    def _request(
        self, spec: Workload, count: int, avoid: frozenset[str] = frozenset()
    ) -> sched.PlacementRequest:
        """The scheduler request for ``count`` replicas, weighed by the cluster's settings,
        ruling out the ``avoid`` nodes."""
        request = placement_request(spec, count, base_weights=self.scheduler.config.weights)
        return dataclasses.replace(request, avoid_nodes=avoid) if avoid else request

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
        ledger's next release or new node wakes the workload.

        ``avoid_nodes`` (where the replicas crash-looped) is a soft anti-affinity: they are
        placed elsewhere if anything fits, else decided again without it (and only then
        may they preempt), since a node that crashed them beats no node at all.
        """
        spec = req.manifest
        avoid = frozenset(req.avoid_nodes)
        meta = workload_meta(spec)
        remaining = list(req.replica_ids)
        placements: list[Placement] = []
        preemptions: list[Preemption] = []
        reason = ""
        seed = zlib.crc32(req.plan_id.encode())
        sub = 0
        for attempt in range(MAX_PLAN_ATTEMPTS):
            index = await self.scheduler.current()
            version = self.scheduler.version
            request = self._request(spec, len(remaining), avoid)
            decision, plan = self._decide(
                request,
                index,
                remaining,
                req.resources,
                seed + attempt,
                req.allow_preemption and not avoid,
            )
            reason = decision.reason
            if plan.allocations:
                commit = CommitPlanInput(
                    plan_id=req.plan_id if sub == 0 else f"{req.plan_id}.{sub}",
                    allocations=plan.allocations,
                    releases=plan.releases,
                    workloads={req.workload: meta},
                    owners={req.workload: req.owner} if req.owner else {},
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
                    # The workload keeps explanations on its newest placements only; the
                    # rest would only grow this result (~1 KiB each) toward Temporal's limit.
                    explain = pick is not None and len(placements) < MAX_EXPLAINED_REPLICAS
                    placements.append(
                        Placement(
                            replica_id=a.replica_id,
                            node_id=a.node_id,
                            address=self._address(a.node_id),
                            score=round(pick.score, 2) if pick else None,
                            candidates=_candidates(pick) if explain and pick else [],
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
            if avoid:  # nothing (more) fits elsewhere: the avoided nodes are better than none
                activity.logger.info("%s: no room away from %s", req.workload, sorted(avoid))
                avoid = frozenset()
                continue
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
                    workload.REPLICAS_PREEMPTED,
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
        w = inp.manifest
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
                    candidates=_candidates(pick) if i < MAX_EXPLAINED_REPLICAS else [],
                )
                for i, (rid, pick) in enumerate(zip(ids, decision.picks, strict=False))
            ],
            unplaced=decision.unplaced,
            reason=decision.reason,
            ledger_version=self.scheduler.version,
        )
