"""The workload reconciler: desired spec and replica records in, plain actions out.

``workload/<ns>/<name>`` reconciles in *passes*. A pass runs the :class:`Stage` s in order;
for each stage the workflow calls :func:`reconcile` on its records as they are at that
moment and executes the actions it gets back. Stages are decided one at a time because
later ones depend on what earlier ones did: placement decides which replicas fit nowhere
(and so whether old replicas must be retired to make room), and only placed replicas can
be started. Every decision is here; the workflow only executes.

Pure code: no I/O, no clock, no randomness; it imports only :mod:`cloudless.vocabulary`
and sibling policies. It never mutates what it is given. Records are read through the
:class:`Replica` protocol, so the workflow passes its own records without copying them
(a pass over thousands of replicas is a few list scans).

Glossary (see also ``policies/README.md``):

* *current*: a replica of the desired template that stays (not being evicted from a
  draining node, not rescheduled away from a crash loop); *outdated*: any other replica;
* *ready*: Running and, for a readiness-gated workload, reported ready by its probes;
* *done*: ran to completion (``Completed``); counts toward the desired replicas, never
  restarted or replaced;
* *available*: ready (it serves now), whatever its template.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from cloudless.vocabulary import ReplicaPhase, WorkloadPhase
from policies.disruption import retire_budget
from policies.reschedule import Decision, ReschedulePolicy, Verdict, decide

#: Retry delay after a pass leaves replicas Pending or Failed: doubles from the minimum up
#: to the maximum, reset to 0 once every current replica is placed and not failed.
MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0


class Replica(Protocol):
    """What the reconciler reads of one replica record (``cloudless.model.ReplicaRecord``)."""

    @property
    def replica_id(self) -> str: ...
    @property
    def spec_hash(self) -> str: ...  # the template hash it was created from
    @property
    def phase(self) -> ReplicaPhase: ...
    @property
    def node_id(self) -> str: ...  # "" until placed
    @property
    def evicting(self) -> bool: ...  # on a draining node: replaced first, then stopped
    @property
    def preempted(self) -> bool: ...  # its room was taken by a higher-priority replica
    @property
    def ready(self) -> bool | None: ...  # last probe verdict; None: no report yet
    @property
    def released(self) -> bool: ...  # its allocation went back to the ledger
    @property
    def lost(self) -> bool: ...  # its node went away (Failed, released without a stop)
    @property
    def crash_times(self) -> Sequence[float]: ...  # when it crashed on its current node
    @property
    def reschedule_times(self) -> Sequence[float]: ...  # when its line was rescheduled
    @property
    def rescheduled(self) -> bool: ...  # replaced elsewhere: goes once that one serves
    @property
    def replaces(self) -> str: ...  # the replica it was rescheduled from ("" if none)
    @property
    def crash_loop(self) -> str: ...  # why it stays crash-looping on its node ("" if not)


@dataclass(frozen=True, slots=True)
class Desired:
    """The parts of a workload's spec that the reconciler decides on."""

    replicas: int
    template_hash: str
    #: Never retire below this many available replicas before their replacements run.
    min_available: int = 0
    #: ``maxUnavailable`` resolved to a count (``policies.disruption``); None: unset.
    max_unavailable: int | None = None
    #: Replicas are ready only once a readiness/startup probe passed.
    readiness_gated: bool = False
    #: restartPolicy Never/OnFailure: a clean exit completes a replica instead of failing it.
    completes: bool = False
    #: ``spec.reschedule``: crash-looping replicas move to other nodes. None: they do not
    #: (a failed replica is replaced at once, the behaviour of workflows that predate it).
    reschedule: ReschedulePolicy | None = None


# --------------------------------------------------------------------------- predicates


def is_current(desired: Desired, r: Replica) -> bool:
    """Up to date and staying: matches the template, is not being evicted and was not
    rescheduled away from a crash loop."""
    return r.spec_hash == desired.template_hash and not r.evicting and not r.rescheduled


def is_ready(desired: Desired, r: Replica) -> bool:
    """Running and, as far as its agent reported, passing its probes. Without a report yet,
    a replica with a readiness/startup probe is not ready; one without is."""
    if r.phase != ReplicaPhase.RUNNING:
        return False
    return r.ready if r.ready is not None else not desired.readiness_gated


def is_done(r: Replica) -> bool:
    """Ran to completion: counts toward the desired replicas but is not ready."""
    return r.phase == ReplicaPhase.COMPLETED


