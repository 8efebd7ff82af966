"""The workload reconciler (policies.reconcile), called directly: tables per stage, and
hypothesis invariants over whole simulated passes.

The simulation plays the workflow's part: it runs the stages in order, executes each action
on plain records, and lets a random "world" decide what placement and starts achieve.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudless.vocabulary import ReplicaPhase, WorkloadPhase
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
    awaits_reschedule,
    crash_decision,
    exit_outcome,
    fully_ready,
    is_current,
    is_done,
    is_ready,
    preemption_victims,
    reconcile,
    retirement,
    scale_down_tier,
    scale_down_victims,
    start_outcome,
    summarize,
)
from policies.reschedule import ReschedulePolicy, Verdict

P = ReplicaPhase
NEW, OLD = "new", "old"


@dataclass
class Rec:
    """A replica record as the reconciler sees it (``ReplicaRecord`` has the same fields)."""

    replica_id: str
    phase: ReplicaPhase = P.PENDING
    spec_hash: str = NEW
    node_id: str = ""
    evicting: bool = False
    preempted: bool = False
    ready: bool | None = None
    released: bool = False
    lost: bool = False
    crash_times: list[float] = field(default_factory=list)
    reschedule_times: list[float] = field(default_factory=list)
    rescheduled: bool = False
    replaces: str = ""
    crash_loop: str = ""


def rec(rid: str, phase: ReplicaPhase = P.RUNNING, **kw: object) -> Rec:
    node = "" if phase == P.PENDING else "n1"
    r = Rec(rid, phase, node_id=node)
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def want(replicas: int = 3, **kw: object) -> Desired:
    return replace(Desired(replicas=replicas, template_hash=NEW), **kw)  # type: ignore[arg-type]


def ids(action: Action) -> tuple[str, ...]:
    if isinstance(action, Hold):
        return tuple(rid for rid, _ in action.holds)
    assert not isinstance(action, Create | Settle)
    return action.replica_ids


# --------------------------------------------------------------------------- predicates


def test_readiness_follows_probes_only_when_gated() -> None:
    plain, gated = want(), want(readiness_gated=True)
    assert is_ready(plain, rec("a")) and not is_ready(gated, rec("a"))
    assert is_ready(gated, rec("a", ready=True)) and not is_ready(plain, rec("a", ready=False))
    assert not is_ready(plain, rec("a", P.STARTING)) and not is_ready(plain, rec("a", P.COMPLETED))
    assert is_done(rec("a", P.COMPLETED)) and not is_done(rec("a"))
    assert is_current(plain, rec("a")) and not is_current(plain, rec("a", spec_hash=OLD))
    assert not is_current(plain, rec("a", evicting=True))


# --------------------------------------------------------------------------- stages, by table

CASES: list[tuple[str, Stage, Desired, list[Rec], list[Action]]] = [
    ("nothing failed", Stage.CLEAN_UP, want(), [rec("a"), rec("b", P.PENDING)], []),
    ("failed go, whatever their template", Stage.CLEAN_UP, want(),
     [rec("a", P.FAILED), rec("b"), rec("c", P.FAILED, spec_hash=OLD)],
     [RemoveFailed(("a", "c"))]),
    ("create the missing ones", Stage.SCALE, want(3), [rec("a")], [Create(2)]),
    ("outdated and evicting replicas do not count", Stage.SCALE, want(2),
     [rec("a", spec_hash=OLD), rec("b", evicting=True), rec("c")], [Create(1)]),
    ("completed replicas count", Stage.SCALE, want(2),
     [rec("a", P.COMPLETED), rec("b")], []),
    ("scale down: pending first, then the newest", Stage.SCALE, want(2),
     [rec("a"), rec("b"), rec("c", P.PENDING), rec("d"), rec("e")],
     [ScaleDown(("c", "e", "d"))]),
    ("scale down: failed (lost meanwhile) with the pending, newest first", Stage.SCALE,
     want(1), [rec("a", P.PENDING), rec("b"), rec("c", P.FAILED, lost=True), rec("d")],
     [ScaleDown(("c", "a", "d"))]),
    ("scale down never picks outdated replicas", Stage.SCALE, want(1),
     [rec("a"), rec("b"), rec("c", spec_hash=OLD)], [ScaleDown(("b",))]),
    ("place current pending ones", Stage.PLACE, want(),
     [rec("a"), rec("b", P.PENDING), rec("c", P.PENDING, spec_hash=OLD), rec("d", P.PENDING)],
     [Place(("b", "d"))]),
    ("room only when something fits nowhere", Stage.MAKE_ROOM, want(2),
     [rec("a", spec_hash=OLD), rec("b", P.STARTING)], []),
    ("room: idle outdated first, then serving within minAvailable", Stage.MAKE_ROOM,
     want(3, min_available=2),
     [rec("o1", spec_hash=OLD), rec("o2", spec_hash=OLD), rec("o3", spec_hash=OLD),
      rec("o4", P.STARTING, spec_hash=OLD), rec("n1", P.PENDING), rec("n2", P.PENDING),
      rec("n3", P.PENDING)],
     [Retire(("o4", "o1"))]),
    ("room: maxUnavailable 0 keeps every serving replica", Stage.MAKE_ROOM,
     want(2, max_unavailable=0),
     [rec("o1", spec_hash=OLD), rec("o2", spec_hash=OLD), rec("n1", P.PENDING)], []),
    ("room: a surplus may go under maxUnavailable 0", Stage.MAKE_ROOM,
     want(2, max_unavailable=0),
     [rec("o1", spec_hash=OLD), rec("o2", spec_hash=OLD), rec("n1"), rec("n2", P.PENDING)],
     [Retire(("o1",))]),
    ("room: no more than needed", Stage.MAKE_ROOM, want(3),
     [rec("o1", spec_hash=OLD), rec("o2", spec_hash=OLD), rec("o3", spec_hash=OLD),
      rec("n1", P.PENDING)],
     [Retire(("o1",))]),
    ("room: completed outdated replicas stay", Stage.MAKE_ROOM, want(1),
     [rec("o1", P.COMPLETED, spec_hash=OLD), rec("n1", P.PENDING)], []),
    ("start current placed ones", Stage.START, want(),
     [rec("a", P.STARTING), rec("b"), rec("c", P.STARTING, evicting=True)], [Start(("a",))]),
    ("release completed ones once", Stage.RELEASE, want(),
     [rec("a", P.COMPLETED), rec("b", P.COMPLETED, released=True), rec("c")],
     [Release(("a",))]),
    ("roll out once every current replica is ready", Stage.ROLL_OUT, want(2),
     [rec("o1", spec_hash=OLD), rec("n1"), rec("n2", P.COMPLETED), rec("o2", evicting=True)],
     [RemoveOutdated(("o1", "o2"))]),
    ("no roll out while a replacement is not ready", Stage.ROLL_OUT,
     want(2, readiness_gated=True),
     [rec("o1", spec_hash=OLD), rec("n1", ready=True), rec("n2")], []),
    ("no roll out while replacements are missing", Stage.ROLL_OUT, want(2),
     [rec("o1", evicting=True), rec("n1")], []),
    ("settle: healthy clears backoff and message", Stage.SETTLE, want(1),
     [rec("a"), rec("o", P.PENDING, spec_hash=OLD)], [Settle(0.0, clear_message=True)]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("stage", "desired", "replicas", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_stage(stage: Stage, desired: Desired, replicas: list[Rec], expected: list[Action]) -> None:
    assert reconcile(stage, desired, replicas) == expected


@pytest.mark.parametrize(
    ("backoff", "expected"), [(0.0, MIN_BACKOFF), (1.0, 2.0), (40.0, MAX_BACKOFF), (60.0, 60.0)]
)
def test_settle_doubles_backoff_while_unhealthy(backoff: float, expected: float) -> None:
    for bad in (P.PENDING, P.FAILED):
        got = reconcile(Stage.SETTLE, want(1), [rec("a", bad)], backoff=backoff)
        assert got == [Settle(expected, clear_message=False)]


def test_preemption_prefers_unserving_then_newest_and_skips_done() -> None:
    replicas = [
        rec("a"),
        rec("b", P.STARTING),
        rec("c"),
        rec("d", P.COMPLETED),
        rec("e", P.FAILED, preempted=True),
        rec("f", node_id="n2"),
    ]
    assert preemption_victims(replicas, "n1", 2) == ("b", "c")
    assert preemption_victims(replicas, "n1", 9) == ("b", "c", "a")
    assert preemption_victims(replicas, "n2", 1) == ("f",)
    assert preemption_victims(replicas, "n3", 1) == ()


@pytest.mark.parametrize(
    ("reported", "completes", "expected"),
    [(P.RUNNING, False, P.RUNNING), (P.STOPPED, True, P.COMPLETED), (P.STOPPED, False, P.FAILED),
     (P.FAILED, True, P.FAILED)],
)  # fmt: skip
def test_start_outcome(reported: ReplicaPhase, completes: bool, expected: ReplicaPhase) -> None:
    assert start_outcome(want(completes=completes), reported) == expected


@pytest.mark.parametrize(
    ("phase", "reported", "completes", "expected"),
    [(P.RUNNING, P.FAILED, True, P.FAILED), (P.PENDING, P.FAILED, False, P.FAILED),
     (P.RUNNING, P.STOPPED, True, P.COMPLETED), (P.STARTING, P.STOPPED, True, P.COMPLETED),
     (P.RUNNING, P.STOPPED, False, P.FAILED), (P.COMPLETED, P.STOPPED, True, None),
     (P.FAILED, P.STOPPED, False, None)],
)  # fmt: skip
def test_exit_outcome(
    phase: ReplicaPhase, reported: ReplicaPhase, completes: bool, expected: ReplicaPhase | None
) -> None:
    assert exit_outcome(want(completes=completes), phase, reported) == expected


SUMMARIES: list[tuple[str, Desired, list[Rec], bool, bool, int, WorkloadPhase]] = [
    ("available", want(2), [rec("a"), rec("b")], False, False, 2, WorkloadPhase.AVAILABLE),
    ("completed", want(2), [rec("a", P.COMPLETED)] * 2, False, False, 0, WorkloadPhase.COMPLETED),
    ("ready or done", want(2), [rec("a", P.COMPLETED), rec("b")], False, False, 1,
     WorkloadPhase.AVAILABLE),
    ("a surge is not available yet", want(1), [rec("a"), rec("o", spec_hash=OLD)], False, False,
     1, WorkloadPhase.PROGRESSING),
    ("degraded", want(2), [rec("a"), rec("b", P.FAILED)], False, False, 1,
     WorkloadPhase.DEGRADED),
    ("pending", want(2), [rec("a", P.PENDING)] * 2, False, False, 0, WorkloadPhase.PENDING),
    ("pending but about to reconcile", want(2), [rec("a", P.PENDING)] * 2, False, True, 0,
     WorkloadPhase.PROGRESSING),
    ("deleting", want(2), [rec("a")], True, False, 1, WorkloadPhase.DELETING),
    ("deleted", want(2), [], True, False, 0, WorkloadPhase.DELETED),
    ("zero replicas", want(0), [], False, False, 0, WorkloadPhase.AVAILABLE),
]  # fmt: skip


@pytest.mark.parametrize(
    ("desired", "replicas", "deleting", "dirty", "ready", "phase"),
    [c[1:] for c in SUMMARIES],
    ids=[c[0] for c in SUMMARIES],
)
def test_summarize(
    desired: Desired,
    replicas: list[Rec],
    deleting: bool,
    dirty: bool,
    ready: int,
    phase: WorkloadPhase,
) -> None:
    got = summarize(desired, replicas, deleting=deleting, dirty=dirty)
    assert (got.ready, got.phase) == (ready, phase)


@given(st.lists(st.sampled_from([P.PENDING, P.STARTING, P.RUNNING, P.FAILED]), max_size=6))
def test_a_blocked_pass_is_stuck_unless_deleting(phases: list[ReplicaPhase]) -> None:
    """An activity that failed for good in the last pass shows, whatever the replicas do;
    a delete in progress still shows as one."""
    replicas = [rec(f"r{i}", p) for i, p in enumerate(phases)]
    stuck = summarize(want(len(phases)), replicas, deleting=False, dirty=False, blocked=True)
    assert stuck.phase == WorkloadPhase.STUCK
    plain = summarize(want(len(phases)), replicas, deleting=False, dirty=False)
    assert stuck.ready == plain.ready and plain.phase != WorkloadPhase.STUCK
    deleting = summarize(want(len(phases)), replicas, deleting=True, dirty=False, blocked=True)
    assert deleting.phase in (WorkloadPhase.DELETING, WorkloadPhase.DELETED)


def test_fully_ready() -> None:
    gated = want(2, readiness_gated=True)
    assert fully_ready(gated, [rec("a", ready=True), rec("b", P.COMPLETED)])
    assert not fully_ready(gated, [rec("a", ready=True), rec("b")])
    assert not fully_ready(gated, [rec("a", ready=True)])


# --------------------------------------------------------------------------- simulation

PHASES = [P.PENDING, P.STARTING, P.RUNNING, P.FAILED, P.COMPLETED]


@st.composite
def records(draw: st.DrawFn) -> list[Rec]:
    out = []
    for i in range(draw(st.integers(0, 12))):
        phase = draw(st.sampled_from(PHASES))
        failed = phase == P.FAILED
        out.append(
            Rec(
                replica_id=f"r{i}",
                phase=phase,
                spec_hash=draw(st.sampled_from([NEW, OLD])),
                node_id="" if phase == P.PENDING else draw(st.sampled_from(["n1", "n2"])),
                evicting=draw(st.booleans()) and phase != P.COMPLETED,
                ready=draw(st.none() | st.booleans()) if phase == P.RUNNING else None,
                released=phase == P.COMPLETED and draw(st.booleans()),
                lost=failed and draw(st.booleans()),
                crash_times=draw(st.lists(st.sampled_from(CRASH_TIMES), max_size=5)),
                reschedule_times=draw(st.lists(st.sampled_from(CRASH_TIMES), max_size=3)),
                rescheduled=phase != P.COMPLETED and draw(st.integers(0, 4)) == 0,
                crash_loop=draw(st.sampled_from(["", "", "attempts used up"])),
            )
        )
    for r in out:  # some replicas replace others (a crash loop moved them)
        if out and draw(st.integers(0, 3)) == 0:
            r.replaces = draw(st.sampled_from(out)).replica_id
    return out


#: Times on the simulation's clock (``NOW``): crashes just now, recently and long ago.
NOW = 1000.0
CRASH_TIMES = [NOW, NOW - 1, NOW - 2, NOW - 5, NOW - 30, NOW - 500]


desireds = st.builds(
    Desired,
    replicas=st.integers(0, 8),
    template_hash=st.just(NEW),
    min_available=st.integers(0, 8),
    max_unavailable=st.none() | st.integers(0, 4),
    readiness_gated=st.booleans(),
    completes=st.booleans(),
    reschedule=st.none()
    | st.builds(
        ReschedulePolicy,
        failures=st.integers(1, 4),
        failure_window=st.sampled_from([10.0, 60.0]),
        attempts=st.integers(0, 3),
        interval=st.sampled_from([10.0, 300.0]),
        delay=st.sampled_from([0.0, 3.0]),
        max_delay=st.just(10.0),
        unlimited=st.booleans(),
    ),
)


@dataclass
class World:
    """What placement and starts achieve in one pass (drawn by hypothesis)."""

    fits: int  # how many replicas placement can place
    starts: list[bool]  # per start, in order: comes up (True) or fails
    ready: bool  # started replicas pass their probes at once


class Sim:
    """Plays the workflow: executes a stage's actions on the records."""

    def __init__(self, desired: Desired, replicas: list[Rec]) -> None:
        self.desired = desired
        self.replicas = [replace(r) for r in replicas]  # the caller's records stay as given
        self.backoff = 0.0
        self.now = NOW
        self.wake_at = 0.0
        self.seq = itertools.count(len(replicas) + 100)
        self.log: list[tuple[Action, list[Rec]]] = []  # each action with the records it saw

    def run_pass(self, world: World) -> list[Action]:
        actions: list[Action] = []
        starts = iter(world.starts)
        if world.ready:  # probes pass for whatever runs
            for r in self.replicas:
                if r.phase == P.RUNNING:
                    r.ready = True
        for stage in Stage:
            for action in reconcile(
                stage, self.desired, self.replicas, backoff=self.backoff, now=self.now
            ):
                self.log.append((action, [replace(r) for r in self.replicas]))
                actions.append(action)
                self.execute(action, world, starts)
        return actions

    def execute(self, action: Action, world: World, starts: Iterator[bool]) -> None:
        by_id = {r.replica_id: r for r in self.replicas}
        match action:
            case Reschedule(rids):
                for rid in rids:
                    r = by_id[rid]
                    r.rescheduled = True
                    self.replicas.append(
                        Rec(
                            f"r{next(self.seq)}",
                            spec_hash=NEW,
                            replaces=rid,
                            reschedule_times=[*r.reschedule_times, self.now],
                        )
                    )
            case Hold(holds):
                for rid, reason in holds:
                    by_id[rid].crash_loop = reason
            case (
                RemoveFailed(rids)
                | ScaleDown(rids)
                | Retire(rids)
                | RemoveOutdated(rids)
                | RemoveRescheduled(rids)
            ):
                gone = set(rids)
                self.replicas[:] = [r for r in self.replicas if r.replica_id not in gone]
            case Create(count):
                for _ in range(count):
                    self.replicas.append(Rec(f"r{next(self.seq)}", spec_hash=NEW))
            case Place(rids):
                for rid in rids[: world.fits]:
                    by_id[rid].phase, by_id[rid].node_id = P.STARTING, "n1"
            case Start(rids):
                for rid in rids:
                    up = next(starts, True)
                    r = by_id[rid]
                    r.phase = start_outcome(self.desired, P.RUNNING if up else P.FAILED)
                    if r.phase == P.FAILED:  # it died at its start: a crash on its node
                        r.crash_times = [*r.crash_times, self.now]
                    r.ready = world.ready if self.desired.readiness_gated else None
            case Release(rids):
                for rid in rids:
                    by_id[rid].released = True
            case Settle(backoff, _, wake_at):
                self.backoff = backoff
                self.wake_at = wake_at


