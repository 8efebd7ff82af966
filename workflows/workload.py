"""``workload/<namespace>/<name>``: a workload's desired spec, its replicas and where they run.

The workflow reconciles toward the spec. Handlers (apply, scale, delete, signals) only
change the state and mark the workflow dirty; the main loop is the one place that acts, so
no two reconciliations ever interleave. What to do is decided by the pure reconciler,
:mod:`policies.reconcile`, stage by stage; this module only executes its actions:
placement is proposed by an activity and committed through the ``cluster/<name>`` ledger,
containers are started and stopped on the agents by activities over gRPC/mTLS.

All durable state is one :class:`~cloudless.model.WorkloadState`, carried whole across
continue-as-new; the ``status`` query is derived from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import string
from datetime import timedelta
from typing import assert_never

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.agents import AgentActivities
    from activities.ledger import LedgerActivities
    from activities.membership import MembershipActivities
    from cloudless.contracts import limits
    from cloudless.contracts import workload as workload_contract
    from cloudless.contracts.names import SA_NAMESPACE, SA_NODE, SA_PHASE, SA_WORKLOAD
    from cloudless.errors import CloudlessError
    from cloudless.model import (
        Allocation,
        ApplyInput,
        ApplyResult,
        CapacityAvailable,
        ClaimWorkloadInput,
        CommitPlanInput,
        LeftoversInput,
        PlacementRequest,
        ReconcileRequest,
        ReplicaCrashed,
        ReplicaExited,
        ReplicaPhase,
        ReplicaReadiness,
        ReplicaRecord,
        ReplicasLost,
        ReplicasPreempted,
        RescheduleEvent,
        RunReplicaInput,
        RunReplicaResult,
        RunReplicasInput,
        ScaleInput,
        StopReplicaInput,
        WaitInput,
        WorkloadState,
        WorkloadStatus,
        WorkloadWorkflowInput,
    )
    from cloudless.spec import Workload, check_limits
    from cloudless.workloads import WorkloadView, check_supported, scaled, view_of
    from policies.disruption import resolve_max_unavailable
    from policies.reconcile import (
        MAX_BACKOFF,
        MIN_BACKOFF,
        Action,
        Create,
        Desired,
        Hold,
        Place,
        Release,
        RemoveFailed,
        RemoveOutdated,
        RemoveRescheduled,
        Reschedule,
        Retire,
        ScaleDown,
        Settle,
        Stage,
        Start,
        exit_outcome,
        fully_ready,
        is_current,
        is_done,
        is_ready,
        preemption_victims,
        reconcile,
        start_outcome,
        summarize,
    )
    from policies.reschedule import AVOID_KEPT, CRASHES_KEPT, RESCHEDULES_KEPT, recent

MAX_HISTORY_EVENTS = 8_000
#: Patch (issue #10): a stop given up on an unreachable agent asks its node to reconcile,
#: so the released replica is stopped even if the node never leaves Ready.
GIVEN_UP_STOPS_RECONCILE = "given-up-stops-reconcile"
#: Replica ids a reconcile request names (for the node's log; the reconcile finds them all).
MAX_IDS_REPORTED = 20
MAX_PREEMPTIONS_KEPT = 64
#: ``workflow.patched`` id of the claim a first run makes before anything else (runs
#: started before it never claimed: their plans carry no owner).
CLAIM_PATCH = "claim-workload"
#: Crash-loop reschedules and holds kept in the state for ``describe``.
MAX_RESCHEDULE_EVENTS = 20
#: Crash-loop rescheduling (``spec.reschedule``) changed what a pass does with a replica
#: that failed by crashing; histories recorded before it replay without it.
CRASH_RESCHEDULE_PATCH = "crash-reschedule"
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


def desired_of(view: WorkloadView) -> Desired:
    """What the reconciler needs of a manifest (derived once per applied spec)."""
    return Desired(
        replicas=view.replicas,
        template_hash=view.template_hash,
        min_available=view.min_available,
        max_unavailable=resolve_max_unavailable(view.max_unavailable, view.replicas),
        readiness_gated=view.readiness_gated,
        completes=view.workload.spec.restart_policy != "Always",
        reschedule=view.workload.spec.reschedule_policy,
    )


#: workflow.patched id of the checks of a new run's start manifest.
_PATCH_START_CHECKS = "start-manifest-checks"


def _refusal(manifest: Workload) -> str | None:
    """Why an apply of ``manifest`` is refused (over a limit, or asking for a setting its
    runtime does not enforce), else None; the same checks the client library makes."""
    try:
        view = view_of(manifest)
        check_limits(manifest, f"workload {view.key}")
        check_supported(view)
        # What the workflow's payloads assume of a manifest (the state budget), measured as
        # it travels; the spec's own bound normally refuses first.
        limits.check_manifest(manifest, view.key, workflow.payload_converter())
    except CloudlessError as err:
        return str(err)
    return None


@workflow.defn(name=workload_contract.WORKFLOW.name)
class WorkloadWorkflow:
    @workflow.init
    def __init__(self, inp: WorkloadWorkflowInput) -> None:
        self._cluster = inp.cluster
        self._max_history_events = inp.max_history_events or MAX_HISTORY_EVENTS
        self._state = (
            inp.state if inp.state is not None else WorkloadState(manifest=inp.first_manifest)
        )
        self._view: WorkloadView = view_of(self._state.manifest)
        self._desired = desired_of(self._view)
        # Not state: a new run reconciles first, and the rest is bookkeeping of this run.
        self._dirty = True
        self._reconciling = False
        self._reconciled_generation = 0
        self._search_attributes: tuple[str, tuple[str, ...]] | None = None
        self._reschedules_crash_loops: bool | None = None  # asked once per run

    # ------------------------------------------------------------------ main loop

    @workflow.run
    async def run(self, inp: WorkloadWorkflowInput) -> WorkloadStatus:
        # A client that skipped the checks may start this workflow with a manifest whose
        # apply the validator then refuses (update-with-start starts it all the same): run
        # nothing of it. (Patched: histories from before the check replay without it.)
        if inp.state is None and workflow.patched(_PATCH_START_CHECKS):
            refusal = _refusal(self._state.manifest)
            if refusal is not None:
                workflow.logger.warning("refused the start manifest: %s", refusal)
                self._dirty = False
                return self.status()
        if inp.state is None and workflow.patched(CLAIM_PATCH):
            await self._claim()
        if self._state.orphans and self._state.deleting and not self._state.owner:
            await self._take_over_leftovers()
        while True:
            timeout = self._state.backoff_seconds or None
            # A crash-looping replica's reschedule or freed attempt (a teardown has none:
            # a failed one waits out its backoff).
            if self._state.wake_at and not self._state.deleting:
                due = self._state.wake_at - workflow.now().timestamp()
                if due <= 0:
                    self._dirty = True
                timeout = min(timeout or due, due)
            try:
                await workflow.wait_condition(
                    self._due,
                    timeout=timedelta(seconds=timeout) if timeout and timeout > 0 else None,
                )
            except TimeoutError:
                self._dirty = True  # retry pending or failed replicas after the backoff
            if self._state.deleting:
                self._dirty = False
                if await self._teardown():
                    return self.status()
            elif self._dirty:
                self._dirty = False
                self._reconciling = True
                try:
                    await self._reconcile()
                finally:
                    self._reconciling = False
                    self._reconciled_generation = self._state.generation
                self._keep_within_budget()
                self._publish_search_attributes()
            if self._should_continue_as_new():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    WorkloadWorkflowInput(
                        cluster=self._cluster,
                        state=self._state,
                        max_history_events=inp.max_history_events,
                    )
                )

    def _due(self) -> bool:
        """Something to do now: a reconcile, a delete (unless its last try failed and
        waits out the backoff), or a continue-as-new."""
        deleting = self._state.deleting and not self._state.blocked
        return self._dirty or deleting or self._should_continue_as_new()

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        return not self._reconciling and (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() > self._max_history_events
        )

    async def _claim(self) -> None:
        """Claim the workload in the ledger before placing anything (first run only).

        No earlier run of this workflow id is running (Temporal runs one at a time), so
        whatever the ledger still holds for the workload was left by runs that are over
        (terminated, failed, deleted before they released it): the claim releases it,
        and the owner token it returns makes the ledger refuse their late plans.
        """
        result = await workflow.execute_activity_method(
            LedgerActivities.claim_workload,
            ClaimWorkloadInput(workload=self._view.key),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_LEDGER_RETRY,
        )
        self._state.owner = result.owner

    async def _reconcile(self) -> None:
        """One pass: each stage is decided on the records as they are when it begins.

        An activity that fails for good (a non-retryable error) does not end the workflow:
        the pass records why in ``blocked`` (the workload is Stuck) and carries on; the
        next pass, after the backoff, tries again and clears it once it gets through.
        """
        self._state.blocked = ""
        desired = self._desired
        if not self._crash_rescheduling():
            desired = dataclasses.replace(desired, reschedule=None)
        for stage in Stage:
            actions = reconcile(
                stage,
                desired,
                self._state.replicas,
                backoff=self._state.backoff_seconds,
                now=workflow.now().timestamp(),
            )
            for action in actions:
                await self._execute(action)

    def _crash_rescheduling(self) -> bool:
        """Whether this run reschedules crash loops (``spec.reschedule``): a run whose
        history began before that existed keeps replacing failed replicas at once."""
        if self._reschedules_crash_loops is None:
            self._reschedules_crash_loops = workflow.patched(CRASH_RESCHEDULE_PATCH)
        return self._reschedules_crash_loops

    async def _execute(self, action: Action) -> None:
        match action:
            case Reschedule(ids):
                for r in self._records(ids):
                    self._reschedule(r)
            case Hold(holds):
                self._hold(holds)
            case RemoveFailed(ids) | ScaleDown(ids) | RemoveOutdated(ids) | RemoveRescheduled(ids):
                await self._remove(self._records(ids))
            case Retire(ids):
                await self._remove(self._records(ids))
                self._dirty = True  # the room is for the pending replicas: place them now
            case Create(count):
                for _ in range(count):
                    self._state.replicas.append(
                        ReplicaRecord(
                            replica_id=self._new_replica_id(),
                            generation=self._state.generation,
                            spec_hash=self._view.template_hash,
                            resources=self._view.resources,
                        )
                    )
            case Place(ids):
                await self._place(self._records(ids))
            case Start(ids):
                starting = self._records(ids)
                chunks = [starting[i : i + RUN_BATCH] for i in range(0, len(starting), RUN_BATCH)]
                await asyncio.gather(*(self._start_batch(c) for c in chunks))
            case Release(ids):
                await self._release(self._records(ids))
            case Settle(backoff, clear_message, wake_at):
                if self._state.blocked:  # what failed for good is retried after a backoff
                    previous = self._state.backoff_seconds
                    backoff = max(backoff, min(MAX_BACKOFF, max(MIN_BACKOFF, previous * 2)))
                    clear_message = False
                    if wake_at:  # a crash-loop look-again waits for that retry too
                        wake_at = max(wake_at, workflow.now().timestamp() + backoff)
                self._state.backoff_seconds = backoff
                self._state.wake_at = wake_at
                if clear_message:
                    self._state.message = ""
            case _:
                assert_never(action)

    def _records(self, ids: tuple[str, ...]) -> list[ReplicaRecord]:
        """The records of ``ids``, in that order (those removed meanwhile are skipped)."""
        by_id = {r.replica_id: r for r in self._state.replicas}
        return [by_id[i] for i in ids if i in by_id]

    def _reschedule(self, r: ReplicaRecord) -> None:
        """Replace a crash-looping replica elsewhere: a new record that inherits its line's
        reschedules and avoids the nodes it crashed on; the old one stays until its
        removal is safe (``RemoveRescheduled``)."""
        state, policy = self._state, self._desired.reschedule
        assert policy is not None  # the reconciler reschedules only with a policy
        now = workflow.now()
        loop = recent(r.crash_times, now.timestamp(), policy.failure_window) or r.crash_times[-1:]
        replacement = ReplicaRecord(
            replica_id=self._new_replica_id(),
            generation=state.generation,
            spec_hash=self._view.template_hash,
            resources=self._view.resources,
            replaces=r.replica_id,
            reschedule_times=[
                *recent(r.reschedule_times, now.timestamp(), policy.interval),
                now.timestamp(),
            ][-RESCHEDULES_KEPT:],
            avoid_nodes=[*(n for n in r.avoid_nodes if n != r.node_id), r.node_id][-AVOID_KEPT:],
        )
        event = RescheduleEvent(
            at=now,
            replica_id=r.replica_id,
            node_id=r.node_id,
            crashes=len(loop),
            over_seconds=round(loop[-1] - loop[0], 3) if loop else 0.0,
            exit_code=r.crash_exit_code,
            reason=r.crash_reason,
            replacement=replacement.replica_id,
        )
        r.rescheduled, r.crash_loop = True, ""
        r.message = _replica_text(
            f"{_crash_summary(event)}: rescheduled as {replacement.replica_id}"
        )
        state.replicas.append(replacement)
        state.reschedules = [*state.reschedules, event][-MAX_RESCHEDULE_EVENTS:]
        self._say(f"replica {r.replica_id} {_crash_summary(event)}: rescheduling it")

    def _hold(self, holds: tuple[tuple[str, str], ...]) -> None:
        """Record why crash-looping replicas stay where they are (or that they no longer
        do); each new hold is an event ``describe`` shows."""
        state = self._state
        now = workflow.now()
        by_id = {r.replica_id: r for r in state.replicas}
        for rid, reason in holds:
            r = by_id.get(rid)
            if r is None:
                continue
            if reason and not r.crash_loop:
                policy = self._desired.reschedule
                window = policy.failure_window if policy is not None else 0.0
                loop = recent(r.crash_times, now.timestamp(), window) or r.crash_times[-1:]
                event = RescheduleEvent(
                    at=now,
                    replica_id=r.replica_id,
                    node_id=r.node_id,
                    crashes=len(loop),
                    over_seconds=round(loop[-1] - loop[0], 3) if loop else 0.0,
                    exit_code=r.crash_exit_code,
                    reason=r.crash_reason,
                    held=reason,
                )
                state.reschedules = [*state.reschedules, event][-MAX_RESCHEDULE_EVENTS:]
                self._say(
                    f"replica {rid} {_crash_summary(event)} and stays there: not rescheduled, "
                    f"{reason}"
                )
            r.crash_loop = reason

    async def _place(self, pending: list[ReplicaRecord]) -> None:
        """Place pending replicas, one plan per set of nodes to avoid (replicas moved away
        from crash loops avoid the nodes they crashed on; all others go in one plan)."""
        groups: dict[tuple[str, ...], list[ReplicaRecord]] = {}
        for r in pending:
            groups.setdefault(tuple(r.avoid_nodes), []).append(r)
        for avoid, group in groups.items():
            await self._place_group(group, list(avoid))

    async def _place_group(self, pending: list[ReplicaRecord], avoid: list[str]) -> None:
        view, state = self._view, self._state
        try:
            result = await workflow.execute_activity_method(
                LedgerActivities.place_replicas,
                PlacementRequest(
                    cluster=self._cluster,
                    workload=view.key,
                    plan_id=str(workflow.uuid4()),
                    replica_ids=[r.replica_id for r in pending],
                    resources=view.resources,
                    manifest=state.manifest,
                    owner=state.owner,
                    avoid_nodes=avoid,
                ),
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=_LEDGER_RETRY,
            )
        except ActivityError as err:  # retries are unlimited: this one fails for good
            reason = self._block(f"placement failed: {_failure(err)}")
            for r in pending:
                r.message = _replica_text(reason)
            return
        by_id = {p.replica_id: p for p in result.placements}
        unplaced = 0
        for r in pending:
            p = by_id.get(r.replica_id)
            if p is None:
                r.message = _replica_text(result.reason)
                unplaced += 1
            else:
                r.node_id, r.address = p.node_id, p.address
                r.phase, r.message = ReplicaPhase.STARTING, ""
                state.epoch += 1
                r.epoch = state.epoch
                r.score, r.candidates = p.score, list(p.candidates)
                if r.replaces:
                    for event in state.reschedules:
                        if event.replacement == r.replica_id and not event.to_node:
                            event.to_node = p.node_id
        self._forget_old_explanations()
        if unplaced:
            self._say(f"{unplaced} replica(s) pending: {result.reason}")
        for pre in result.preemptions:
            workflow.logger.info(
                "preempted %d replica(s) of %s on %s", pre.count, pre.workload, pre.node_id
            )

    def _forget_old_explanations(self) -> None:
        """Placement explanations (~1 KiB each) stay on the newest placements only, so
        the carried state does not grow with them (``limits.MAX_EXPLAINED_REPLICAS``)."""
        explained = [r for r in self._state.replicas if r.candidates]
        surplus = len(explained) - limits.MAX_EXPLAINED_REPLICAS
        if surplus > 0:
            for r in sorted(explained, key=lambda r: r.epoch)[:surplus]:
                r.candidates = []

    def _keep_within_budget(self) -> None:
        """Keep the carried state (and so the status answer and the continue-as-new
        input) under ``limits.MAX_STATE_BYTES``: a payload over Temporal's limit would
        fail every workflow task from then on."""
        if len(self._state.replicas) < limits.TRIM_FROM_REPLICAS:
            return
        converter = workflow.payload_converter()
        size = limits.trim_state(self._state, lambda s: limits.encoded_size(s, converter))
        if size > limits.MAX_STATE_BYTES:
            workflow.logger.error(
                "%s: state is %s encoded after trimming, over %s",
                self._view.key,
                limits.human(size),
                limits.human(limits.MAX_STATE_BYTES),
            )

    def _say(self, message: str) -> None:
        """Set the workload's message, clipped to what its state may carry."""
        self._state.message = limits.clip(message, limits.MAX_MESSAGE_CHARS)

    def _block(self, reason: str) -> str:
        """Record that this pass cannot make progress (the workload is Stuck until one
        gets through); returns the clipped reason."""
        self._say(reason)
        self._state.blocked = self._state.message
        return self._state.message

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
                    manifest=self._state.manifest, replicas=[self._run_input(r) for r in chunk]
                ),
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(seconds=120),
                retry_policy=_BATCH_RETRY,
            )
        except ActivityError as err:
            for r in chunk:
                self._start_failed(r, _failure(err))
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
        r.phase, r.message = ReplicaPhase.FAILED, _replica_text(message)
        self._crashed(r, 1, None, message)  # it failed on this node: the policy decides
        self._say(f"replica {r.replica_id} failed on {r.node_id}: {r.message}")

    def _started(self, r: ReplicaRecord, res: RunReplicaResult) -> None:
        if r.lost or r.preempted or is_done(r):
            # The node was lost (or the room preempted) while the start was in flight, or
            # the replica already ran to completion (its exit outran the start's answer).
            return
        r.phase, r.message = res.phase, _replica_text(res.message)
        r.runtime_id, r.started_at = res.runtime_id, res.started_at
        phase = start_outcome(self._desired, res.phase)
        if phase == ReplicaPhase.COMPLETED:
            r.phase, r.message = phase, "completed (exit code 0)"
        elif phase == ReplicaPhase.FAILED:  # it exited right after its start: a crash
            r.phase = phase
            self._crashed(r, 1, res.exit_code, res.message)
            self._say(f"replica {r.replica_id} failed on {r.node_id}: {res.message}")

    async def _remove(self, victims: list[ReplicaRecord]) -> bool:
        """Stop the replicas on their agents, then release their allocations in one plan;
        False (the records stay, to be removed again) if the release failed for good.

        Preempted replicas were released by the preempting plan already; which replicas
        those are is read only after the stops, since a preemption may arrive meanwhile.
        """
        placed = [r for r in victims if r.node_id]
        stopping = [r for r in placed if not r.lost]
        reached = await asyncio.gather(*(self._stop(r) for r in stopping))
        await self._given_up([r for r, ok in zip(stopping, reached, strict=True) if not ok])
        placed = [r for r in placed if not r.preempted and not r.released]
        if placed:
            try:
                await self._commit_releases(placed)
            except ActivityError as err:  # unlimited retries: a release refused for good
                self._block(f"releasing {len(placed)} replica(s) failed: {_failure(err)}")
                return False
        gone = {r.replica_id for r in victims}
        self._state.replicas = [r for r in self._state.replicas if r.replica_id not in gone]
        return True

    async def _release(self, done: list[ReplicaRecord]) -> None:
        """Give completed replicas' allocations back to the ledger, once each."""
        await self._commit_releases(done)
        for r in done:
            r.released = True

    async def _commit_releases(self, replicas: list[ReplicaRecord]) -> None:
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
                    for r in replicas
                ],
                owners={self._view.key: self._state.owner} if self._state.owner else {},
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_LEDGER_RETRY,
        )

    async def _stop(self, r: ReplicaRecord) -> bool:
        """Stop the replica on its agent; False if that was given up (it may still run)."""
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
            # An unreachable agent must not wedge a delete; its node reconciles instead
            # (``_given_up``): at once if it is Ready, else on its way back to Ready.
            workflow.logger.warning("could not stop %s on %s: %s", r.replica_id, r.node_id, err)
            r.phase = ReplicaPhase.STOPPED
            return False
        r.phase = ReplicaPhase.STOPPED
        return True

    async def _given_up(self, unstopped: list[ReplicaRecord]) -> None:
        """Ask each node whose stops were given up to reconcile: it stops them now if it is
        Ready (a one-way partition, an agent restart the gateways never reported), or on
        its way back to Ready. Without it they would run on, released, outside the ledger.
        """
        by_node: dict[str, list[str]] = {}
        for r in unstopped:
            by_node.setdefault(r.node_id, []).append(r.replica_id)
        if not by_node or not workflow.patched(GIVEN_UP_STOPS_RECONCILE):
            return
        for node_id, ids in sorted(by_node.items()):
            await workflow.execute_activity_method(
                MembershipActivities.request_reconcile,
                ReconcileRequest(
                    node_id=node_id,
                    reason=f"{self._view.key} gave up stopping {len(ids)} replica(s) there",
                    replica_ids=ids[:MAX_IDS_REPORTED],
                ),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_LEDGER_RETRY,
            )

    async def _teardown(self) -> bool:
        """Remove every replica; False if a release failed (retried after the backoff)."""
        self._reconciling = True
        self._state.blocked = ""
        done = await self._remove(list(self._state.replicas))
        self._reconciling = False
        if not done:
            backoff = self._state.backoff_seconds
            self._state.backoff_seconds = min(MAX_BACKOFF, max(MIN_BACKOFF, backoff * 2))
        self._publish_search_attributes()
        return done

    async def _take_over_leftovers(self) -> None:
        """A teardown run: find the replicas ended runs left on the agents (on the nodes the
        ledger still holds the workload on), then claim the workload, which releases every
        reservation they held at once and makes the ledger refuse their late plans. What
        is left to do is stopping those replicas: the ordinary teardown does that."""
        found = await workflow.execute_activity_method(
            MembershipActivities.find_leftovers,
            LeftoversInput(namespace=self._view.namespace, name=self._view.name),
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=_LEDGER_RETRY,
        )
        await self._claim()
        self._state.replicas = list(found.replicas)
        if found.unreachable:
            workflow.logger.warning(
                "%s: agents of %s did not answer; they stop its replicas when they return",
                self._view.key,
                ", ".join(found.unreachable),
            )

    def _new_replica_id(self) -> str:
        taken = {r.replica_id for r in self._state.replicas}
        rand = workflow.random()
        while True:
            suffix = "".join(rand.choice(_ALPHABET) for _ in range(5))
            rid = f"{self._view.namespace}-{self._view.name}-{suffix}"
            if rid not in taken:
                return rid

    def _publish_search_attributes(self) -> None:
        phase = self.status().phase.value
        nodes = tuple(sorted({r.node_id for r in self._state.replicas if r.node_id}))
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

    @workflow.update(name=workload_contract.APPLY.name)
    def apply(self, inp: ApplyInput) -> ApplyResult:
        return self._set_manifest(inp.manifest)

    def _set_manifest(self, manifest: Workload) -> ApplyResult:
        state = self._state
        view = view_of(manifest)
        first, state.applied = not state.applied, True
        if view.spec_hash == self._view.spec_hash:
            return ApplyResult(
                generation=state.generation,
                changed=False,
                spec_hash=view.spec_hash,
                created=first and state.generation == 1,
            )
        state.manifest, self._view, self._desired = manifest, view, desired_of(view)
        state.generation += 1
        self._dirty = True
        return ApplyResult(generation=state.generation, changed=True, spec_hash=view.spec_hash)

    @apply.validator
    def _validate_apply(self, inp: ApplyInput) -> None:
        if self._state.deleting:
            raise ApplicationError(
                f"workload {self._view.key} is being deleted; wait for the delete to finish "
                "and apply again",
                type="WorkloadDeleting",
            )
        refusal = _refusal(inp.manifest)
        if refusal is not None:
            raise ApplicationError(refusal, type="InvalidSpec")
        view = view_of(inp.manifest)
        if view.key != self._view.key:
            raise ApplicationError(
                f"manifest names {view.key}, but this workflow manages {self._view.key}",
                type="InvalidSpec",
            )

    @workflow.update(name=workload_contract.SCALE.name)
    def scale(self, inp: ScaleInput) -> ApplyResult:
        return self._set_manifest(scaled(self._state.manifest, inp.replicas))

    @scale.validator
    def _validate_scale(self, inp: ScaleInput) -> None:
        if self._state.deleting:
            raise ApplicationError(
                f"workload {self._view.key} is being deleted", type="WorkloadDeleting"
            )
        try:
            scaled(self._state.manifest, inp.replicas)
        except CloudlessError as err:
            raise ApplicationError(str(err), type="InvalidSpec") from err

    @workflow.signal(name=workload_contract.REPLICAS_LOST.name)
    def replicas_lost(self, sig: ReplicasLost) -> None:
        """A node went away (replace its replicas) or is draining (move them, surge first)."""
        for r in self._state.replicas:
            if r.node_id != sig.node_id or (
                sig.replica_ids and r.replica_id not in sig.replica_ids
            ):
                continue
            if is_done(r):
                continue  # finished: nothing is lost, nothing to move
            if sig.evacuate:
                r.evicting = True
            else:
                r.lost, r.phase, r.message = True, ReplicaPhase.FAILED, _replica_text(sig.reason)
        self._say(sig.reason)
        self._state.backoff_seconds = 0.0  # replace at once; backoff is for failing starts
        self._dirty = True

    @workflow.signal(name=workload_contract.CAPACITY_AVAILABLE.name)
    def capacity_available(self, sig: CapacityAvailable) -> None:
        """The ledger saw room appear (a release, a node Ready): place pending replicas now
        instead of waiting out the retry backoff."""
        if any(r.phase == ReplicaPhase.PENDING for r in self._state.replicas):
            self._state.backoff_seconds = 0.0
            self._dirty = True

    @workflow.signal(name=workload_contract.REPLICAS_PREEMPTED.name)
    def replicas_preempted(self, sig: ReplicasPreempted) -> None:
        """A higher-priority replica took ``count`` of our places on a node; the ledger has
        released them already. Stop that many replicas there and place replacements.

        Idempotent per preempting plan, also across continue-as-new (``preempted_by`` is
        part of the carried state)."""
        state = self._state
        if sig.plan_id and sig.plan_id in state.preempted_by:
            return
        if sig.plan_id:
            state.preempted_by = [*state.preempted_by, sig.plan_id][-MAX_PREEMPTIONS_KEPT:]
        victims = set(preemption_victims(state.replicas, sig.node_id, sig.count))
        for r in state.replicas:
            if r.replica_id in victims:
                r.preempted, r.phase = True, ReplicaPhase.FAILED
                r.message = _replica_text(sig.reason)
        self._say(sig.reason)
        state.backoff_seconds = 0.0
        self._dirty = True

    @workflow.signal(name=workload_contract.REPLICA_CRASHED.name)
    def replica_crashed(self, sig: ReplicaCrashed) -> None:
        """A replica crashed on its node and its agent restarts it: record when (new
        crashes only: reports carry the agent's running count), so the reconciler can
        decide whether it is crash-looping and should move (``spec.reschedule``)."""
        for r in self._state.replicas:
            if r.replica_id != sig.replica_id or r.node_id != sig.node_id:
                continue
            if r.lost or r.preempted or r.rescheduled or r.evicting:
                continue  # leaving this node anyway
            if r.phase not in (ReplicaPhase.STARTING, ReplicaPhase.RUNNING):
                continue
            if sig.crashes > r.crashes_reported:
                new = sig.crashes - r.crashes_reported
            elif sig.crashes < r.crashes_reported:
                new = sig.crashes  # its agent counts afresh (it was asked to run it again)
            else:
                continue  # a repeated report
            r.crashes_reported = sig.crashes
            self._crashed(r, min(new, CRASHES_KEPT), sig.exit_code, sig.reason)
            code = "" if sig.exit_code is None else f" (exit code {sig.exit_code})"
            said = f"crashed{code}, restarted by its agent: {sig.reason[-200:]}".rstrip(": ")
            r.message = _replica_text(said)
            self._dirty = True

    def _crashed(self, r: ReplicaRecord, count: int, exit_code: int | None, reason: str) -> None:
        now = workflow.now().timestamp()
        r.crash_times = [*r.crash_times, *([now] * count)][-CRASHES_KEPT:]
        r.crash_exit_code, r.crash_reason = exit_code, reason[-limits.MAX_REPLICA_MESSAGE_CHARS :]

    @workflow.signal(name=workload_contract.REPLICA_EXITED.name)
    def replica_exited(self, sig: ReplicaExited) -> None:
        """The agent gave up on a replica. A failure is replaced (with the workload's
        backoff); a clean exit under restartPolicy Never/OnFailure completes it: the record
        stays, its room is released, and it is never replaced."""
        for r in self._state.replicas:
            if r.replica_id != sig.replica_id or r.node_id != sig.node_id:
                continue
            phase = exit_outcome(self._desired, r.phase, sig.phase)
            if phase is None:
                continue
            code = "" if sig.exit_code is None else f" (exit code {sig.exit_code})"
            if sig.phase == ReplicaPhase.FAILED:
                if not r.lost and not r.preempted:  # it failed here: a crash, the last one
                    self._crashed(r, 1, sig.exit_code, sig.message)
                said = f"exited{code}: {sig.message}".rstrip(": ")
                r.phase, r.message = phase, _replica_text(said)
                self._say(f"replica {r.replica_id} failed on {r.node_id}{code}")
            elif phase == ReplicaPhase.COMPLETED:  # done: keep the record, release its room
                r.phase, r.message = phase, f"completed{code}"
            else:  # restartPolicy Always wants it running: replace it
                r.phase, r.message = phase, f"exited{code}"
            self._dirty = True

    @workflow.signal(name=workload_contract.REPLICA_READINESS.name)
    def replica_readiness(self, sig: ReplicaReadiness) -> None:
        """Its agent's probes changed a replica's readiness (sent only on change).

        Becoming ready may complete a rolling update (old replicas go once the new ones are
        ready), so that case reconciles again.
        """
        replicas = self._state.replicas
        for r in replicas:
            if r.replica_id != sig.replica_id or r.node_id != sig.node_id:
                continue
            became_ready = sig.ready and not is_ready(self._desired, r)
            r.ready, r.ready_message = sig.ready, _replica_text(sig.message)
            if became_ready and any(not is_current(self._desired, o) for o in replicas):
                self._dirty = True

    @workflow.update(name=workload_contract.DELETE.name)
    def delete(self) -> int:
        self._state.deleting = True
        self._state.blocked = ""  # whatever blocked placement does not block the teardown
        return self._state.generation

    @workflow.update(name=workload_contract.WAIT_SETTLED.name)
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
        if inp.all_ready and not fully_ready(self._desired, self._state.replicas):
            return False
        return not (
            inp.avoid_node and any(r.node_id == inp.avoid_node for r in self._state.replicas)
        )

    @workflow.query(name=workload_contract.STATUS.name)
    def status(self) -> WorkloadStatus:
        view, state = self._view, self._state
        summary = summarize(
            self._desired,
            state.replicas,
            deleting=state.deleting,
            dirty=self._dirty,
            blocked=bool(state.blocked),
        )
        return WorkloadStatus(
            namespace=view.namespace,
            name=view.name,
            generation=state.generation,
            spec_hash=view.spec_hash,
            desired=view.replicas,
            ready=summary.ready,
            phase=summary.phase,
            message=state.message,
            replicas=list(state.replicas),
            manifest=None if state.orphans else state.manifest,
            epoch=state.epoch,
            owner=state.owner,
            reschedules=list(state.reschedules),
        )


def _crash_summary(event: RescheduleEvent) -> str:
    """``crash-looping on n1 (3 crashes in 4.2s, exit code 1)``."""
    code = "" if event.exit_code is None else f", exit code {event.exit_code}"
    return (
        f"crash-looping on {event.node_id} ({event.crashes} crash(es) in "
        f"{event.over_seconds:g}s{code})"
    )


def _failure(err: ActivityError) -> str:
    """An activity failure's own message (its cause's, for an application error)."""
    cause = err.cause
    return cause.message if isinstance(cause, ApplicationError) else str(err)


def _replica_text(text: str) -> str:
    """A replica's message, clipped to what its record may carry."""
    return limits.clip(text, limits.MAX_REPLICA_MESSAGE_CHARS)