def crash_decision(desired: Desired, r: Replica, now: float) -> Decision | None:
    """What :mod:`policies.reschedule` decides for a current replica that crashed on its
    node (None: the policy is off, or nothing to decide: it never crashed there, its node
    was lost, its room preempted, or it is not running or failed)."""
    policy = desired.reschedule
    if (
        policy is None
        or not r.crash_times
        or r.lost
        or r.preempted
        or r.phase not in _CRASHABLE
        or not is_current(desired, r)
        or (r.phase == ReplicaPhase.FAILED and not policy.moves)
    ):
        return None
    return decide(
        policy, r.crash_times, r.reschedule_times, now, failed=r.phase == ReplicaPhase.FAILED
    )


_CRASHABLE = (ReplicaPhase.STARTING, ReplicaPhase.RUNNING, ReplicaPhase.FAILED)


def awaits_reschedule(desired: Desired, r: Replica) -> bool:
    """A current replica that failed on its node by crashing (its agent gave up on it, or
    it died at its start): replaced per the reschedule policy, so not simply removed with
    the failed ones (unless the policy never moves replicas: then it is)."""
    return (
        desired.reschedule is not None
        and desired.reschedule.moves
        and r.phase == ReplicaPhase.FAILED
        and bool(r.crash_times)
        and not r.lost
        and not r.preempted
        and is_current(desired, r)
    )


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class RemoveFailed:
    """Stop (unless lost), release (unless preempted) and forget failed replicas."""

    replica_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ScaleDown:
    """Remove surplus current replicas, as :class:`RemoveFailed` does."""

    replica_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Create:
    """Add ``count`` new Pending records of the desired template (ids are the workflow's)."""

    count: int


@dataclass(frozen=True, slots=True)
class Place:
    """Place these Pending replicas through the ledger, in one plan. Those that fit nowhere
    stay Pending (with the reason)."""

    replica_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Retire:
    """Remove outdated replicas before their replacements run, to free room for replicas
    that fit nowhere; within the disruption budget. Reconcile again at once."""

    replica_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Start:
    """Start these placed (Starting) replicas on their agents."""

    replica_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Release:
    """Give completed replicas' allocations back to the ledger; their records stay."""

    replica_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RemoveOutdated:
    """Remove outdated replicas: every current one is ready (or done)."""

    replica_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Reschedule:
    """Replace these crash-looping replicas on other nodes: each gets a new Pending record
    that inherits its line's reschedules and avoids the nodes it crashed on; the old one
    is no longer current and goes once that is safe (:class:`RemoveRescheduled`)."""

    replica_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Hold:
    """Record why crash-looping replicas stay on their nodes (reschedule attempts used
    up), or clear it: ``(replica id, reason or "")`` each."""

    holds: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RemoveRescheduled:
    """Remove rescheduled replicas: they serve nothing, their replacement is ready, or
    the disruption budget allows it."""

    replica_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Settle:
    """End of a pass: the retry delay (0: none), whether the workload message clears, and
    when a crash-looping replica needs another look (0: never; same clock as ``now``)."""

    backoff: float
    clear_message: bool
    wake_at: float = 0.0


Action: TypeAlias = (
    Reschedule
    | Hold
    | RemoveFailed
    | ScaleDown
    | Create
    | Place
    | Retire
    | Start
    | RemoveRescheduled
    | Release
    | RemoveOutdated
    | Settle
)


class Stage(enum.Enum):
    """The stages of one pass, in order (iterating the enum gives that order)."""

    #: Crash-looping replicas get replacements on other nodes, or stay (and say why).
    RESCHEDULE = "reschedule"
    #: Failed replicas free their place; replacements are created below.
    CLEAN_UP = "clean up"
    #: Surplus current replicas go (Pending and Failed first, then the newest); missing
    #: ones get new records.
    SCALE = "scale"
    #: Pending current replicas are placed in one batch.
    PLACE = "place"
    #: What still fits nowhere may take the room of outdated replicas (surge impossible).
    MAKE_ROOM = "make room"
    #: Placed replicas are started, concurrently.
    START = "start"
    #: Rescheduled replicas go once they cost no availability.
    RETIRE_RESCHEDULED = "retire rescheduled"
    #: Completed replicas give their room back.
    RELEASE = "release"
    #: Outdated replicas go once the current ones are all ready (or done).
    ROLL_OUT = "roll out"
    #: The retry backoff and the message.
    SETTLE = "settle"