worlds = st.builds(
    World,
    fits=st.integers(0, 10),
    starts=st.lists(st.booleans(), max_size=10),
    ready=st.booleans(),
)


REMOVALS = (RemoveFailed, ScaleDown, Retire, RemoveOutdated, RemoveRescheduled)


def available(desired: Desired, replicas: Sequence[Rec]) -> int:
    return sum(1 for r in replicas if is_ready(desired, r))


@settings(max_examples=300, deadline=None)
@given(desireds, records(), worlds)
def test_every_action_refers_to_live_distinct_records(
    desired: Desired, replicas: list[Rec], world: World
) -> None:
    """Never two live copies of one replica id; no action names a record twice, or a
    record that does not exist; each record is removed at most once."""
    sim = Sim(desired, replicas)
    sim.run_pass(world)
    removed: list[str] = []
    for action, seen in sim.log:
        live = {r.replica_id for r in seen}
        assert len(live) == len(seen)
        if isinstance(action, Create | Settle):
            continue
        assert len(set(ids(action))) == len(ids(action)), action
        assert set(ids(action)) <= live, action
        if isinstance(action, REMOVALS):
            removed += ids(action)
        if isinstance(action, Reschedule):  # only current replicas the policy says to move
            for r in seen:
                if r.replica_id in action.replica_ids:
                    decision = crash_decision(desired, r, NOW)
                    assert decision is not None and decision.verdict == Verdict.NOW, (r, decision)
        if isinstance(action, RemoveFailed):  # a crash failure waits for its reschedule
            assert not any(
                awaits_reschedule(desired, r) for r in seen if r.replica_id in action.replica_ids
            )
        if isinstance(action, Place):
            assert all(r.phase == P.PENDING for r in seen if r.replica_id in ids(action))
        if isinstance(action, Start):
            assert all(r.phase == P.STARTING for r in seen if r.replica_id in ids(action))
    assert len(removed) == len(set(removed))
    final = [r.replica_id for r in sim.replicas]
    assert len(final) == len(set(final)) and not set(final) & set(removed)


