"""``node/<id>``: one node's identity, labels, zone, capacity and state machine.

The node entity is the source of truth for a node's facts and state; the ledger keeps a
derived copy for placement, refreshed by ``publish_node`` on every state change.

State has two dimensions. *Health* comes from the gateways' liveness tables (Ready,
Suspect, Offline); *admin* comes from operators (Cordoned, Draining, Drained). The state
users see combines them: unhealthy wins, then the admin state, else Ready.

Events (enrollment, liveness signals, admin updates) are queued by handlers and applied
one at a time by the main loop, so activities never interleave for one node.

``renew_certificate`` (an Update from the gateway's ``RenewCertificate``) issues the node a
certificate for a new key and records it. It runs beside the main loop rather than
queued behind it (a drain may hold the loop for an hour; a renewal is due within a third
of a certificate's lifetime), and touches only the certificate fields.

``remove`` (an admin action) retires the node for good: its workloads replace its
replicas elsewhere, what it held in the ledger is freed, every unexpired certificate
issued to it is revoked, and the workflow ends in the terminal state Removed. Enrolling
the name again (with a new token) starts a new run from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.agents import AgentActivities
    from activities.ledger import LedgerActivities
    from activities.membership import MembershipActivities
    from activities.pki import PKIActivities
    from cloudless.contracts import node as node_contract
    from cloudless.contracts.names import SA_NODE, SA_PHASE
    from cloudless.model import (
        EnrollSignal,
        IssuedCertificate,
        LivenessSignal,
        NodeAdminInput,
        NodeRecord,
        NodeState,
        NodeStatus,
        NodeTransition,
        NodeWorkflowInput,
        NotifyWorkloadsInput,
        ReconcileNodeInput,
        ReconcileRequest,
        RemoveNodeInput,
        RenewCertificateInput,
        RetireNodeInput,
        SignCertificateInput,
        SignCertificateResult,
        UpsertNodeInput,
    )
    from cloudless.vocabulary import AdminAction, AdminState, NodeEventKind, NodeHealth
    from policies.membership import (
        FLAP_WINDOW,
        HealthStep,
        accepts,
        flap_hold,
        next_health,
        recent,
    )
    from policies.renewal import renewal_refusal

#: Transitions kept for ``describe node``; older ones live in earlier runs' history.
MAX_TRANSITIONS = 50
MAX_HISTORY_EVENTS = 5_000
#: How long a freshly enrolled agent has to become reachable before it is marked Offline.
PROBE_DEADLINE = timedelta(minutes=2)
MAX_CHURN_KEPT = 50
#: Churn episodes this recent lower the node's reliability score.
CHURN_WINDOW = timedelta(hours=1)
#: How long a removal waits for the node's running workloads to release their replicas
#: there (they were told at once); the removal then frees whatever is left.
RELEASE_WAIT = timedelta(minutes=2)

_FAST = RetryPolicy(
    initial_interval=timedelta(milliseconds=100),
    backoff_coefficient=1.5,
    maximum_interval=timedelta(seconds=5),
)
_ADMIN_ACTIONS = tuple(AdminAction)
#: Signing a renewal's certificate: a CSR the CA refuses is final, anything else is retried
#: briefly (the agent retries the whole renewal with backoff anyway).
_SIGN_RETRY = RetryPolicy(
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=10,
    non_retryable_error_types=["InvalidCSR"],
)
#: Patch (issue #10): health moves by ``policies.membership.next_health``. Every way into
#: Ready reconciles (Suspect did not), an Offline node ignores Suspect, and every way into
#: Offline tells the workloads (a failed reconcile or re-enrollment probe did not).
EVERY_READY_RECONCILES = "every-ready-reconciles"
#: Patch (issue #11): a renewal's certificate is signed by a local activity. Signing takes
#: milliseconds in the worker that runs the Update; as a regular activity each renewal also
#: cost an activity dispatch and a second workflow task through Temporal (11 history events
#: instead of 6). ``bench/cert_rotation.py`` at 1,000 nodes: the Temporal server's CPU per
#: renewal about halved, the coordinator's ~10 % lower, renewals/s ~20 % higher.
RENEWAL_SIGNS_LOCALLY = "renewal-signs-locally"


def _legacy_step(current: NodeHealth, observed: NodeHealth) -> HealthStep | None:
    """How a liveness signal moved the node before ``EVERY_READY_RECONCILES``."""
    if observed == current:
        return None
    if observed == NodeHealth.READY:
        return HealthStep(NodeHealth.READY, reconcile=current == NodeHealth.OFFLINE)
    return HealthStep(observed, notify=observed == NodeHealth.OFFLINE)


@dataclass
class _Event:
    kind: NodeEventKind
    record: NodeRecord | None = None
    liveness: LivenessSignal | None = None
    admin: NodeAdminInput | None = None
    reconcile: ReconcileRequest | None = None
    seq: int = 0


@workflow.defn(name=node_contract.WORKFLOW.name)
class NodeWorkflow:
    @workflow.init
    def __init__(self, inp: NodeWorkflowInput) -> None:
        self._cluster = inp.cluster
        self._max_history_events = inp.max_history_events or MAX_HISTORY_EVENTS
        # The node's one state object: its record, health, admin state, gateway, churn and
        # transitions. It is also what ``describe`` returns, and all that continue-as-new
        # carries: the event queue is empty then, and its counters restart with it.
        self._status: NodeStatus | None = inp.carried
        self._events: list[_Event] = []
        self._seq = 0
        self._done = 0
        self._removed = False
        #: Renewals between their signing and their recording: a removal waits for them,
        #: so the certificates it revokes include any they issue.
        self._renewing = 0
        #: The last renewal's certificate: a retry for the same key (its answer was lost)
        #: gets it again instead of a new one. Not carried across continue-as-new.
        self._reissuable: SignCertificateResult | None = None
        if inp.record is not None:
            self._events.append(_Event(NodeEventKind.ENROLL, record=inp.record))

    # ------------------------------------------------------------------ main loop

    @workflow.run
    async def run(self, inp: NodeWorkflowInput) -> None:
        while True:
            await workflow.wait_condition(
                lambda: bool(self._events) or self._should_continue_as_new()
            )
            while self._events and not self._removed:
                event = self._events.pop(0)
                if event.kind == NodeEventKind.ENROLL and event.record is not None:
                    await self._on_enroll(event.record)
                elif event.kind == NodeEventKind.LIVENESS and event.liveness is not None:
                    await self._on_liveness(event.liveness)
                elif event.kind == NodeEventKind.ADMIN and event.admin is not None:
                    await self._on_admin(event.admin)
                elif event.kind == NodeEventKind.FACTS and event.record is not None:
                    await self._on_facts(event.record)
                elif event.kind == NodeEventKind.RECONCILE and event.reconcile is not None:
                    await self._on_reconcile(event.reconcile)
                self._done = max(self._done, event.seq)
            if self._removed:
                # Terminal: what was queued after the removal is dropped; the admin
                # update that asked for it answers before the run ends.
                self._done = self._seq
                await workflow.wait_condition(workflow.all_handlers_finished)
                return
            if self._should_continue_as_new():
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not self._events:
                    workflow.continue_as_new(
                        NodeWorkflowInput(
                            cluster=self._cluster,
                            carried=self._status,
                            max_history_events=inp.max_history_events,
                        )
                    )

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() > self._max_history_events
        )

    # ------------------------------------------------------------------ events

    async def _on_enroll(self, record: NodeRecord) -> None:
        # Joining is recorded first so the UI shows the node the moment it enrolls; it is
        # Ready only once the coordinator has reached the agent over mTLS.
        fresh = self._status is None  # never Ready, so the ledger placed nothing here
        self._retain_current_certificate()  # re-enrolling: the old one is revoked on removal
        self._set(
            record=record, health=NodeHealth.JOINING, reason="enrolled with a bootstrap token"
        )
        await self._publish()
        try:
            runtimes = await workflow.execute_activity_method(
                AgentActivities.probe_agent,
                record,
                start_to_close_timeout=timedelta(seconds=10),
                schedule_to_close_timeout=PROBE_DEADLINE,
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(milliseconds=100),
                    backoff_coefficient=1.5,
                    maximum_interval=timedelta(seconds=5),
                    non_retryable_error_types=["AgentIdentityMismatch", "AgentAuthFailed"],
                ),
            )
        except ActivityError as err:
            reason = err.cause.message if isinstance(err.cause, ApplicationError) else str(err)
            await self._unreachable(f"agent unreachable: {reason}")
            return
        # From the status, not ``record``: a renewal during the probe changed its certificate.
        assert self._status is not None
        self._set(record=self._status.record.model_copy(update={"runtimes": runtimes}))
        if not await self._reconcile_replicas(fresh=fresh):
            return
        self._set(health=NodeHealth.READY, reason="agent reached over mTLS")
        await self._publish()

    def _accepts(self, sig: LivenessSignal) -> bool:
        status = self._status
        assert status is not None
        return accepts(
            owner=status.gateway,
            owner_epoch=status.stream_epoch,
            sig_health=sig.health,
            sig_gateway=sig.gateway,
            sig_epoch=sig.epoch,
        )

    def _own(self, sig: LivenessSignal) -> None:
        """The sending gateway holds the node's current stream: it owns the node now."""
        assert self._status is not None
        self._status.gateway = sig.gateway
        self._status.stream_epoch = max(self._status.stream_epoch, sig.epoch)

    async def _on_liveness(self, sig: LivenessSignal) -> None:
        status = self._status
        if status is None or status.health == NodeHealth.JOINING:
            return  # not enrolled yet (or still probing): enrollment decides
        if not self._accepts(sig):
            return  # a gateway (or an older stream) the node has already moved off
        if sig.epoch > status.stream_epoch:
            self._own(sig)  # news of a newer stream, wherever it lives
        if sig.health == status.health:
            if sig.health == NodeHealth.READY:
                self._own(sig)
            return
        step = self._step(status.health, sig.health)
        if step is None:
            return  # e.g. a Suspect for a node already written off: it stays Offline
        if step.health == NodeHealth.READY:
            if await self._damped():
                return
            # Whatever it comes back from, the node may run replicas that were moved,
            # removed or replaced meanwhile: they are stopped before it is Ready.
            if step.reconcile and not await self._reconcile_replicas():
                return
            self._own(sig)
            status.planned_since = None  # a planned restart came back: neither churn nor downtime
            self._set(health=NodeHealth.READY, reason=sig.reason)
            await self._publish()
            return
        was_healthy = status.health == NodeHealth.READY
        planned = was_healthy and sig.graceful and step.health == NodeHealth.SUSPECT
        if step.health == NodeHealth.OFFLINE:
            self._planned_restart_failed()
        self._set(health=step.health, reason=sig.reason)
        if planned:
            status.planned_since, status.down_since = status.down_since, None
        elif was_healthy:  # one episode per departure from Ready (Suspect then Offline is one)
            status.churn = [*status.churn, workflow.now()][-MAX_CHURN_KEPT:]
        await self._publish()
        if step.notify:
            await self._notify_workloads(f"node {status.record.node_id} offline: {sig.reason}")

    def _step(self, current: NodeHealth, observed: NodeHealth) -> HealthStep | None:
        """``next_health``, or the old rule while replaying a history from before it."""
        step = next_health(current, observed)
        legacy = _legacy_step(current, observed)
        if step != legacy and not workflow.patched(EVERY_READY_RECONCILES):
            return legacy
        return step

    def _planned_restart_failed(self) -> None:
        """Going Offline during a planned restart: it was an outage after all, from when
        the agent left (one churn episode, downtime counted from then)."""
        status = self._status
        assert status is not None
        if status.planned_since is not None:
            status.down_since = status.planned_since
            status.churn = [*status.churn, status.planned_since][-MAX_CHURN_KEPT:]
            status.planned_since = None

    async def _unreachable(self, reason: str) -> None:
        """The agent could not be dialled (probe or reconcile): the node is Offline, and
        if it was not already, its workloads replace what it runs.

        A node whose stale replicas may still run must never be Ready, or a replica could
        run twice; one that cannot be commanded cannot keep its replicas either.
        """
        status = self._status
        assert status is not None
        step = next_health(status.health, NodeHealth.OFFLINE)
        notify = step is not None and step.notify and workflow.patched(EVERY_READY_RECONCILES)
        if notify:
            self._planned_restart_failed()
        self._set(health=NodeHealth.OFFLINE, reason=reason)
        await self._publish()
        if notify:
            await self._notify_workloads(f"node {status.record.node_id} offline: {reason}")

    async def _on_facts(self, fresh: NodeRecord) -> None:
        """A reconnecting agent reports what it offers now (address, capacity, labels)."""
        status = self._status
        if status is None:
            return
        keep = status.record
        fields = ("zone", "labels", "capacity", "address", "runtimes", "agent_version")
        if all(getattr(keep, f) == getattr(fresh, f) for f in fields):
            return
        changed = [f for f in fields if getattr(keep, f) != getattr(fresh, f)]
        record = keep.model_copy(update={f: getattr(fresh, f) for f in fields})
        self._set(record=record, reason=f"agent reported new {', '.join(changed)}")
        status.transitions = [
            *status.transitions,
            NodeTransition(
                state=status.state, at=workflow.now(), reason=f"updated {', '.join(changed)}"
            ),
        ][-MAX_TRANSITIONS:]
        await self._publish()

    async def _on_reconcile(self, req: ReconcileRequest) -> None:
        """A workload gave up stopping replicas here: the node may run them, released,
        while it stays Ready (a one-way partition; an agent restart whose break no gateway
        reported). Reconcile now; if the agent cannot be reached, the node is Offline.
        A node that is not Ready reconciles on its way back anyway."""
        status = self._status
        if status is None or status.health != NodeHealth.READY:
            return
        workflow.logger.info("reconciling %s: %s", status.record.node_id, req.reason)
        await self._reconcile_replicas()

    async def _on_admin(self, cmd: NodeAdminInput) -> None:
        status = self._status
        assert status is not None
        if cmd.action == AdminAction.CORDON:
            self._set(admin=AdminState.CORDONED, reason=cmd.reason or "cordoned by an operator")
            await self._publish()
        elif cmd.action == AdminAction.UNCORDON:
            self._set(admin=AdminState.NONE, reason=cmd.reason or "uncordoned by an operator")
            await self._publish()
        elif cmd.action == AdminAction.DRAIN:
            self._set(admin=AdminState.DRAINING, reason=cmd.reason or "drain requested")
            await self._publish()
            await self._notify_workloads(f"node {status.record.node_id} is draining", evacuate=True)
            await workflow.execute_activity_method(
                MembershipActivities.wait_node_empty,
                status.record.node_id,
                start_to_close_timeout=timedelta(hours=1),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=_FAST,
            )
            self._set(admin=AdminState.DRAINED, reason="every replica moved elsewhere")
            await self._publish()
        elif cmd.action == AdminAction.REMOVE:
            await self._on_remove(cmd)

    async def _on_remove(self, cmd: NodeAdminInput) -> None:
        """Retire the node: nothing is placed here any more, its replicas are replaced
        elsewhere (nothing running elsewhere is stopped), what it held in the ledger is
        freed, its certificate is revoked, and this workflow ends."""
        status = self._status
        assert status is not None
        record = status.record
        reachable = status.health != NodeHealth.OFFLINE
        why = cmd.reason or "removed by an operator"
        self._set(admin=AdminState.REMOVED, reason=why)
        await self._publish()  # Removed in the ledger: no plan may place here now
        await self._notify_workloads(f"node {record.node_id} was removed: {why}")
        try:
            await workflow.execute_activity_method(
                MembershipActivities.wait_node_released,
                record.node_id,
                start_to_close_timeout=RELEASE_WAIT,
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
        except ActivityError as err:  # a busy workload: the removal frees what it held
            workflow.logger.warning("removing %s without waiting: %s", record.node_id, err)
        if reachable:
            try:
                await workflow.execute_activity_method(
                    MembershipActivities.retire_node,
                    RetireNodeInput(node_id=record.node_id, address=record.address),
                    start_to_close_timeout=timedelta(minutes=2),
                    heartbeat_timeout=timedelta(seconds=60),
                    retry_policy=RetryPolicy(maximum_attempts=2),
                )
            except ActivityError as err:  # its certificate is revoked either way
                workflow.logger.warning("could not stop what %s runs: %s", record.node_id, err)
        # A renewal signed meanwhile is recorded before the revocation is computed (new
        # ones are refused since the node is Removed).
        await workflow.wait_condition(lambda: self._renewing == 0)
        record = status.record
        now = workflow.now()
        await workflow.execute_activity_method(
            LedgerActivities.remove_node,
            RemoveNodeInput(
                node_id=record.node_id,
                certificate_serial=record.certificate_serial,
                certificate_not_after=record.certificate_not_after,
                reason=why,
                more_certificates={
                    c.serial: c.not_after
                    for c in status.certificates
                    if c.serial != record.certificate_serial and c.not_after > now
                },
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_FAST,
        )
        self._removed = True

    async def _damped(self) -> bool:
        """Hold a flapping node back before it is Ready again; True if it failed again
        meanwhile (the queued event will be applied instead).

        Admin updates queued during the hold are applied at once: an operator cordoning
        a flapping node must not wait minutes for the hold to end.
        """
        status = self._status
        assert status is not None
        now = workflow.now()
        hold = flap_hold(status.churn, now)
        if hold is None:
            return False
        n = recent(status.churn, now, FLAP_WINDOW)
        self._set(reason=f"flapping ({n} failures in {FLAP_WINDOW}); held {hold}")
        status.held_until = now + hold
        try:
            while True:
                left = status.held_until - workflow.now()
                if left <= timedelta(0):
                    return False
                try:
                    await workflow.wait_condition(
                        lambda: self._relapsed() or self._admin_queued(), timeout=left
                    )
                except TimeoutError:
                    return False
                if self._relapsed():
                    return True
                await self._apply_queued_admin()
                if self._removed:
                    return True  # removed during the hold: it is never Ready again
        finally:
            status.held_until = None

    def _relapsed(self) -> bool:
        """An accepted Suspect/Offline is queued: the node failed again during a hold."""
        return any(
            e.kind == NodeEventKind.LIVENESS
            and e.liveness is not None
            and e.liveness.health != NodeHealth.READY
            and self._accepts(e.liveness)
            for e in self._events
        )

    def _admin_queued(self) -> bool:
        return any(e.kind == NodeEventKind.ADMIN for e in self._events)

    async def _apply_queued_admin(self) -> None:
        """Apply queued admin events in order, ahead of the other queued events."""
        while self._admin_queued():
            event = next(e for e in self._events if e.kind == NodeEventKind.ADMIN)
            self._events.remove(event)
            if event.admin is not None:
                await self._on_admin(event.admin)
            self._done = max(self._done, event.seq)

    async def _reconcile_replicas(self, fresh: bool = False) -> bool:
        """Stop what the node runs but should not, before it is Ready again.

        False (and the node is Offline) if that cannot be done: see ``_unreachable``.
        """
        assert self._status is not None
        record = self._status.record
        try:
            await workflow.execute_activity_method(
                MembershipActivities.reconcile_node,
                ReconcileNodeInput(
                    node_id=record.node_id,
                    address=record.address,
                    cluster=self._cluster,
                    fresh=fresh,
                ),
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=PROBE_DEADLINE,
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(milliseconds=200),
                    maximum_interval=timedelta(seconds=5),
                ),
            )
        except ActivityError as err:
            reason = err.cause.message if isinstance(err.cause, ApplicationError) else str(err)
            await self._unreachable(f"could not reconcile replicas: {reason}")
            return False
        return True

    async def _notify_workloads(self, reason: str, evacuate: bool = False) -> None:
        assert self._status is not None
        await workflow.execute_activity_method(
            MembershipActivities.notify_workloads,
            NotifyWorkloadsInput(
                node_id=self._status.record.node_id, reason=reason, evacuate=evacuate
            ),
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=_FAST,
        )

    # ------------------------------------------------------------------ state

    def _set(
        self,
        *,
        record: NodeRecord | None = None,
        health: NodeHealth | None = None,
        admin: AdminState | None = None,
        reason: str = "",
    ) -> None:
        now = workflow.now()
        status = self._status
        if status is None:
            assert record is not None
            status = NodeStatus(
                record=record, state=NodeState.JOINING, health=NodeHealth.JOINING, first_seen=now
            )
            self._status = status
        if record is not None:
            status.record = record
        if health is not None and health != status.health:
            if health in (NodeHealth.SUSPECT, NodeHealth.OFFLINE) and status.down_since is None:
                status.down_since = now
            if health == NodeHealth.READY and status.down_since is not None:
                status.offline_seconds += (now - status.down_since).total_seconds()
                status.down_since = None
            status.health = health
        if admin is not None:
            status.admin = admin
        state = self._effective(status)
        if state != status.state or not status.transitions:
            status.transitions = [
                *status.transitions,
                NodeTransition(state=state, at=now, reason=reason),
            ][-MAX_TRANSITIONS:]
            status.state = state
            workflow.upsert_search_attributes(
                [SA_NODE.value_set([status.record.node_id]), SA_PHASE.value_set(state.value)]
            )

    @staticmethod
    def _effective(status: NodeStatus) -> NodeState:
        if status.admin == AdminState.REMOVED:
            return NodeState.REMOVED
        if status.health in (NodeHealth.JOINING, NodeHealth.OFFLINE, NodeHealth.SUSPECT):
            return NodeState(status.health)
        if status.admin:
            return NodeState(status.admin)
        return NodeState.READY

    def _reliability(self) -> tuple[float, int]:
        """Uptime ratio since first seen and Suspect/Offline episodes in the recent window:
        the scheduler's reliability inputs, derived from the recorded history."""
        status = self._status
        assert status is not None
        now = workflow.now()
        age = (now - status.first_seen).total_seconds() if status.first_seen else 0.0
        down = status.offline_seconds
        if status.down_since is not None:
            down += (now - status.down_since).total_seconds()
        uptime = 1.0 if age <= 0 else min(1.0, max(0.0, 1.0 - down / age))
        churn = recent(status.churn, now, CHURN_WINDOW)
        return round(uptime, 4), churn

    async def _publish(self) -> None:
        assert self._status is not None
        uptime, churn = self._reliability()
        await workflow.execute_activity_method(
            LedgerActivities.publish_node,
            UpsertNodeInput(
                record=self._status.record,
                state=self._status.state,
                uptime_ratio=uptime,
                churn=churn,
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
        )

    # ------------------------------------------------------------------ handlers

    def _enqueue(self, event: _Event) -> int:
        self._seq += 1
        event.seq = self._seq
        self._events.append(event)
        return self._seq

    @workflow.signal(name=node_contract.ENROLL.name)
    def enroll(self, sig: EnrollSignal) -> None:
        self._enqueue(_Event(NodeEventKind.ENROLL, record=sig.record))

    @workflow.signal(name=node_contract.FACTS.name)
    def facts(self, sig: EnrollSignal) -> None:
        self._enqueue(_Event(NodeEventKind.FACTS, record=sig.record))

    @workflow.signal(name=node_contract.LIVENESS.name)
    def liveness(self, sig: LivenessSignal) -> None:
        self._enqueue(_Event(NodeEventKind.LIVENESS, liveness=sig))

    @workflow.signal(name=node_contract.RECONCILE.name)
    def reconcile(self, req: ReconcileRequest) -> None:
        # One queued reconcile serves every request that arrives before it runs.
        if not any(e.kind == NodeEventKind.RECONCILE for e in self._events):
            self._enqueue(_Event(NodeEventKind.RECONCILE, reconcile=req))

    @workflow.update(name=node_contract.ADMIN.name)
    async def admin(self, cmd: NodeAdminInput) -> NodeStatus:
        """Cordon, uncordon or drain; returns once applied (a drain once the node is empty)."""
        seq = self._enqueue(_Event(NodeEventKind.ADMIN, admin=cmd))
        await workflow.wait_condition(lambda: self._done >= seq)
        assert self._status is not None
        return self._status

    @admin.validator
    def _validate_admin(self, cmd: NodeAdminInput) -> None:
        if cmd.action not in _ADMIN_ACTIONS:
            raise ApplicationError(
                f"unknown node action {cmd.action!r}; use one of {', '.join(_ADMIN_ACTIONS)}"
            )
        if self._status is None:
            raise ApplicationError("the node has not finished enrolling yet")
        if self._status.admin == AdminState.REMOVED or self._removed:
            raise ApplicationError(f"node {self._status.record.node_id} was removed")

    # ------------------------------------------------------------------ certificates

    def _retain_current_certificate(self) -> None:
        """Keep the record's certificate in ``certificates`` (until it expires) before the
        record names another one, so a removal still revokes it."""
        status = self._status
        if status is None:
            return
        now = workflow.now()
        live = [c for c in status.certificates if c.not_after > now]
        record = status.record
        if (
            record.certificate_serial
            and record.certificate_not_after is not None
            and record.certificate_not_after > now
            and all(c.serial != record.certificate_serial for c in live)
        ):
            live.append(
                IssuedCertificate(
                    serial=record.certificate_serial,
                    not_after=record.certificate_not_after,
                    issued_at=record.enrolled_at,
                )
            )
        status.certificates = live

    def _last_issued(self) -> tuple[datetime, datetime] | None:
        """(issued, expiry) of the newest certificate issued to the node, if known."""
        status = self._status
        assert status is not None
        renewed = status.certificates[-1] if status.certificates else None
        record = status.record
        if (
            renewed is not None
            and renewed.serial == record.certificate_serial
            and renewed.issued_at is not None
        ):
            return renewed.issued_at, renewed.not_after
        if record.enrolled_at is not None and record.certificate_not_after is not None:
            return record.enrolled_at, record.certificate_not_after
        return None

    @workflow.update(name=node_contract.RENEW_CERTIFICATE.name)
    async def renew_certificate(self, inp: RenewCertificateInput) -> SignCertificateResult:
        """Issue the node a certificate for the CSR's (new) key, same identity and validity
        policy as enrollment, and record it as the node's current one."""
        again = self._reissuable
        if again is not None and again.key_id == inp.key_id:
            return again
        status = self._status
        assert status is not None
        node_id = status.record.node_id
        self._renewing += 1
        try:
            try:
                sign = SignCertificateInput(
                    cluster=self._cluster, node_id=node_id, csr_pem=inp.csr_pem
                )
                if workflow.patched(RENEWAL_SIGNS_LOCALLY):
                    signed = await workflow.execute_local_activity_method(
                        PKIActivities.sign_node_certificate,
                        sign,
                        start_to_close_timeout=timedelta(seconds=30),
                        retry_policy=_SIGN_RETRY,
                    )
                else:
                    signed = await workflow.execute_activity_method(
                        PKIActivities.sign_node_certificate,
                        sign,
                        start_to_close_timeout=timedelta(seconds=30),
                        retry_policy=_SIGN_RETRY,
                    )
            except ActivityError as err:
                cause = err.cause
                if isinstance(cause, ApplicationError):
                    raise ApplicationError(cause.message, type=cause.type) from err
                raise ApplicationError(f"signing failed: {err}", type="SigningFailed") from err
            self._retain_current_certificate()
            status.certificates = [
                *status.certificates,
                IssuedCertificate(
                    serial=signed.serial,
                    not_after=signed.not_after,
                    issued_at=signed.issued_at,
                    key_id=signed.key_id,
                ),
            ]
            status.record = status.record.model_copy(
                update={
                    "certificate_serial": signed.serial,
                    "certificate_not_after": signed.not_after,
                }
            )
        finally:
            self._renewing -= 1
        if status.admin == AdminState.REMOVED or self._removed:
            # Removed while signing: recorded above, so the removal revokes it too.
            raise ApplicationError(_removed_message(node_id), type="NodeRemoved")
        self._reissuable = signed
        workflow.logger.info(
            "renewed the certificate of %s (serial %s, was %s, valid until %s)",
            node_id,
            signed.serial,
            inp.presented_serial or "?",
            signed.not_after.isoformat(),
        )
        return signed

    @renew_certificate.validator
    def _validate_renewal(self, inp: RenewCertificateInput) -> None:
        status = self._status
        if status is None:
            raise ApplicationError(
                "the node has not finished enrolling yet; retry", type="NodeNotEnrolled"
            )
        node_id = status.record.node_id
        if status.admin == AdminState.REMOVED or self._removed:
            raise ApplicationError(_removed_message(node_id), type="NodeRemoved")
        if self._reissuable is not None and self._reissuable.key_id == inp.key_id:
            return  # a retry: answered with the certificate already issued
        if self._renewing:
            raise ApplicationError(
                f"a certificate renewal for node {node_id} is already in progress; retry",
                type="RenewalInProgress",
            )
        last = self._last_issued()
        if last is None:
            return
        until = renewal_refusal(last[0], last[1], workflow.now())
        if until is not None:
            raise ApplicationError(
                f"node {node_id} was issued a certificate at {last[0].isoformat()}; the next "
                f"one is issued from {until.isoformat()} (at most one per quarter of a "
                "certificate's lifetime)",
                type="RenewalTooSoon",
            )

    @workflow.query(name=node_contract.DESCRIBE.name)
    def describe(self) -> NodeStatus | None:
        return self._status


def _removed_message(node_id: str) -> str:
    return (
        f"node {node_id!r} was removed (`cloudlessctl node remove`); its certificates are "
        "revoked and none is renewed: enroll the device again with a new token "
        "(`cloudlessctl token create`)"
    )