def reconcile(
    stage: Stage,
    desired: Desired,
    replicas: Sequence[Replica],
    *,
    backoff: float = 0.0,
    now: float = 0.0,
) -> list[Action]:
    """The actions of one ``stage``, decided on the records as they are now.

    ``replicas`` is the workload's records, oldest first (creation order); ``backoff`` is
    the current retry delay (read by :attr:`Stage.SETTLE` only); ``now`` is the workflow's
    clock in seconds, on which the records' crash and reschedule times are read (by the
    crash-loop decisions only). Actions reference replicas by id; ids in one returned
    action are distinct and refer to given records.
    """
    return _STAGES[stage](desired, replicas, backoff, now)


def _reschedule(
    desired: Desired, replicas: Sequence[Replica], backoff: float, now: float
) -> list[Action]:
    move: list[str] = []
    holds: list[tuple[str, str]] = []
    for r in replicas:
        decision = crash_decision(desired, r, now)
        if decision is None:
            reason = ""
        elif decision.verdict == Verdict.NOW:
            move.append(r.replica_id)
            continue
        else:
            reason = decision.reason if decision.verdict == Verdict.EXHAUSTED else ""
        if reason != r.crash_loop:
            holds.append((r.replica_id, reason))
    actions: list[Action] = []
    if move:
        actions.append(Reschedule(tuple(move)))
    if holds:
        actions.append(Hold(tuple(holds)))
    return actions


def _clean_up(
    desired: Desired, replicas: Sequence[Replica], backoff: float, now: float
) -> list[Action]:
    failed = tuple(
        r.replica_id
        for r in replicas
        if r.phase == ReplicaPhase.FAILED and not awaits_reschedule(desired, r)
    )
    return [RemoveFailed(failed)] if failed else []


def _scale(
    desired: Desired, replicas: Sequence[Replica], backoff: float, now: float
) -> list[Action]:
    current = sum(1 for r in replicas if is_current(desired, r))
    if current > desired.replicas:
        return [ScaleDown(scale_down_victims(desired, replicas, current - desired.replicas))]
    if current < desired.replicas:
        return [Create(desired.replicas - current)]
    return []


def _place(
    desired: Desired, replicas: Sequence[Replica], backoff: float, now: float
) -> list[Action]:
    pending = tuple(r.replica_id for r in _pending(desired, replicas))
    return [Place(pending)] if pending else []


def _make_room(
    desired: Desired, replicas: Sequence[Replica], backoff: float, now: float
) -> list[Action]:
    # After PLACE, the current replicas still Pending are exactly those that fit nowhere.
    room = len(_pending(desired, replicas))
    if not room:
        return []
    retire = retirement(desired, replicas, room)
    return [Retire(retire)] if retire else []


def _start(
    desired: Desired, replicas: Sequence[Replica], backoff: float, now: float
) -> list[Action]:
    starting = tuple(
        r.replica_id
        for r in replicas
        if r.phase == ReplicaPhase.STARTING and is_current(desired, r)
    )
    return [Start(starting)] if starting else []


def _retire_rescheduled(
    desired: Desired, replicas: Sequence[Replica], backoff: float, now: float
) -> list[Action]:
    rescheduled = [r for r in replicas if r.rescheduled]
    if not rescheduled:
        return []
    ready_replacements = {
        r.replaces
        for r in replicas
        if r.replaces and is_current(desired, r) and is_ready(desired, r)
    }
    go: list[str] = []
    serving: list[str] = []
    for r in rescheduled:
        if not is_ready(desired, r) or r.replica_id in ready_replacements:
            go.append(r.replica_id)
        else:
            serving.append(r.replica_id)
    if serving:
        free = set(go)  # those whose going costs nothing are gone before the budget counts
        budget = retire_budget(
            desired=desired.replicas,
            available=sum(1 for r in replicas if is_ready(desired, r) and r.replica_id not in free),
            min_available=desired.min_available,
            max_unavailable=desired.max_unavailable,
        )
        go += serving[:budget]
    return [RemoveRescheduled(tuple(go))] if go else []


def _release(
    desired: Desired, replicas: Sequence[Replica], backoff: float, now: float
) -> list[Action]:
    done = tuple(r.replica_id for r in replicas if is_done(r) and not r.released)
    return [Release(done)] if done else []


def _roll_out(
    desired: Desired, replicas: Sequence[Replica], backoff: float, now: float
) -> list[Action]:
    outdated: list[str] = []
    current = 0
    for r in replicas:
        if not is_current(desired, r):
            outdated.append(r.replica_id)
        elif is_ready(desired, r) or is_done(r):
            current += 1
        else:
            return []  # a replacement is not ready yet: the old replicas keep serving
    # Every current replica is ready or done; there must also be enough of them (a drain
    # signalled during this pass may have turned a current replica into an outdated one
    # whose replacement does not exist yet).
    if outdated and current >= desired.replicas:
        return [RemoveOutdated(tuple(outdated))]
    return []