@settings(max_examples=300, deadline=None)
@given(desireds, records(), worlds)
def test_never_retires_below_min_available_without_a_ready_replacement(
    desired: Desired, replicas: list[Rec], world: World
) -> None:
    sim = Sim(desired, replicas)
    sim.run_pass(world)
    # Also each stage alone on arbitrary records: signals (a drain, a lost node) change
    # records between the stages of a pass, so a stage cannot rely on the earlier ones.
    alone = [
        (action, replicas)
        for stage in (Stage.MAKE_ROOM, Stage.ROLL_OUT)
        for action in reconcile(stage, desired, replicas)
    ]
    for action, seen in [*sim.log, *alone]:
        if isinstance(action, Retire):
            before = available(desired, seen)
            gone = set(action.replica_ids)
            after = available(desired, [r for r in seen if r.replica_id not in gone])
            if after < before:  # serving replicas went: only within the budget
                assert after >= desired.min_available, (action, seen)
                if desired.max_unavailable is not None:
                    assert desired.replicas - after <= desired.max_unavailable
            assert all(not is_current(desired, r) for r in seen if r.replica_id in gone)
        if isinstance(action, RemoveRescheduled):
            gone = set(action.replica_ids)
            kept = [r for r in seen if r.replica_id not in gone]
            ready_replacements = {r.replaces for r in kept if is_ready(desired, r)}
            costly = [
                r
                for r in seen
                if r.replica_id in gone
                and is_ready(desired, r)
                and r.replica_id not in ready_replacements
            ]
            if costly:  # serving replicas went without a ready replacement: within budget
                after = available(desired, kept)
                assert after >= desired.min_available, (action, seen)
                if desired.max_unavailable is not None:
                    assert desired.replicas - after <= desired.max_unavailable, (action, seen)
            assert all(r.rescheduled for r in seen if r.replica_id in gone)
        if isinstance(action, RemoveOutdated):
            current = [r for r in seen if is_current(desired, r)]
            assert len(current) >= desired.replicas
            assert all(is_ready(desired, r) or is_done(r) for r in current)
            assert all(
                not is_current(desired, r) for r in seen if r.replica_id in action.replica_ids
            )


