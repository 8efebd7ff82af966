"""How a node's health moves (``policies.membership.next_health``): every edge into Ready
reconciles first, entering Offline notifies, Offline is left only for Ready.

A model of one node (``World``) goes through sequences of events: liveness signals in any
order, re-enrollments, the agent going down and up, workloads placing replicas and removing
them (whether or not the stop reaches the agent; a stop given up asks the node to
reconcile), and the node handling those requests. Every step of the node goes through the
rule under test, and the invariant issue #10 asks for is checked: the node never becomes
Ready while its agent runs a replica the control plane does not place there, and once it
has handled its reconcile requests a Ready node runs no such replica either. Checked two
ways: every history of up to 12 events (a breadth-first search, each distinct world once),
and long random ones (hypothesis' stateful testing). The search is shown to find the holes
of weaker rules, the one before issue #10 among them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from cloudless.vocabulary import NodeHealth
from policies.membership import HealthStep, next_health

JOINING, READY, SUSPECT, OFFLINE = (
    NodeHealth.JOINING,
    NodeHealth.READY,
    NodeHealth.SUSPECT,
    NodeHealth.OFFLINE,
)
Rule = Callable[[NodeHealth, NodeHealth], HealthStep | None]


@pytest.mark.parametrize(
    ("current", "observed", "step"),
    [
        # Every edge into Ready reconciles first.
        (JOINING, READY, HealthStep(READY, reconcile=True)),
        (SUSPECT, READY, HealthStep(READY, reconcile=True)),
        (OFFLINE, READY, HealthStep(READY, reconcile=True)),
        # Entering Offline writes the node's replicas off.
        (JOINING, OFFLINE, HealthStep(OFFLINE, notify=True)),
        (READY, OFFLINE, HealthStep(OFFLINE, notify=True)),
        (SUSPECT, OFFLINE, HealthStep(OFFLINE, notify=True)),
        # Suspect only from Ready: it leaves the replicas alone.
        (READY, SUSPECT, HealthStep(SUSPECT)),
        (OFFLINE, SUSPECT, None),  # written off stays written off until a reconciled Ready
        (JOINING, SUSPECT, None),  # the enrollment probe decides
        # The same health again changes nothing.
        (READY, READY, None),
        (SUSPECT, SUSPECT, None),
        (OFFLINE, OFFLINE, None),
        # Joining is entered by an enrollment, never by a liveness signal.
        (READY, JOINING, None),
        (OFFLINE, JOINING, None),
    ],
)
def test_next_health(current: NodeHealth, observed: NodeHealth, step: HealthStep | None) -> None:
    assert next_health(current, observed) == step


# ------------------------------------------------------------------ the model


@dataclass
class World:
    """One node as the control plane sees it (``health``, ``ledger``) and as it is
    (``agent_up``, ``runs``). Replicas outlive their agent, as containers and exec
    processes do; only a stop that reaches the agent ends one."""

    rule: Rule
    runs: set[int]
    health: NodeHealth = JOINING
    agent_up: bool = True
    ledger: set[int] = field(default_factory=set)
    next_id: int = 1000
    #: Entries into Ready, with the replicas run then that the ledger did not place here.
    entries: list[frozenset[int]] = field(default_factory=list)
    #: Whether a workload that gives up a stop asks the node to reconcile (``reconcile``
    #: requests), and how many such requests the node has not handled yet.
    asks: bool = True
    requests: int = 0

    def _reconcile(self) -> bool:
        """``reconcile_node``; False (and the node Offline) if the agent is unreachable."""
        if not self.agent_up:
            self.observe(OFFLINE)
            return False
        self.runs &= self.ledger  # stopped: everything not placed here
        self.ledger &= self.runs  # reported missing: the workloads replace them
        return True

    def observe(self, observed: NodeHealth) -> None:
        """What ``node/<id>`` does with a signal or a finding (as ``workflows/node.py``)."""
        step = self.rule(self.health, observed)
        if step is None:
            return
        if step.reconcile and not self._reconcile():
            return
        self.health = step.health
        if step.notify:
            self.ledger.clear()  # lost: released and replaced elsewhere, not stopped
        if step.health == READY:
            self.entries.append(frozenset(self.runs - self.ledger))

    # ---- events

    def signal(self, health: NodeHealth) -> None:
        """A liveness signal from any gateway, in any order, stale or not."""
        self.observe(health)

    def enroll(self) -> None:
        """A (re-)enrollment: Joining, then the probe's outcome."""
        self.health = JOINING
        self.observe(READY if self.agent_up else OFFLINE)

    def agent(self, up: bool) -> None:
        """The agent stops, crashes, freezes or is cut off; or it is back. The control
        plane learns of it only through signals."""
        self.agent_up = up

    def place(self) -> None:
        """A workload places a replica here (the ledger accepts only Ready nodes)."""
        if self.health != READY:
            return
        self.next_id += 1
        if self.agent_up:  # else the start fails and the workload releases it
            self.ledger.add(self.next_id)
            self.runs.add(self.next_id)

    def remove(self, which: int, stop_arrives: bool) -> None:
        """A workload removes one of its replicas here (scale down, update, delete): it is
        released whether or not the stop reaches the agent (a stop is given up after a
        few tries, so that an unreachable node cannot wedge a delete)."""
        if not self.ledger:
            return
        victim = sorted(self.ledger)[which % len(self.ledger)]
        self.ledger.discard(victim)
        if stop_arrives:
            self.runs.discard(victim)
        elif self.asks:
            self.requests += 1

    def handle_requests(self) -> None:
        """The node handles its queued reconcile requests (one reconcile serves them all):
        at once if it is Ready; otherwise its way back to Ready reconciles anyway."""
        if self.requests:
            self.requests = 0
            if self.health == READY:
                self._reconcile()

    def settled_strays(self) -> frozenset[int]:
        """With no request pending, a Ready node runs nothing the ledger does not place."""
        if self.health != READY or self.requests:
            return frozenset()
        return frozenset(self.runs - self.ledger)


