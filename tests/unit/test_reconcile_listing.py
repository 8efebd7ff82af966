"""A node's reconcile reports as lost only replicas the node really lacks.

The reconcile lists the agent's replicas, then asks each workload what it places there.
A replica that started in between is believed Running but was not in the listing: it
was reported lost and replaced for nothing (a flaky ``test_epochs`` found it). Only what
a second listing, made after the workload answered, still lacks is lost.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

from temporalio.testing import ActivityEnvironment

from activities.membership import MembershipActivities
from cloudless.api import agent_pb2
from cloudless.model import ReconcileNodeInput, ReplicasLost
from policies.membership import PlacedHere

KEY = "default/web"


def replica(rid: str) -> agent_pb2.ReplicaStatus:
    return agent_pb2.ReplicaStatus(replica_id=rid, namespace="default", workload="web", epoch=1)


class Agent:
    """ListReplicas answers the given listings in turn (the last one from then on)."""

    def __init__(self, *listings: list[str]) -> None:
        self.listings = list(listings)
        self.stopped: list[str] = []

    async def ListReplicas(self, request: Any, timeout: float) -> Any:
        ids = self.listings.pop(0) if len(self.listings) > 1 else self.listings[0]
        return agent_pb2.ListReplicasResponse(replicas=[replica(r) for r in ids])

    async def StopReplica(self, request: Any, timeout: float) -> Any:
        self.stopped.append(request.replica_id)
        return agent_pb2.StopReplicaResponse()


async def reconcile(agent: Agent, placed: PlacedHere) -> tuple[Any, list[ReplicasLost]]:
    async def stub(node_id: str, address: str) -> Agent:
        return agent

    told: list[ReplicasLost] = []
    pool: Any = SimpleNamespace(stub=stub)
    acts = MembershipActivities(MagicMock(), pool, "c")  # no Temporal: fresh, and patched

    async def assigned(key: str, node_id: str) -> PlacedHere:
        return placed

    async def signal(key: str, sig: ReplicasLost) -> bool:
        told.append(sig)
        return True

    acts._assigned = assigned  # type: ignore[method-assign]
    acts._signal = signal  # type: ignore[method-assign,assignment]
    result = await ActivityEnvironment().run(
        acts.reconcile_node, ReconcileNodeInput(node_id="n1", address="a", cluster="c", fresh=True)
    )
    return result, told


async def test_a_replica_that_started_after_the_listing_is_not_lost() -> None:
    agent = Agent(["a"], ["a", "b"])  # b started between the listing and the answer
    placed = PlacedHere({"a": 1, "b": 1}, frozenset({"a", "b"}))
    result, told = await reconcile(agent, placed)
    assert result.missing == {} and told == [] and agent.stopped == []


async def test_a_replica_absent_from_both_listings_is_lost() -> None:
    agent = Agent(["a"], ["a"])
    placed = PlacedHere({"a": 1, "c": 1}, frozenset({"a", "c"}))
    result, told = await reconcile(agent, placed)
    assert result.missing == {KEY: ["c"]}
    assert [s.replica_ids for s in told] == [["c"]]