@settings(max_examples=300, deadline=None)
@given(desireds, records())
def test_scale_down_prefers_unserving_then_unready_then_the_newest(
    desired: Desired, replicas: list[Rec]
) -> None:
    current = [r for r in replicas if is_current(desired, r)]
    excess = len(current) - desired.replicas
    victims = scale_down_victims(desired, replicas, excess)
    assert len(victims) == max(0, excess)
    if excess <= 0:
        assert reconcile(Stage.SCALE, desired, replicas) == ([Create(-excess)] if excess else [])
        return
    assert reconcile(Stage.SCALE, desired, replicas) == [ScaleDown(victims)]
    order = {r.replica_id: i for i, r in enumerate(replicas)}
    tier = {r.replica_id: scale_down_tier(desired, r) for r in current}
    kept = [r.replica_id for r in current if r.replica_id not in victims]
    for v in victims:
        for k in kept:
            if tier[v] == tier[k]:
                assert order[v] > order[k]  # the newer goes
            else:
                assert tier[v] < tier[k]  # the less useful goes first


def test_scale_down_tiers() -> None:
    desired = Desired(replicas=1, template_hash=NEW, readiness_gated=True)
    pending, failed = Rec("p", P.PENDING), Rec("f", P.FAILED)
    starting, unready = Rec("s", P.STARTING), Rec("u", P.RUNNING, ready=False)
    ready, done = Rec("r", P.RUNNING, ready=True), Rec("d", P.COMPLETED)
    tiers = [scale_down_tier(desired, r) for r in (pending, failed, starting, unready, ready, done)]
    assert tiers == [0, 0, 1, 1, 2, 2]
    # Oldest first in the records; the unready newcomer goes before the ready veteran.
    assert scale_down_victims(desired, [ready, unready], 1) == ("u",)


