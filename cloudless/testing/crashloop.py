"""A replica that crash-loops on one node only, for tests and benchmarks of rescheduling.

The workload runs ``sleep`` under the exec runtime, but a replica that starts on a node
whose agent state directory holds :data:`CRASH_MARKER` prints a line and exits 3 at once
(an exec replica's working directory is ``<state dir>/replicas/<id>/work``). So a test
marks one node, kills the replica's process there, and the agent's restarts crash-loop on
that node while every other node runs the replica fine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from cloudless.client import CloudlessClient
from cloudless.model import ReplicaPhase
from cloudless.spec import Workload
from cloudless.testing.cluster import LocalCluster
from cloudless.testing.workloads import sleeper

#: The file whose presence in an agent's state directory makes the replica crash there.
CRASH_MARKER = "crash-here"
#: What a replica prints before it exits on a marked node.
CRASH_LINE = "crash-here: this node is marked, exiting 3"


def crasher(name: str, replicas: int = 1, **spec: Any) -> Workload:
    """``sleep 3600`` on every node but the marked ones, where it exits 3 right away."""
    script = (
        f'if [ -e ../../../{CRASH_MARKER} ]; then echo "{CRASH_LINE}"; exit 3; fi; exec sleep 3600'
    )
    return sleeper(name, replicas, container={"command": ["sh", "-c", script]}, **spec)


@dataclass(frozen=True)
class CrashLoopRun:
    """One crash loop and its end: where it crashed, where the replacement runs, and the
    seconds from the kill that started it to the replacement Running and ready with
    nothing of the workload left on the crashing node."""

    replica: str
    crashed_on: str
    moved_to: str
    seconds: float


async def crash_loop_and_move(
    cluster: LocalCluster,
    client: CloudlessClient,
    name: str,
    *,
    namespace: str = "default",
    timeout: float = 120.0,
) -> CrashLoopRun:
    """Mark the node of the workload's (single, running) replica, kill its process so the
    agent's restarts crash there, and wait (``wait_settled``: every replica ready, none on
    that node) for the workload to move it. The node stays marked; :func:`unmark` it."""
    status = await client.workload_status(namespace, name)
    (r,) = [r for r in status.replicas if r.phase == ReplicaPhase.RUNNING]
    (cluster.agents[r.node_id].state_dir / CRASH_MARKER).touch()
    t0 = time.monotonic()
    os.kill(int(r.runtime_id), signal.SIGKILL)  # an exec replica's runtime id is its pid
    moved = await client.wait(
        namespace, name, status.generation, timeout, all_ready=True, avoid_node=r.node_id
    )
    seconds = time.monotonic() - t0
    placed = [(x.node_id, x.phase) for x in moved.replicas]
    if len(placed) != 1 or placed[0][0] == r.node_id or placed[0][1] != ReplicaPhase.RUNNING:
        raise AssertionError(f"{name} did not move off {r.node_id} in {timeout}s: {placed}")
    return CrashLoopRun(r.replica_id, r.node_id, moved.replicas[0].node_id, seconds)


def unmark(cluster: LocalCluster) -> None:
    """Remove every node's crash marker."""
    for handle in cluster.agents.values():
        with contextlib.suppress(FileNotFoundError):
            (handle.state_dir / CRASH_MARKER).unlink()