#: Replicas a device may run from a previous life when it first enrolls.
LEFTOVERS = st.sets(st.integers(0, 9), max_size=3)


class NodeLife(RuleBasedStateMachine):
    """Long random histories of one node (30 events; each run also leaves some kinds of
    event out, which reaches sequences that need many of the others in a row)."""

    def __init__(self) -> None:
        super().__init__()
        self.world = World(next_health, runs=set())

    @initialize(leftovers=LEFTOVERS)
    def first_enrollment(self, leftovers: set[int]) -> None:
        self.world.runs = set(leftovers)
        self.world.enroll()

    @rule(health=st.sampled_from([READY, SUSPECT, OFFLINE]))
    def signal(self, health: NodeHealth) -> None:
        self.world.signal(health)

    @rule()
    def enroll(self) -> None:
        self.world.enroll()

    @rule(up=st.booleans())
    def agent(self, up: bool) -> None:
        self.world.agent(up)

    @precondition(lambda self: self.world.health == READY)
    @rule()
    def place(self) -> None:
        self.world.place()

    @precondition(lambda self: bool(self.world.ledger))
    @rule(which=st.integers(0, 2), stop_arrives=st.booleans())
    def remove(self, which: int, stop_arrives: bool) -> None:
        self.world.remove(which, stop_arrives)

    @rule()
    def handle_requests(self) -> None:
        self.world.handle_requests()

    @invariant()
    def never_ready_with_a_stray(self) -> None:
        for stray in [*self.world.entries, self.world.settled_strays()]:
            assert not stray, f"Ready while running {sorted(stray)}, which it is not placed"


TestNodeLife = NodeLife.TestCase
TestNodeLife.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


def legacy(current: NodeHealth, observed: NodeHealth) -> HealthStep | None:
    """The rule before issue #10: only Offline and Joining reconciled on the way to Ready,
    and an Offline node took a Suspect."""
    if observed in (current, JOINING) or (current == JOINING and observed == SUSPECT):
        return None
    if observed == READY:
        return HealthStep(READY, reconcile=current in (OFFLINE, JOINING))
    return HealthStep(observed, notify=observed == OFFLINE)


def suspect_skips_reconcile(current: NodeHealth, observed: NodeHealth) -> HealthStep | None:
    """The fix with one hole: Suspect → Ready without a reconcile."""
    step = next_health(current, observed)
    if step is not None and current == SUSPECT:
        return HealthStep(step.health, reconcile=False, notify=step.notify)
    return step


