"""The liveness state machine, driven by a fake clock."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.liveness import Health, LivenessTable


def table(**kw: float) -> LivenessTable:
    return LivenessTable(
        ttl=kw.get("ttl", 10.0),
        suspect_grace=kw.get("grace", 1.5),
        jitter=kw.get("jitter", 0.0),
        seed=1,
    )


def test_connect_beat_and_ttl_expiry() -> None:
    t = table()
    assert t.connected("a", 0.0).health is Health.READY  # type: ignore[union-attr]
    assert t.beat("a", 5.0) is None
    assert t.expire(14.9) == []
    (gone,) = t.expire(15.0)
    assert gone.health is Health.OFFLINE and "no heartbeat" in gone.reason
    back = t.beat("a", 16.0)
    assert back is not None and back.health is Health.READY


def test_broken_stream_is_suspect_at_once_then_offline_after_grace() -> None:
    t = table(grace=1.5)
    t.connected("a", 0.0)
    s = t.disconnected("a", 2.0)
    assert s is not None and s.health is Health.SUSPECT
    assert t.expire(3.4) == []
    (off,) = t.expire(3.5)
    assert off.health is Health.OFFLINE and "reconnect" in off.reason


def test_reconnect_within_grace_returns_to_ready_without_offline() -> None:
    t = table(grace=1.5)
    t.connected("a", 0.0)
    t.disconnected("a", 1.0)
    r = t.connected("a", 1.2)
    assert r is not None and r.health is Health.READY
    assert t.expire(5.0) == []


def test_adopted_nodes_get_one_ttl_to_reconnect() -> None:
    t = table(ttl=10.0)
    t.adopt({"a": Health.READY, "b": Health.READY}, now=100.0)
    assert t.connected("a", 101.0) is None  # already Ready: no transition written
    expired = t.expire(110.0)
    assert [x.node_id for x in expired] == ["b"]


def test_jitter_spreads_deadlines_within_bounds() -> None:
    t = LivenessTable(ttl=10.0, jitter=0.5, seed=7)
    for i in range(200):
        t.connected(f"n{i}", 0.0)
    deadlines = sorted(e.ttl for e in t._nodes.values())
    assert deadlines[0] >= 10.0 and deadlines[-1] <= 15.0
    assert deadlines[-1] - deadlines[0] > 2.0  # actually spread, not one instant


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["connect", "beat", "drop", "tick"]), st.floats(0.0, 3.0)),
        max_size=60,
    )
)
def test_transitions_always_change_state_and_follow_the_machine(
    events: list[tuple[str, float]],
) -> None:
    t = table(ttl=4.0, grace=1.0)
    now, last = 0.0, None
    allowed = {
        None: {Health.READY},
        Health.READY: {Health.SUSPECT, Health.OFFLINE},
        Health.SUSPECT: {Health.READY, Health.OFFLINE},
        Health.OFFLINE: {Health.READY},
    }
    for kind, dt in events:
        now += dt
        if kind == "connect":
            out = [t.connected("a", now)]
        elif kind == "beat":
            out = [t.beat("a", now)]
        elif kind == "drop":
            out = [t.disconnected("a", now)]
        else:
            out = list(t.expire(now))
        for tr in out:
            if tr is None:
                continue
            assert tr.health in allowed[last], (last, tr)
            last = tr.health
        assert t.health("a") == last


def test_adopted_suspect_or_offline_node_that_reconnects_is_reported_ready() -> None:
    t = table(ttl=10.0)
    t.adopt({"s": Health.SUSPECT, "o": Health.OFFLINE}, now=0.0)
    back = t.connected("s", 1.0)
    assert back is not None and back.health is Health.READY
    back = t.connected("o", 1.0)
    assert back is not None and back.health is Health.READY


def test_expire_terminates_whatever_the_float_rounding() -> None:
    """Deadlines are compared as the same sums the heap is keyed by; comparing
    ``now - seen >= ttl`` instead once disagreed with the key by one ulp and spun forever."""
    rng = random.Random(1)
    steps = [0.0, 0.1, 0.3, 0.7, 1.0, 1.1, 3.0, 4.0]
    for _ in range(3000):
        t = LivenessTable(ttl=4.0, suspect_grace=1.0, jitter=0.2, seed=0)
        now = 0.0
        for _ in range(30):
            now += rng.choice([*steps, rng.random() * 5])
            kind = rng.choice(["connect", "beat", "drop", "expire"])
            if kind == "connect":
                t.connected("a", now)
            elif kind == "beat":
                t.beat("a", now)
            elif kind == "drop":
                t.disconnected("a", now)
            else:
                t.expire(now)
