"""Pure membership decisions of ``node/<id>``: flap damping, stream ownership and what a
workload places on a node (the health steps are in ``test_node_health.py``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.enroll import load_agent_gateways, split_addresses
from cloudless.model import ReplicaRecord
from cloudless.vocabulary import NodeHealth, ReplicaPhase
from policies.liveness import Health, LivenessTable
from policies.membership import DAMP_MAX, FLAP_WINDOW, PlacedHere, accepts, flap_hold, placed_here

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def ago(*seconds: float) -> list[datetime]:
    return [NOW - timedelta(seconds=s) for s in seconds]


def test_no_hold_below_threshold() -> None:
    assert flap_hold([], NOW) is None
    assert flap_hold(ago(1, 2), NOW) is None


def test_hold_doubles_per_episode_and_is_capped() -> None:
    assert flap_hold(ago(1, 2, 3), NOW) == timedelta(seconds=10)
    assert flap_hold(ago(1, 2, 3, 4), NOW) == timedelta(seconds=20)
    assert flap_hold(ago(*range(1, 50)), NOW) == DAMP_MAX


def test_old_episodes_do_not_count() -> None:
    old = FLAP_WINDOW.total_seconds() + 1
    assert flap_hold(ago(1, 2, old, old + 1), NOW) is None


def test_graceful_close_is_flagged_for_the_node_workflow() -> None:
    """The node workflow only learns a restart was planned through this flag."""
    table = LivenessTable(ttl=10, suspect_grace=1, seed=1)
    table.connected("n", 0.0)
    t = table.disconnected("n", 1.0, graceful=True)
    assert t is not None and t.health is Health.SUSPECT and t.graceful
    table.connected("n", 2.0)
    t = table.disconnected("n", 3.0)
    assert t is not None and not t.graceful


def sig(health: str, gateway: str, epoch: int, owner: str = "a", owner_epoch: int = 5) -> bool:
    return accepts(
        owner=owner,
        owner_epoch=owner_epoch,
        sig_health=NodeHealth(health),
        sig_gateway=gateway,
        sig_epoch=epoch,
    )


@pytest.mark.parametrize(
    ("health", "gateway", "epoch", "expected"),
    [
        ("Suspect", "a", 5, True),  # the owning stream broke
        ("Offline", "a", 5, True),
        ("Suspect", "a", 4, False),  # an older stream on the same gateway
        ("Offline", "b", 4, False),  # a gateway the node moved off: stale
        ("Ready", "b", 4, False),  # a late Ready about a stream the node left
        ("Ready", "b", 6, True),  # the stream moved: ownership moves with it
        ("Offline", "b", 6, True),  # ... even when its first news is a break
        ("Offline", "a", 6, True),  # the owner's newer stream (it restarted meanwhile)
        ("Offline", "a", 0, True),  # the owner adopted the node after a restart
        ("Offline", "b", 0, False),  # another gateway's adopted, stale view
        ("Ready", "b", 0, True),  # an agent without epochs
    ],
)
def test_only_the_current_stream_speaks(
    health: str, gateway: str, epoch: int, expected: bool
) -> None:
    assert sig(health, gateway, epoch) is expected


def test_without_epochs_the_gateway_rule_applies() -> None:
    assert sig("Offline", "a", 0, owner_epoch=0)
    assert not sig("Offline", "b", 0, owner_epoch=0)
    assert sig("Offline", "b", 0, owner="", owner_epoch=0)  # no owner yet


def test_gateway_lists_from_flags_and_node_json(tmp_path: Path) -> None:
    assert split_addresses(["a:1,b:2", "c:3", "a:1"]) == ["a:1", "b:2", "c:3"]
    assert split_addresses("x:1, y:2") == ["x:1", "y:2"]
    assert split_addresses(None) == []
    node = tmp_path / "node.json"
    node.write_text(json.dumps({"agent_gateway": "old:7444"}))  # before several gateways
    assert load_agent_gateways(tmp_path) == ["old:7444"]
    node.write_text(json.dumps({"agent_gateway": "a:7444", "agent_gateways": ["a:7444", "b:7444"]}))
    assert load_agent_gateways(tmp_path) == ["a:7444", "b:7444"]
    assert load_agent_gateways(tmp_path / "missing") == []


def replica(rid: str, node: str, **fields: object) -> ReplicaRecord:
    return ReplicaRecord(
        replica_id=rid,
        generation=1,
        spec_hash="h",
        node_id=node,
        **fields,
    )


def test_placed_here_is_what_the_workload_still_wants_on_the_node() -> None:
    """A lost or preempted record still names the node until the workload's next pass
    removes it; a node reconciled meanwhile must stop it, not keep it (issue #10)."""
    records = [
        replica("a", "n1", phase=ReplicaPhase.RUNNING, epoch=3),
        replica("b", "n1", phase=ReplicaPhase.STARTING, epoch=4),
        replica("c", "n1", phase=ReplicaPhase.FAILED, lost=True, epoch=1),
        replica("d", "n1", phase=ReplicaPhase.FAILED, preempted=True, epoch=2),
        replica("e", "n2", phase=ReplicaPhase.RUNNING, epoch=5),
        replica("f", "n1", phase=ReplicaPhase.RUNNING, evicting=True, epoch=6),
    ]
    here = placed_here(records, "n1")
    assert here.epochs == {"a": 3, "b": 4, "f": 6}  # a drain's victim stays until replaced
    assert here.running == {"a", "f"}  # "b" may simply not have started yet
    assert placed_here(records, "n3") == PlacedHere({}, frozenset())
