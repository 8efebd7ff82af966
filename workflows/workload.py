"""``workload/<namespace>/<name>``: a workload's desired spec, its replicas and where they run.

The workflow reconciles toward the spec. Handlers (apply, scale, delete) only change the
desired state and mark the workflow dirty; the main loop is the one place that acts, so
no two reconciliations ever interleave. Placement is proposed by an activity and
committed through the ``cluster/<name>`` ledger; containers are started and stopped on
the agents by activities over gRPC/mTLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import string
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.agents import AgentActivities
    from activities.ledger import LedgerActivities
    from cloudless.errors import CloudlessError
    from cloudless.model import (
        Allocation,
        ApplyInput,
        ApplyResult,
        CapacityAvailable,
        CommitPlanInput,
        PlacementRequest,
        ReplicaExited,
        ReplicaPhase,
        ReplicaReadiness,
        ReplicaRecord,
        ReplicasLost,
        ReplicasPreempted,
        RunReplicaInput,
        RunReplicaResult,
        RunReplicasInput,
        ScaleInput,
        StopReplicaInput,
        WaitInput,
        WorkloadPhase,
        WorkloadStatus,
        WorkloadWorkflowInput,
    )
    from cloudless.naming import SA_NAMESPACE, SA_NODE, SA_PHASE, SA_WORKLOAD
    from cloudless.workloads import WorkloadView, check_supported, scaled_manifest, view_of
    from policies.disruption import resolve_max_unavailable, retire_budget

MAX_HISTORY_EVENTS = 8_000
MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0
MAX_PREEMPTIONS_KEPT = 64
_ALPHABET = string.ascii_lowercase + string.digits

_AGENT_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=5,
    non_retryable_error_types=["ReplicaStartFailed", "AgentAuthFailed", "InvalidSpec"],
)
#: Replica starts per ``run_replicas`` activity (≈ 200 bytes each plus one manifest, far
#: below the 2 MB payload limit); larger workloads start in several concurrent batches.
RUN_BATCH = 500
#: The batch retries each replica itself; a retry of the whole batch is for a lost worker.
_BATCH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
)
_LEDGER_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=100),
    maximum_interval=timedelta(seconds=5),
)


@workflow.defn(name="WorkloadWorkflow")
class WorkloadWorkflow:
    @workflow.init
    def __init__(self, inp: WorkloadWorkflowInput) -> None:
        self._cluster = inp.cluster
        carried = inp.carried
        self._manifest = carried.manifest if carried else inp.manifest
        self._view: WorkloadView = view_of(self._manifest)
        self._generation = carried.generation if carried else 1
        self._replicas: list[ReplicaRecord] = list(carried.replicas) if carried else []
        self._message = carried.message if carried else ""
        self._backoff = inp.placement_backoff_seconds
        self._dirty = True
        self._deleting = False
        self._reconciling = False
        self._reconciled_generation = 0
        self._search_attributes: tuple[str, tuple[str, ...]] | None = None
        self._applied = carried is not None
        self._preempted_by: list[str] = []  # recent preempting plans, for idempotent signals
        # Placement epochs only grow, also across continue-as-new.
        self._epoch = max([carried.epoch if carried else 0, *(r.epoch for r in self._replicas)])

    # ------------------------------------------------------------------ main loop

    @workflow.run
    async def run(self, inp: WorkloadWorkflowInput) -> WorkloadStatus:
        while True:
            timeout = timedelta(seconds=self._backoff) if self._backoff else None
            try:
                await workflow.wait_condition(
                    lambda: self._dirty or self._deleting or self._should_continue_as_new(),
                    timeout=timeout,
                )
            except TimeoutError:
                self._dirty = True  # retry pending or failed replicas after the backoff
            if self._deleting:
                await self._teardown()
                return self.status()
            if self._dirty:
                self._dirty = False
                self._reconciling = True
                try:
                    await self._reconcile()
                finally:
                    self._reconciling = False
                    self._reconciled_generation = self._generation
                self._publish_search_attributes()
            if self._should_continue_as_new():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    WorkloadWorkflowInput(
                        cluster=self._cluster,
                        manifest=self._manifest,
                        carried=self.status(),
                        placement_backoff_seconds=self._backoff,
                    )
                )

    def _is_ready(self, r: ReplicaRecord) -> bool:
        """Running and, as far as its agent reported, passing its probes. Without a report
        yet, a replica with a readiness/startup probe is not ready; one without is."""
        if r.phase != ReplicaPhase.RUNNING:
            return False
        return r.ready if r.ready is not None else not self._view.readiness_gated

    def _is_done(self, r: ReplicaRecord) -> bool:
        """Ran to completion: counts toward the desired replicas but is not ready."""
        return r.phase == ReplicaPhase.COMPLETED

    def _is_current(self, r: ReplicaRecord) -> bool:
        """Up to date and staying: matches the template and is not being evicted."""
        return r.spec_hash == self._view.template_hash and not r.evicting

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        return not self._reconciling and (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() > MAX_HISTORY_EVENTS
        )

    async def _reconcile(self) -> None:
        view = self._view
        # 1. Failed replicas free their place; replacements are created below.
        failed = [r for r in self._replicas if r.phase == ReplicaPhase.FAILED]
        if failed:
            await self._remove(failed)
        current = [r for r in self._replicas if self._is_current(r)]
        outdated = [r for r in self._replicas if not self._is_current(r)]
        # 2. Scale down: unplaced replicas go first, then the newest.
        excess = len(current) - view.replicas
        if excess > 0:
            age = {r.replica_id: i for i, r in enumerate(self._replicas)}
            ordered = sorted(
                current, key=lambda r: (r.phase != ReplicaPhase.PENDING, -age[r.replica_id])
            )
            victims = ordered[:excess]
            await self._remove(victims)
            current = [r for r in current if r not in victims]
        # 3. Scale up: new records, placed in one batch through the ledger.
        for _ in range(view.replicas - len(current)):
            record = ReplicaRecord(
                replica_id=self._new_replica_id(),
                generation=self._generation,
                spec_hash=view.template_hash,
                resources=view.resources,
            )
            self._replicas.append(record)
            current.append(record)
        pending = [r for r in current if r.phase == ReplicaPhase.PENDING]
        if pending:
            unplaced = await self._place(pending)
            if unplaced and outdated:
                # No room to surge: make room by retiring old replicas, within the
                # disruption budget (minAvailable, maxUnavailable); then retry.
                retire = self._retirement(outdated, len(unplaced))
                if retire:
                    await self._remove(retire)
                    outdated = [r for r in outdated if r not in retire]
                    self._dirty = True
        # 4. Start everything placed but not yet running, concurrently.
        starting = [r for r in current if r.phase == ReplicaPhase.STARTING]
        if starting:
            chunks = [starting[i : i + RUN_BATCH] for i in range(0, len(starting), RUN_BATCH)]
            await asyncio.gather(*(self._start_batch(c) for c in chunks))
        # Completed replicas keep their record but give their room back.
        done = [r for r in self._replicas if self._is_done(r) and not r.released]
        if done:
            await self._release(done)
        # 5. Old-spec replicas go once the new spec is fully up (or done).
        if outdated and all(self._is_ready(r) or self._is_done(r) for r in current):
            await self._remove(outdated)
        unhealthy = any(r.phase in (ReplicaPhase.PENDING, ReplicaPhase.FAILED) for r in current)
        if unhealthy:
            self._backoff = min(MAX_BACKOFF, max(MIN_BACKOFF, self._backoff * 2))
        else:
            self._backoff = 0.0
            self._message = ""

    def _retirement(self, outdated: list[ReplicaRecord], room: int) -> list[ReplicaRecord]:
        """Old replicas to stop before their replacements run, to free room for ``room``
        unplaced ones. Only a full cluster gets here; the disruption budget
        (``policies.disruption``) bounds how many *serving* replicas go. Old replicas that
        serve nothing (not ready) cost no availability, so they go first."""
        view = self._view
        budget = retire_budget(
            desired=view.replicas,
            available=sum(1 for r in self._replicas if self._is_ready(r)),
            min_available=view.min_available,
            max_unavailable=resolve_max_unavailable(view.max_unavailable, view.replicas),
        )
        idle = [r for r in outdated if not self._is_ready(r) and not self._is_done(r)]
        serving = [r for r in outdated if self._is_ready(r)]
        return (idle + serving[:budget])[:room]

    async def _place(self, pending: list[ReplicaRecord]) -> list[ReplicaRecord]:
        view = self._view
        result = await workflow.execute_activity_method(
            LedgerActivities.place_replicas,
            PlacementRequest(
                cluster=self._cluster,
                workload=view.key,
                plan_id=str(workflow.uuid4()),
                replica_ids=[r.replica_id for r in pending],
                resources=view.resources,
                manifest=self._manifest,
            ),
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=_LEDGER_RETRY,
        )
        by_id = {p.replica_id: p for p in result.placements}
        unplaced = []
        for r in pending:
            p = by_id.get(r.replica_id)
            if p is None:
                r.message = result.reason
                unplaced.append(r)
            else:
                r.node_id, r.address = p.node_id, p.address
                r.phase, r.message = ReplicaPhase.STARTING, ""
                self._epoch += 1
                r.epoch = self._epoch
                r.score, r.candidates = p.score, list(p.candidates)
        if unplaced:
            self._message = f"{len(unplaced)} replica(s) pending: {result.reason}"
        for pre in result.preemptions:
            workflow.logger.info(
                "preempted %d replica(s) of %s on %s", pre.count, pre.workload, pre.node_id
            )
        return unplaced

    def _run_input(self, r: ReplicaRecord) -> RunReplicaInput:
        """One replica of a ``run_replicas`` batch (the manifest travels once, in the batch)."""
        view = self._view
        return RunReplicaInput(
            node_id=r.node_id,
            address=r.address,
            namespace=view.namespace,
            workload=view.name,
            replica_id=r.replica_id,
            generation=r.generation,
            spec_hash=r.spec_hash,
            manifest={},
            epoch=r.epoch,
        )

    async def _start_batch(self, chunk: list[ReplicaRecord]) -> None:
        """Start replicas through one ``run_replicas`` activity (it retries each replica);
        one activity per replica cost three history events and two tasks apiece."""
        try:
            res = await workflow.execute_activity_method(
                AgentActivities.run_replicas,
                RunReplicasInput(
                    manifest=self._manifest, replicas=[self._run_input(r) for r in chunk]
                ),
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(seconds=120),
                retry_policy=_BATCH_RETRY,
            )
        except ActivityError as err:
            cause = err.cause
            message = cause.message if isinstance(cause, ApplicationError) else str(err)
            for r in chunk:
                self._start_failed(r, message)
            return
        by_id = {o.replica_id: o for o in res.outcomes}
        for r in chunk:
            o = by_id.get(r.replica_id)
            if o is not None and o.result is not None:
                self._started(r, o.result)
            else:
                self._start_failed(r, o.error if o is not None else "no start outcome")

    def _start_failed(self, r: ReplicaRecord, message: str) -> None:
        if r.lost or r.preempted:
            return
        r.phase, r.message = ReplicaPhase.FAILED, message
        self._message = f"replica {r.replica_id} failed on {r.node_id}: {r.message}"

    def _started(self, r: ReplicaRecord, res: RunReplicaResult) -> None:
        if r.lost or r.preempted or self._is_done(r):
            # The node was lost (or the room preempted) while the start was in flight, or
            # the replica already ran to completion (its exit outran the start's answer).
            return
        r.phase, r.message = res.phase, res.message
        r.runtime_id, r.started_at = res.runtime_id, res.started_at
        if res.phase == ReplicaPhase.STOPPED and self._completes():
            r.phase, r.message = ReplicaPhase.COMPLETED, "completed (exit code 0)"
        elif res.phase != ReplicaPhase.RUNNING:
            r.phase = ReplicaPhase.FAILED
            self._message = f"replica {r.replica_id} failed on {r.node_id}: {res.message}"

    async def _remove(self, victims: list[ReplicaRecord]) -> None:
        """Stop the replicas on their agents, then release their allocations in one plan.

        Preempted replicas were released by the preempting plan already; which replicas
        those are is read only after the stops, since a preemption may arrive meanwhile.
        """
        placed = [r for r in victims if r.node_id]
        await asyncio.gather(*(self._stop(r) for r in placed if not r.lost))
        placed = [r for r in placed if not r.preempted and not r.released]
        if placed:
            await workflow.execute_activity_method(
                LedgerActivities.commit_plan,
                CommitPlanInput(
                    plan_id=str(workflow.uuid4()),
                    releases=[
                        Allocation(
                            replica_id=r.replica_id,
                            workload=self._view.key,
                            node_id=r.node_id,
                            resources=r.resources,
                        )
                        for r in placed
                    ],
                ),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_LEDGER_RETRY,
            )
        gone = {r.replica_id for r in victims}
        self._replicas = [r for r in self._replicas if r.replica_id not in gone]

    def _completes(self) -> bool:
        """Whether a clean exit is the end of a replica (restartPolicy Never/OnFailure)."""
        return self._view.workload.spec.restart_policy != "Always"

    async def _release(self, done: list[ReplicaRecord]) -> None:
        """Give completed replicas' allocations back to the ledger, once each."""
        await workflow.execute_activity_method(
            LedgerActivities.commit_plan,
            CommitPlanInput(
                plan_id=str(workflow.uuid4()),
                releases=[
                    Allocation(
                        replica_id=r.replica_id,
                        workload=self._view.key,
                        node_id=r.node_id,
                        resources=r.resources,
                    )
                    for r in done
                ],
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_LEDGER_RETRY,
        )
        for r in done:
            r.released = True

    async def _stop(self, r: ReplicaRecord) -> None:
        try:
            await workflow.execute_activity_method(
                AgentActivities.stop_replica,
                StopReplicaInput(
                    node_id=r.node_id, address=r.address, replica_id=r.replica_id, epoch=r.epoch
                ),
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=_AGENT_RETRY,
            )
        except ActivityError as err:
            # An unreachable agent must not wedge a delete; the agent reconciles stale
            # replicas against the control plane when it comes back.
            workflow.logger.warning("could not stop %s on %s: %s", r.replica_id, r.node_id, err)
        r.phase = ReplicaPhase.STOPPED

    async def _teardown(self) -> None:
        self._reconciling = True
        await self._remove(list(self._replicas))
        self._reconciling = False
        self._publish_search_attributes()

    def _new_replica_id(self) -> str:
        taken = {r.replica_id for r in self._replicas}
        rand = workflow.random()
        while True:
            suffix = "".join(rand.choice(_ALPHABET) for _ in range(5))
            rid = f"{self._view.namespace}-{self._view.name}-{suffix}"
            if rid not in taken:
                return rid

    def _publish_search_attributes(self) -> None:
        phase = self.status().phase.value
        nodes = tuple(sorted({r.node_id for r in self._replicas if r.node_id}))
        if self._search_attributes == (phase, nodes):
            return
        self._search_attributes = (phase, nodes)
        workflow.upsert_search_attributes(
            [
                SA_NAMESPACE.value_set(self._view.namespace),
                SA_WORKLOAD.value_set(self._view.name),
                SA_PHASE.value_set(phase),
                SA_NODE.value_set(list(nodes)),
            ]
        )

    # ------------------------------------------------------------------ handlers

    @workflow.update
    def apply(self, inp: ApplyInput) -> ApplyResult:
        return self._set_manifest(inp.manifest)

    def _set_manifest(self, manifest: dict[str, Any]) -> ApplyResult:
        view = view_of(manifest)
        first, self._applied = not self._applied, True
        if view.spec_hash == self._view.spec_hash:
            return ApplyResult(
                generation=self._generation,
                changed=False,
                spec_hash=view.spec_hash,
                created=first and self._generation == 1,
            )
        self._manifest, self._view = manifest, view
        self._generation += 1
        self._dirty = True
        return ApplyResult(generation=self._generation, changed=True, spec_hash=view.spec_hash)

    @apply.validator
    def _validate_apply(self, inp: ApplyInput) -> None:
        if self._deleting:
            raise ApplicationError(
                f"workload {self._view.key} is being deleted; wait for the delete to finish "
                "and apply again",
                type="WorkloadDeleting",
            )
        try:
            view = view_of(inp.manifest)
            check_supported(view)
        except CloudlessError as err:
            raise ApplicationError(str(err), type="InvalidSpec") from err
        if view.key != self._view.key:
            raise ApplicationError(
                f"manifest names {view.key}, but this workflow manages {self._view.key}",
                type="InvalidSpec",
            )

    @workflow.update
    def scale(self, inp: ScaleInput) -> ApplyResult:
        return self._set_manifest(scaled_manifest(self._manifest, inp.replicas))

    @scale.validator
    def _validate_scale(self, inp: ScaleInput) -> None:
        if self._deleting:
            raise ApplicationError(
                f"workload {self._view.key} is being deleted", type="WorkloadDeleting"
            )
        try:
            view_of(scaled_manifest(self._manifest, inp.replicas))
        except CloudlessError as err:
            raise ApplicationError(str(err), type="InvalidSpec") from err

    @workflow.signal
    def replicas_lost(self, sig: ReplicasLost) -> None:
        """A node went away (replace its replicas) or is draining (move them, surge first)."""
        for r in self._replicas:
            if r.node_id != sig.node_id or (
                sig.replica_ids and r.replica_id not in sig.replica_ids
            ):
                continue
            if self._is_done(r):
                continue  # finished: nothing is lost, nothing to move
            if sig.evacuate:
                r.evicting = True
            else:
                r.lost, r.phase, r.message = True, ReplicaPhase.FAILED, sig.reason
        self._message = sig.reason
        self._backoff = 0.0  # replace at once; backoff is for replicas failing to start
        self._dirty = True

    @workflow.signal
    def capacity_available(self, sig: CapacityAvailable) -> None:
        """The ledger saw room appear (a release, a node Ready): place pending replicas now
        instead of waiting out the retry backoff."""
        if any(r.phase == ReplicaPhase.PENDING for r in self._replicas):
            self._backoff = 0.0
            self._dirty = True

    @workflow.signal
    def replicas_preempted(self, sig: ReplicasPreempted) -> None:
        """A higher-priority replica took ``count`` of our places on a node; the ledger has
        released them already. Stop that many replicas there and place replacements."""
        if sig.plan_id and sig.plan_id in self._preempted_by:
            return
        if sig.plan_id:
            self._preempted_by = [*self._preempted_by, sig.plan_id][-MAX_PREEMPTIONS_KEPT:]
        age = {r.replica_id: i for i, r in enumerate(self._replicas)}
        here = [
            r
            for r in self._replicas
            if r.node_id == sig.node_id and not r.preempted and not self._is_done(r)
        ]
        # Prefer replicas that are not serving yet, then the newest.
        here.sort(key=lambda r: (r.phase == ReplicaPhase.RUNNING, -age[r.replica_id]))
        for r in here[: sig.count]:
            r.preempted, r.phase, r.message = True, ReplicaPhase.FAILED, sig.reason
        self._message = sig.reason
        self._backoff = 0.0
        self._dirty = True

    @workflow.signal
    def replica_exited(self, sig: ReplicaExited) -> None:
        """The agent gave up on a replica. A failure is replaced (with the workload's
        backoff); a clean exit under restartPolicy Never/OnFailure completes it: the record
        stays, its room is released, and it is never replaced."""
        for r in self._replicas:
            if r.replica_id != sig.replica_id or r.node_id != sig.node_id:
                continue
            code = "" if sig.exit_code is None else f" (exit code {sig.exit_code})"
            if sig.phase == ReplicaPhase.FAILED.value:
                r.phase, r.message = (
                    ReplicaPhase.FAILED,
                    f"exited{code}: {sig.message}".rstrip(": "),
                )
                self._message = f"replica {r.replica_id} failed on {r.node_id}{code}"
                self._dirty = True
            elif r.phase in (ReplicaPhase.RUNNING, ReplicaPhase.STARTING):
                if self._completes():  # done: keep the record, release its room
                    r.phase, r.message = ReplicaPhase.COMPLETED, f"completed{code}"
                    self._dirty = True
                else:  # restartPolicy Always wants it running: replace it
                    r.phase, r.message = ReplicaPhase.FAILED, f"exited{code}"
                    self._dirty = True

    @workflow.signal
    def replica_readiness(self, sig: ReplicaReadiness) -> None:
        """Its agent's probes changed a replica's readiness (sent only on change).

        Becoming ready may complete a rolling update (old replicas go once the new ones are
        ready), so that case reconciles again.
        """
        for r in self._replicas:
            if r.replica_id != sig.replica_id or r.node_id != sig.node_id:
                continue
            became_ready = sig.ready and not self._is_ready(r)
            r.ready, r.ready_message = sig.ready, sig.message
            if became_ready and any(not self._is_current(o) for o in self._replicas):
                self._dirty = True

    @workflow.update
    def delete(self) -> int:
        self._deleting = True
        return self._generation

    @workflow.update
    async def wait_settled(self, inp: WaitInput) -> WorkloadStatus:
        """Return once the given generation has been fully reconciled (or on timeout)."""
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: self._settled(inp), timeout=timedelta(seconds=inp.timeout_seconds)
            )
        return self.status()

    def _settled(self, inp: WaitInput) -> bool:
        if self._reconciled_generation < inp.generation or self._dirty or self._reconciling:
            return False
        if inp.all_ready:
            current = [r for r in self._replicas if self._is_current(r)]
            if len(self._replicas) != self._view.replicas or any(
                not self._is_ready(r) and not self._is_done(r) for r in current
            ):
                return False
        return not (inp.avoid_node and any(r.node_id == inp.avoid_node for r in self._replicas))

    @workflow.query
    def status(self) -> WorkloadStatus:
        view = self._view
        current = [r for r in self._replicas if self._is_current(r)]
        ready = sum(1 for r in current if self._is_ready(r))
        done = sum(1 for r in current if self._is_done(r))
        complete = len(self._replicas) == view.replicas
        if self._deleting:
            phase = WorkloadPhase.DELETING if self._replicas else WorkloadPhase.DELETED
        elif complete and done == view.replicas > 0:
            phase = WorkloadPhase.COMPLETED
        elif complete and ready + done == view.replicas:
            phase = WorkloadPhase.AVAILABLE
        elif any(r.phase == ReplicaPhase.FAILED for r in current):
            phase = WorkloadPhase.DEGRADED
        elif current and all(r.phase == ReplicaPhase.PENDING for r in current) and not self._dirty:
            phase = WorkloadPhase.PENDING
        else:
            phase = WorkloadPhase.PROGRESSING
        return WorkloadStatus(
            namespace=view.namespace,
            name=view.name,
            generation=self._generation,
            spec_hash=view.spec_hash,
            desired=view.replicas,
            ready=ready,
            phase=phase,
            message=self._message,
            replicas=list(self._replicas),
            manifest=self._manifest,
            epoch=self._epoch,
        )