def _settle(
    desired: Desired, replicas: Sequence[Replica], backoff: float, now: float
) -> list[Action]:
    unhealthy = any(
        r.phase in (ReplicaPhase.PENDING, ReplicaPhase.FAILED)
        and is_current(desired, r)
        and not awaits_reschedule(desired, r)
        for r in replicas
    )
    # Crash-looping replicas wait for their reschedule (or a freed attempt) on their own
    # clock, not the retry backoff's; while any does, the workload's message stays.
    wake_at = 0.0
    looping = False
    for r in replicas:
        decision = crash_decision(desired, r, now)
        if decision is None or decision.verdict == Verdict.STAY:
            if r.crash_loop and desired.reschedule is not None:
                wake_at = now  # its hold is stale: the next pass clears it
            continue
        looping = True
        # Due now, or its hold is not recorded yet (it failed during this pass, after
        # RESCHEDULE ran): look again at once.
        held = decision.reason if decision.verdict == Verdict.EXHAUSTED else ""
        stale = decision.verdict == Verdict.NOW or held != r.crash_loop
        at = now if stale else decision.at
        if at and (not wake_at or at < wake_at):
            wake_at = at
    if unhealthy:
        return [
            Settle(
                backoff=min(MAX_BACKOFF, max(MIN_BACKOFF, backoff * 2)),
                clear_message=False,
                wake_at=wake_at,
            )
        ]
    return [Settle(backoff=0.0, clear_message=not looping, wake_at=wake_at)]


_STAGES: dict[Stage, Callable[[Desired, Sequence[Replica], float, float], list[Action]]] = {
    Stage.RESCHEDULE: _reschedule,
    Stage.CLEAN_UP: _clean_up,
    Stage.SCALE: _scale,
    Stage.PLACE: _place,
    Stage.MAKE_ROOM: _make_room,
    Stage.START: _start,
    Stage.RETIRE_RESCHEDULED: _retire_rescheduled,
    Stage.RELEASE: _release,
    Stage.ROLL_OUT: _roll_out,
    Stage.SETTLE: _settle,
}


def _pending(desired: Desired, replicas: Sequence[Replica]) -> list[Replica]:
    return [r for r in replicas if r.phase == ReplicaPhase.PENDING and is_current(desired, r)]


# --------------------------------------------------------------------------- choices


def scale_down_victims(
    desired: Desired, replicas: Sequence[Replica], excess: int
) -> tuple[str, ...]:
    """The ``excess`` current replicas to remove when there are too many.

    Cheapest to lose first: replicas that serve nothing (Pending: unplaced; Failed: lost
    with their node or crashed during this pass), then those not serving yet (Starting, or
    Running but not ready), then ready (or completed) ones; the newest first within each
    tier, as the oldest have proven themselves. One scan, no sort: records are in creation
    order.
    """
    tiers: tuple[list[str], list[str], list[str]] = ([], [], [])
    for r in replicas:
        if is_current(desired, r):
            tiers[scale_down_tier(desired, r)].append(r.replica_id)
    order = [rid for tier in tiers for rid in reversed(tier)]
    return tuple(order[: max(0, excess)])


def scale_down_tier(desired: Desired, r: Replica) -> int:
    """0: serves nothing (Pending, Failed); 1: not serving yet; 2: ready or done."""
    if r.phase in _UNSERVING:
        return 0
    return 2 if is_ready(desired, r) or is_done(r) else 1


_UNSERVING = (ReplicaPhase.PENDING, ReplicaPhase.FAILED)


def retirement(desired: Desired, replicas: Sequence[Replica], room: int) -> tuple[str, ...]:
    """Outdated replicas to remove before their replacements run, to free room for ``room``
    replicas that fit nowhere.

    Only a full cluster gets here; the disruption budget (``policies.disruption``) bounds
    how many *available* replicas go. Outdated replicas that serve nothing (not ready, not
    done) cost no availability, so they go first, oldest first; done ones stay.
    """
    available = 0
    idle: list[str] = []
    serving: list[str] = []
    for r in replicas:
        ready = is_ready(desired, r)
        available += ready
        if is_current(desired, r):
            continue
        if ready:
            serving.append(r.replica_id)
        elif not is_done(r):
            idle.append(r.replica_id)
    if not idle and not serving:
        return ()
    budget = retire_budget(
        desired=desired.replicas,
        available=available,
        min_available=desired.min_available,
        max_unavailable=desired.max_unavailable,
    )
    return tuple((idle + serving[:budget])[: max(0, room)])