#: Every event the search below tries, by name.
EVENTS: dict[str, Callable[[World], None]] = {
    "Ready signal": lambda w: w.signal(READY),
    "Suspect signal": lambda w: w.signal(SUSPECT),
    "Offline signal": lambda w: w.signal(OFFLINE),
    "re-enrollment": World.enroll,
    "agent down": lambda w: w.agent(up=False),
    "agent up": lambda w: w.agent(up=True),
    "place": World.place,
    **{f"remove #{i}": partial(World.remove, which=i, stop_arrives=True) for i in range(2)},
    **{
        f"remove #{i}, stop lost": partial(World.remove, which=i, stop_arrives=False)
        for i in range(2)
    },
    "reconcile requests handled": World.handle_requests,
}


def _key(w: World) -> tuple[object, ...]:
    """The world up to renaming replicas (only their order and membership matter)."""
    ids = sorted(w.ledger | w.runs)
    return (w.health, w.agent_up, w.requests, tuple((i in w.ledger, i in w.runs) for i in ids))


def bad(w: World) -> bool:
    """The node became Ready with a stray, or is Ready with one and nothing pending."""
    return any(w.entries) or bool(w.settled_strays())


def strays(rule: Rule, depth: int, *, asks: bool = True) -> list[list[str]]:
    """Histories (up to ``depth`` events after the first enrollment, of a device with or
    without a leftover replica) that leave the node Ready with a stray (``bad``). A
    breadth-first search over every history, each distinct world explored once: so it
    lists the shortest history into each bad step, and none at all if there is none."""
    found: list[list[str]] = []
    frontier: list[tuple[World, list[str]]] = []
    for leftovers in (set(), {0}):
        world = World(rule, runs=set(leftovers), asks=asks)
        world.enroll()
        if bad(world):
            found.append(["first enrollment"])
        frontier.append((world, []))
    seen = {_key(w) for w, _ in frontier}
    for _ in range(depth):
        after: list[tuple[World, list[str]]] = []
        for world, path in frontier:
            for name, event in EVENTS.items():
                w = replace(world, runs=set(world.runs), ledger=set(world.ledger), entries=[])
                event(w)
                if bad(w):
                    found.append([*path, name])
                elif _key(w) not in seen:
                    seen.add(_key(w))
                    after.append((w, [*path, name]))
        frontier = after
    return found


def test_no_history_of_up_to_12_events_leaves_a_node_ready_with_a_stray() -> None:
    assert strays(next_health, depth=12) == []


@pytest.mark.parametrize(
    ("weaker", "asks", "hole"),
    [
        (legacy, True, ["place", "Offline signal", "Suspect signal", "Ready signal"]),
        (
            suspect_skips_reconcile,
            True,
            ["place", "Suspect signal", "remove #0, stop lost", "Ready signal"],
        ),
        # A workload that gives a stop up silently: the node never leaves Ready.
        (next_health, False, ["place", "remove #0, stop lost"]),
    ],
)
def test_the_search_finds_the_holes_of_weaker_rules(
    weaker: Rule, asks: bool, hole: list[str]
) -> None:
    """The search can fail: it finds the hole of the old rule, of one that skips the
    reconcile only when coming back from Suspect, and of given-up stops that nobody
    follows up; replayed, each leaves the node Ready with a stray."""
    found = strays(weaker, depth=4, asks=asks)
    assert found
    for path in [*found, hole]:
        world = World(weaker, runs=set(), asks=asks)
        world.enroll()
        for name in path:
            EVENTS[name](world)
        assert world.health == READY and bad(world), path


def test_the_issue_10_sequence() -> None:
    """SIGSTOP until Offline (the replica is replaced), SIGTERM + SIGCONT (the old stream
    closes: Suspect), start again (Ready): the replaced replica must not survive."""

    def play(rule: Rule) -> World:
        world = World(rule, runs=set())
        world.enroll()
        world.place()
        world.agent(up=False)  # SIGSTOP
        world.signal(OFFLINE)  # no heartbeat for the TTL: the replica is replaced
        world.agent(up=True)  # SIGCONT
        world.signal(SUSPECT)  # the agent closed its stream (restarting)
        world.signal(READY)  # the restarted agent's new stream
        return world

    assert any(play(legacy).entries)
    fixed = play(next_health)
    assert fixed.health == READY and fixed.runs == set() and not any(fixed.entries)
