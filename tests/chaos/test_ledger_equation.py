"""The ledger equation, by property, against a real cluster.

Hypothesis drives random sequences of apply, scale, delete, terminate (of a workload's
workflow, through the Temporal client) and agent kills against real Temporal and three
real agents (exec runtime), without waiting between steps, so placements, starts and
releases are in flight when the next step lands. At the end the killed agents return,
every live workload settles, the reaper runs once (on demand, not on its Schedule), and:

* for every node, the ledger reserves exactly the sum of the requests of the live
  replicas assigned to it (placed by a running workload workflow, not released);
* every agent runs exactly the replicas live workloads have Running on its node.

Bounded to stay within a few minutes: few examples (derandomized, no example database,
no shrinking), at most seven steps each, one agent kill per example (rotating over the
nodes, so none is killed often enough to be flap-damped).
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from cloudless.client import CloudlessClient
from cloudless.contracts import WorkloadHandle
from cloudless.errors import CloudlessError
from cloudless.model import WorkloadPhase
from cloudless.testing.cluster import LocalCluster, exec_cluster
from cloudless.testing.reservations import agent_mismatches, ledger_mismatches
from cloudless.testing.workloads import sleeper

pytestmark = pytest.mark.temporal

NODES = 3
WORKLOADS = 2
SETTLE_TIMEOUT = 60.0


@pytest.fixture(scope="module")
async def cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    async with exec_cluster(
        temporal_env.client,
        "eq",
        agents=NODES,
        agent_prefix="q",
        heartbeat_ttl=3.0,
        suspect_grace=0.5,
    ) as c:
        yield c


Step = tuple[str, int, int]  # (operation, workload index, argument)

STEPS = st.lists(
    st.tuples(
        st.sampled_from(["apply", "apply", "scale", "delete", "terminate", "kill", "settle"]),
        st.integers(0, WORKLOADS - 1),
        st.integers(0, 3),
    ),
    min_size=3,
    max_size=7,
)
EXAMPLES = itertools.count()


@dataclass
class Run:
    """One example's workloads and the agent it killed."""

    cluster: LocalCluster
    names: list[str]
    kill_at: int
    killed: list[str] = field(default_factory=list)

    @property
    def client(self) -> CloudlessClient:
        return CloudlessClient(self.cluster.client, self.cluster.cluster)

    @property
    def keys(self) -> list[str]:
        return [f"default/{n}" for n in self.names]

    async def running(self, name: str) -> bool:
        handle = WorkloadHandle(self.cluster.client, "default", name).handle
        try:
            desc = await handle.describe()
        except RPCError:
            return False
        return desc.status == WorkflowExecutionStatus.RUNNING

    async def step(self, op: str, i: int, arg: int) -> None:
        name, c = self.names[i], self.client
        if op == "apply":
            with contextlib.suppress(CloudlessError):  # refused while a delete runs
                await c.apply(sleeper(name, 1 + arg % 3))
        elif op == "scale" and await self.running(name):
            with contextlib.suppress(CloudlessError):  # deleting, or gone meanwhile
                await c.scale("default", name, arg)
        elif op == "delete" and await self.running(name):
            with contextlib.suppress(CloudlessError):
                await c.delete("default", name, wait=False)
        elif op == "terminate" and await self.running(name):
            handle = WorkloadHandle(self.cluster.client, "default", name).handle
            with contextlib.suppress(RPCError):  # it completed meanwhile
                await handle.terminate("property test")
        elif op == "settle" and await self.running(name):
            # Let one workload reach its goal, so the next step hits running replicas.
            await self.settled(name)
        elif op == "kill" and not self.killed:
            victim = sorted(self.cluster.agents)[self.kill_at % NODES]
            await self.cluster.kill_agent(victim)
            self.killed.append(victim)

    async def settled(self, name: str) -> None:
        c = self.client
        status = await c.workload_status("default", name)
        if status.phase in (WorkloadPhase.DELETING, WorkloadPhase.DELETED):
            await WorkloadHandle(self.cluster.client, "default", name).result()
            return
        done = await c.wait("default", name, status.generation, SETTLE_TIMEOUT, all_ready=True)
        assert done.ready == done.desired, done

    async def settle(self) -> None:
        """The killed agent returns, every live workload reconciles to the end."""
        for name in self.killed:
            await self.cluster.restart_agent(name)
        for name in self.names:
            if await self.running(name):
                await self.settled(name)

    async def clean_up(self) -> None:
        for name in self.names:
            if await self.running(name):
                with contextlib.suppress(CloudlessError):
                    await self.client.delete("default", name)
        await self.client.reap(grace_seconds=0)  # what terminated runs left on agents


@settings(
    max_examples=12,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each example is seconds
    suppress_health_check=[HealthCheck.too_slow],
)
@given(STEPS)
# A run terminated with its replicas running, then the workload applied again.
@example([("apply", 0, 1), ("settle", 0, 0), ("terminate", 0, 0), ("apply", 0, 1)])
# Terminated mid-scale while an agent dies; another workload deleted meanwhile.
@example([("apply", 0, 2), ("apply", 1, 0), ("kill", 0, 0), ("scale", 0, 3),
          ("terminate", 0, 0), ("delete", 1, 0)])  # fmt: skip
# Deleted, applied again during the delete, terminated; a settled one terminated.
@example([("apply", 1, 1), ("delete", 1, 0), ("apply", 1, 2), ("terminate", 1, 0),
          ("apply", 0, 2), ("settle", 0, 0), ("terminate", 0, 0)])  # fmt: skip
async def test_after_any_sequence_reservations_equal_live_replicas(
    cluster: LocalCluster, steps: list[Step]
) -> None:
    n = next(EXAMPLES)
    tag = uuid.uuid4().hex[:5]
    run = Run(cluster, [f"eq{n}-{i}-{tag}" for i in range(WORKLOADS)], kill_at=n)
    try:
        for op, i, arg in steps:
            await run.step(op, i, arg)
        await run.settle()
        report = await run.client.reap(grace_seconds=0)
        assert await ledger_mismatches(cluster, run.keys) == [], (steps, report)
        assert await agent_mismatches(cluster, run.keys) == [], (steps, report)
    finally:
        for name in run.killed:
            if name not in cluster.agents:
                await cluster.restart_agent(name)
        await run.clean_up()
    assert await ledger_mismatches(cluster, run.keys) == []