def preemption_victims(replicas: Sequence[Replica], node_id: str, count: int) -> tuple[str, ...]:
    """The ``count`` replicas on ``node_id`` that give up their room to a higher-priority
    replica: those not serving yet first, then the newest. Replicas already preempted or
    done are not counted (their room was given back before)."""
    here = sorted(
        (
            (i, r)
            for i, r in enumerate(replicas)
            if r.node_id == node_id and not r.preempted and not is_done(r)
        ),
        key=lambda ir: (ir[1].phase == ReplicaPhase.RUNNING, -ir[0]),
    )
    return tuple(r.replica_id for _, r in here[: max(0, count)])


def start_outcome(desired: Desired, reported: ReplicaPhase) -> ReplicaPhase:
    """A replica's phase after its agent answered a start with ``reported``: Running stays
    Running; a clean exit completes it under restartPolicy Never/OnFailure; anything else
    (an exit under Always, a failure) fails it, to be replaced."""
    if reported == ReplicaPhase.RUNNING:
        return reported
    if reported == ReplicaPhase.STOPPED and desired.completes:
        return ReplicaPhase.COMPLETED
    return ReplicaPhase.FAILED


def exit_outcome(
    desired: Desired, phase: ReplicaPhase, reported: ReplicaPhase
) -> ReplicaPhase | None:
    """A replica's phase after its agent reported a final exit (``reported``: Failed or
    Stopped) while the workload had it at ``phase``; None: nothing changes.

    A failure is replaced (with the workload's backoff). A clean exit of a replica that runs
    (or is starting) completes it under restartPolicy Never/OnFailure (the record stays, its
    room is released, it is never replaced); under Always it is replaced.
    """
    if reported == ReplicaPhase.FAILED:
        return ReplicaPhase.FAILED
    if phase not in (ReplicaPhase.RUNNING, ReplicaPhase.STARTING):
        return None
    return ReplicaPhase.COMPLETED if desired.completes else ReplicaPhase.FAILED


# --------------------------------------------------------------------------- status


@dataclass(frozen=True, slots=True)
class Summary:
    """What ``status`` shows of the replicas: ready current replicas, and the phase."""

    ready: int
    phase: WorkloadPhase


def summarize(
    desired: Desired,
    replicas: Sequence[Replica],
    *,
    deleting: bool,
    dirty: bool,
    blocked: bool = False,
) -> Summary:
    """The workload's phase from its replicas.

    ``dirty``: a reconcile is due (so "every replica Pending" may be about to change and is
    shown as Progressing rather than Pending). ``blocked``: an activity failed for good in
    the last pass (the workload retries after its backoff), so it is Stuck unless it is
    being deleted; this comes before Degraded for a replica crash-looping where it is.
    """
    current = [r for r in replicas if is_current(desired, r)]
    ready = sum(1 for r in current if is_ready(desired, r))
    done = sum(1 for r in current if is_done(r))
    complete = len(replicas) == desired.replicas
    if deleting:
        phase = WorkloadPhase.DELETING if replicas else WorkloadPhase.DELETED
    elif blocked:  # a pass could not get through: that is the more urgent news
        phase = WorkloadPhase.STUCK
    elif any(r.crash_loop for r in current):  # crash-looping where it is: attempts used up
        phase = WorkloadPhase.DEGRADED
    elif complete and done == desired.replicas > 0:
        phase = WorkloadPhase.COMPLETED
    elif complete and ready + done == desired.replicas:
        phase = WorkloadPhase.AVAILABLE
    elif any(r.phase == ReplicaPhase.FAILED for r in current):
        phase = WorkloadPhase.DEGRADED
    elif current and all(r.phase == ReplicaPhase.PENDING for r in current) and not dirty:
        phase = WorkloadPhase.PENDING
    else:
        phase = WorkloadPhase.PROGRESSING
    return Summary(ready=ready, phase=phase)


def fully_ready(desired: Desired, replicas: Sequence[Replica]) -> bool:
    """Exactly the desired replicas exist, and every current one is ready or done."""
    return len(replicas) == desired.replicas and all(
        is_ready(desired, r) or is_done(r) for r in replicas if is_current(desired, r)
    )