@settings(max_examples=200, deadline=None)
@given(desireds, records(), st.lists(worlds, max_size=4))
def test_converges_to_the_desired_count_of_live_current_replicas(
    desired: Desired, replicas: list[Rec], bad_luck: list[World]
) -> None:
    """Whatever happened before (failures, full clusters), once placement and starts
    succeed a few passes leave exactly the desired current replicas, all up, no outdated."""
    sim = Sim(desired, replicas)
    for world in bad_luck:
        sim.run_pass(world)
    good = World(fits=100, starts=[], ready=True)
    sim.now = NOW + 10_000  # a long healthy run: crash and reschedule history ages out
    for _ in range(3):
        sim.run_pass(good)
    assert all(is_current(desired, r) for r in sim.replicas)
    assert len(sim.replicas) == desired.replicas
    assert all(r.phase in (P.RUNNING, P.COMPLETED) for r in sim.replicas)
    assert fully_ready(desired, sim.replicas)
    assert sim.backoff == 0.0
    assert sim.run_pass(good) == [Settle(0.0, clear_message=True)]  # a fixed point


@settings(max_examples=200, deadline=None)
@given(desireds, records(), st.integers(0, 5))
def test_retirement_is_bounded_by_room_and_outdated(
    desired: Desired, replicas: list[Rec], room: int
) -> None:
    got = retirement(desired, replicas, room)
    assert len(got) <= room
    by_id = {r.replica_id: r for r in replicas}
    assert all(not is_current(desired, by_id[g]) and not is_done(by_id[g]) for g in got)
