"""Record the histories that ``tests/histories/test_replay.py`` replays.

    PYTHONPATH=. python tests/histories/record.py [--address HOST:PORT] [--out DIR] [NAME ...]

Runs each scenario below with stand-in activities (``tests/integration/standins.py``)
against a Temporal dev server (a fresh in-memory one unless ``--address`` is given) and
saves every run of every workflow it started as ``<out>/<scenario>.<n>.json``, ``<out>``
being ``tests/histories/v<version in pyproject.toml>`` unless given: Temporal's history
JSON, its payloads encoded by the pydantic converter as plain JSON, no codec. Runs that
continued as new are followed, so one scenario may save several runs. Existing files are
never overwritten.

Record with the code of a release, once: the files are that release's histories, which
later code must replay (see README.md). Never re-record them to make a change pass.
"""

from __future__ import annotations

# isort: split
import workers  # noqa: F401  (its __init__ applies cloudless.grpc_tuning before grpc loads)

# isort: split
import argparse
import asyncio
import sys
import tomllib
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter

from cloudless.contracts import node as nd
from cloudless.contracts import workload as wl
from cloudless.model import (
    ApplyInput,
    CapacityAvailable,
    EnrollSignal,
    LivenessSignal,
    NodeAdminInput,
    NodeRecord,
    NodeStatus,
    NodeWorkflowInput,
    RenewCertificateInput,
    ReplicaCrashed,
    ReplicaExited,
    ReplicaPhase,
    ReplicaReadiness,
    ReplicaRecord,
    ReplicasLost,
    ReplicasPreempted,
    Resources,
    ScaleInput,
    WaitInput,
    WorkloadPhase,
    WorkloadStatus,
    WorkloadWorkflowInput,
)
from cloudless.testing import start_temporal
from cloudless.vocabulary import AdminAction, NodeHealth, NodeState
from tests.integration.standins import StandIns, eventually, fresh_queue, worker
from workflows.node import NodeWorkflow
from workflows.workload import WorkloadWorkflow

HERE = Path(__file__).parent
VERSION = tomllib.loads((HERE.parents[1] / "pyproject.toml").read_text())["project"]["version"]
Scenario = Callable[[Client, str, StandIns], Awaitable[list[str]]]


def manifest(name: str, replicas: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "cloudless.dev/v1",
        "kind": "Workload",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "runtime": "exec",
            "container": {"command": ["sleep", "3600"]},
            "resources": {"cpu": "100m", "memory": "16Mi"},
            **spec,
        },
    }


def suffix() -> str:
    return uuid.uuid4().hex[:6]


async def start_workload(
    client: Client, queue: str, m: dict[str, Any], max_history_events: int = 0
) -> WorkflowHandle[WorkloadWorkflow, WorkloadStatus]:
    """Update-with-start ``apply``, as the CLI creates a workload."""
    workflow_id = f"workload/default/{m['metadata']['name']}"
    start = WithStartWorkflowOperation(
        WorkloadWorkflow.run,
        WorkloadWorkflowInput(cluster="rec", manifest=m, max_history_events=max_history_events),
        id=workflow_id,
        task_queue=queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    await client.execute_update_with_start_workflow(
        WorkloadWorkflow.apply, ApplyInput(manifest=m), start_workflow_operation=start
    )
    return client.get_workflow_handle(workflow_id)  # the latest run


async def until(
    handle: WorkflowHandle[WorkloadWorkflow, WorkloadStatus],
    ok: Callable[[WorkloadStatus], bool],
) -> WorkloadStatus:
    async def check() -> WorkloadStatus | None:
        status = await wl.STATUS.query(handle)
        return status if ok(status) else None

    result: WorkloadStatus = await eventually(check, timeout=60)
    return result


def available(s: WorkloadStatus) -> bool:
    return s.phase == WorkloadPhase.AVAILABLE


async def apply_scale_delete(client: Client, queue: str, fake: StandIns) -> list[str]:
    """Apply, an unchanged apply, scale up into a full cluster (one replica Pending), room
    appearing, scale down, delete."""
    m = manifest(f"web-{suffix()}", 3)
    handle = await start_workload(client, queue, m)
    await wl.WAIT_SETTLED.execute(
        handle, WaitInput(generation=1, timeout_seconds=30, all_ready=True)
    )
    await wl.APPLY.execute(handle, ApplyInput(manifest=m))  # unchanged
    up = await wl.SCALE.execute(handle, ScaleInput(replicas=5))
    await wl.WAIT_SETTLED.execute(handle, WaitInput(generation=up.generation, timeout_seconds=30))
    fake.slots["n3"] = 2
    await wl.CAPACITY_AVAILABLE.send(handle, CapacityAvailable(reason="n3 Ready"))
    await until(handle, lambda s: available(s) and s.desired == 5)
    down = await wl.SCALE.execute(handle, ScaleInput(replicas=2))
    await wl.WAIT_SETTLED.execute(
        handle,
        WaitInput(generation=down.generation, timeout_seconds=30, all_ready=True),
    )
    await wl.DELETE.execute(handle)
    await handle.result()
    return [handle.id]


async def fail_and_await_replacement(
    handle: WorkflowHandle[WorkloadWorkflow, WorkloadStatus],
    failed: ReplicaRecord,
    exit_code: int,
    message: str,
) -> None:
    """Report ``failed`` exited with ``exit_code``; return once a replacement made the
    workload available again without it."""
    await wl.REPLICA_EXITED.send(
        handle,
        ReplicaExited(
            replica_id=failed.replica_id,
            node_id=failed.node_id,
            phase=ReplicaPhase.FAILED,
            exit_code=exit_code,
            message=message,
        ),
    )
    await until(
        handle,
        lambda s: available(s) and failed.replica_id not in {r.replica_id for r in s.replicas},
    )


async def rollout_on_a_full_cluster(client: Client, queue: str, fake: StandIns) -> list[str]:
    """A template change with no room to surge: old replicas are retired within
    minAvailable; then readiness reports, a failed exit (replaced), delete."""
    fake.slots = {"n1": 1, "n2": 1}
    name = f"roll-{suffix()}"
    handle = await start_workload(client, queue, manifest(name, 2, minAvailable=1))
    await until(handle, available)
    changed = manifest(name, 2, minAvailable=1)
    changed["spec"]["container"]["env"] = [{"name": "VERSION", "value": "2"}]
    result = await wl.APPLY.execute(handle, ApplyInput(manifest=changed))
    status = await until(
        handle,
        lambda s: available(s) and all(r.generation == result.generation for r in s.replicas),
    )
    for r in status.replicas:
        await wl.REPLICA_READINESS.send(
            handle,
            ReplicaReadiness(replica_id=r.replica_id, node_id=r.node_id, ready=True),
        )
    failed = status.replicas[0]
    await fail_and_await_replacement(handle, failed, 3, "boom")
    await wl.DELETE.execute(handle)
    await handle.result()
    return [handle.id]


async def lost_preempted_drained(client: Client, queue: str, fake: StandIns) -> list[str]:
    """With continue-as-new after every busy pass: a node lost, a preemption (and its
    signal repeated in a later run), a drain (surge, then the old replica goes), delete."""
    fake.slots = {"n1": 2, "n2": 2, "n3": 2}
    handle = await start_workload(
        client, queue, manifest(f"move-{suffix()}", 3), max_history_events=12
    )
    status = await until(handle, available)
    fake.down.add("n1")
    await wl.REPLICAS_LOST.send(handle, ReplicasLost(node_id="n1", reason="node n1 offline"))
    status = await until(
        handle, lambda s: available(s) and all(r.node_id != "n1" for r in s.replicas)
    )
    preempt = ReplicasPreempted(node_id="n2", count=1, reason="preempted", plan_id="plan-1")
    victim = [r.replica_id for r in status.replicas if r.node_id == "n2"][-1]
    await wl.REPLICAS_PREEMPTED.send(handle, preempt)
    status = await until(
        handle, lambda s: available(s) and victim not in {r.replica_id for r in s.replicas}
    )
    await wl.REPLICAS_PREEMPTED.send(handle, preempt)  # repeated: ignored
    fake.down.discard("n1")
    fake.down.add("n3")
    await wl.REPLICAS_LOST.send(
        handle,
        ReplicasLost(node_id="n3", reason="node n3 is draining", evacuate=True),
    )
    await until(handle, lambda s: available(s) and all(r.node_id != "n3" for r in s.replicas))
    await wl.DELETE.execute(handle)
    await handle.result()
    return [handle.id]


async def completion(client: Client, queue: str, fake: StandIns) -> list[str]:
    """restartPolicy Never: replicas that exit 0 complete (at start, or reported later)
    and give their room back; never replaced."""
    fake.start_phase = ReplicaPhase.STOPPED
    m = manifest(f"job-{suffix()}", 2, restartPolicy="Never")
    handle = await start_workload(client, queue, m)
    await until(handle, lambda s: s.phase == WorkloadPhase.COMPLETED and not fake.allocated)
    fake.start_phase = ReplicaPhase.RUNNING
    up = await wl.SCALE.execute(handle, ScaleInput(replicas=3))
    status = await until(handle, lambda s: s.generation == up.generation and available(s))
    (running,) = [r for r in status.replicas if r.phase == ReplicaPhase.RUNNING]
    await wl.REPLICA_EXITED.send(
        handle,
        ReplicaExited(
            replica_id=running.replica_id,
            node_id=running.node_id,
            phase=ReplicaPhase.STOPPED,
            exit_code=0,
        ),
    )
    await until(handle, lambda s: s.phase == WorkloadPhase.COMPLETED and not fake.allocated)
    await wl.DELETE.execute(handle)
    await handle.result()
    return [handle.id]


async def stop_given_up(client: Client, queue: str, fake: StandIns) -> list[str]:
    """Stops that cannot reach the agent are given up (the replica is released): on a
    scale-down and on the delete."""
    handle = await start_workload(client, queue, manifest(f"unstop-{suffix()}", 2))
    await until(handle, lambda s: available(s) and s.ready == 2)
    fake.unstoppable.update(fake.slots)
    down = await wl.SCALE.execute(handle, ScaleInput(replicas=1))
    await until(handle, lambda s: s.generation == down.generation and len(s.replicas) == 1)
    await wl.DELETE.execute(handle)
    await handle.result()
    return [handle.id]


async def failures(client: Client, queue: str, fake: StandIns) -> list[str]:
    """Replicas that fail on their node: at their start (replaced once starts work again)
    and by a failed exit their agent gave up on (replaced); delete."""
    fake.start_phase = ReplicaPhase.FAILED
    handle = await start_workload(client, queue, manifest(f"fail-{suffix()}", 2))
    await until(handle, lambda s: s.phase == WorkloadPhase.DEGRADED)
    fake.start_phase = ReplicaPhase.RUNNING
    status = await until(handle, available)
    failed = status.replicas[-1]
    await fail_and_await_replacement(handle, failed, 1, "exited with code 1")
    await wl.DELETE.execute(handle)
    await handle.result()
    return [handle.id]


async def crash_loops(client: Client, queue: str, fake: StandIns) -> list[str]:
    """Crash-loop rescheduling (``spec.reschedule``, patch ``crash-reschedule``): crash
    reports (one repeated) move a replica to another node; a replica dying at its start
    everywhere is moved until its attempts are used up and then held; with continue-as-new
    carrying the crash history; delete."""
    policy = {"failures": 2, "failureWindow": "60s", "attempts": 1, "interval": "10m"}
    m = manifest(f"loop-{suffix()}", 1, reschedule={**policy, "delay": "0s"})
    handle = await start_workload(client, queue, m, max_history_events=40)
    (first,) = (await until(handle, available)).replicas
    for count in (1, 1, 2):
        await wl.REPLICA_CRASHED.send(
            handle,
            ReplicaCrashed(
                replica_id=first.replica_id,
                node_id=first.node_id,
                crashes=count,
                exit_code=1,
                reason="exited with code 1",
            ),
        )
    await until(handle, lambda s: available(s) and s.replicas[0].node_id != first.node_id)
    fake.fail_on.update(fake.slots)  # from now on every start fails
    up = await wl.SCALE.execute(handle, ScaleInput(replicas=2))
    await until(
        handle,
        lambda s: s.generation == up.generation and any(r.crash_loop for r in s.replicas),
    )
    await wl.DELETE.execute(handle)
    await handle.result()
    return [handle.id]


async def quiesce(handle: WorkflowHandle[NodeWorkflow, None]) -> None:
    """Wait until the latest run has finished its workflow tasks (a run just continued as
    new has not had one yet), so that terminating it cuts nothing short."""

    async def idle() -> bool:
        history = await handle.fetch_history()
        tasks = [e.event_type for e in history.events if e.event_type in _TASK_EVENTS]
        return bool(tasks) and tasks[-1] == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED

    await eventually(idle, timeout=60)


_TASK_EVENTS = frozenset(
    {
        EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    }
)


def record_of(node_id: str, address: str = "127.0.0.1:7443") -> NodeRecord:
    return NodeRecord(
        node_id=node_id,
        zone="zone-a",
        labels={"tier": "standard"},
        capacity=Resources(cpu_millis=2000, memory_bytes=2 << 30),
        address=address,
    )


def liveness(health: NodeHealth, reason: str, gateway: str = "gw-1") -> LivenessSignal:
    return LivenessSignal(health=health, reason=reason, at=datetime.now(UTC), gateway=gateway)


async def start_node(
    client: Client, queue: str, node_id: str, max_history_events: int = 0
) -> WorkflowHandle[NodeWorkflow, None]:
    handle = await client.start_workflow(
        NodeWorkflow.run,
        NodeWorkflowInput(
            cluster="rec", record=record_of(node_id), max_history_events=max_history_events
        ),
        id=f"node/{node_id}",
        task_queue=queue,
    )
    latest = client.get_workflow_handle(handle.id)  # its latest run
    await node_state(latest, NodeState.READY)
    return latest


async def node_state(handle: WorkflowHandle[NodeWorkflow, None], state: NodeState) -> NodeStatus:
    async def check() -> NodeStatus | None:
        status = await nd.DESCRIBE.query(handle)
        return status if status is not None and status.state == state else None

    result: NodeStatus = await eventually(check, timeout=60)
    return result


async def node_lifecycle(client: Client, queue: str, fake: StandIns) -> list[str]:
    """Enroll, Suspect, Offline (workloads notified), back Ready (reconciled), new facts,
    cordon, drain, uncordon, a second enrollment."""
    node_id = f"node-{suffix()}"
    handle = await start_node(client, queue, node_id)
    await nd.LIVENESS.send(handle, liveness(NodeHealth.SUSPECT, "missed heartbeats"))
    await node_state(handle, NodeState.SUSPECT)
    await nd.LIVENESS.send(handle, liveness(NodeHealth.OFFLINE, "silent"))
    await node_state(handle, NodeState.OFFLINE)
    await nd.LIVENESS.send(handle, liveness(NodeHealth.READY, "stream open"))
    await node_state(handle, NodeState.READY)
    await nd.FACTS.send(handle, EnrollSignal(record=record_of(node_id, "10.0.0.9:7443")))
    await eventually(lambda: len(fake.named("publish_node")) >= 6)
    for action in (AdminAction.CORDON, AdminAction.DRAIN, AdminAction.UNCORDON):
        await nd.ADMIN.execute(handle, NodeAdminInput(action=action))
    await nd.ENROLL.send(handle, EnrollSignal(record=record_of(node_id)))
    await eventually(lambda: len(fake.named("reconcile_node")) >= 3)
    await node_state(handle, NodeState.READY)
    await quiesce(handle)
    await handle.terminate("recorded")
    return [handle.id]


async def node_flap_hold(client: Client, queue: str, fake: StandIns) -> list[str]:
    """Three departures from Ready in a window: the node is held back (10 s) before Ready;
    a cordon during the hold applies at once."""
    node_id = f"flap-{suffix()}"
    handle = await start_node(client, queue, node_id)
    for _ in range(2):
        await nd.LIVENESS.send(handle, liveness(NodeHealth.SUSPECT, "missed"))
        await node_state(handle, NodeState.SUSPECT)
        await nd.LIVENESS.send(handle, liveness(NodeHealth.READY, "back"))
        await node_state(handle, NodeState.READY)
    await nd.LIVENESS.send(handle, liveness(NodeHealth.SUSPECT, "missed"))
    await node_state(handle, NodeState.SUSPECT)
    await nd.LIVENESS.send(handle, liveness(NodeHealth.READY, "back"))

    async def held() -> bool:
        status = await nd.DESCRIBE.query(handle)
        return status is not None and status.held_until is not None

    await eventually(held)
    await nd.ADMIN.execute(handle, NodeAdminInput(action=AdminAction.CORDON))
    await node_state(handle, NodeState.CORDONED)  # once the hold is over
    await quiesce(handle)
    await handle.terminate("recorded")
    return [handle.id]


async def node_continue_as_new(client: Client, queue: str, fake: StandIns) -> list[str]:
    """Continue-as-new after every busy stretch: the node's status is carried."""
    node_id = f"can-{suffix()}"
    handle = await start_node(client, queue, node_id, max_history_events=10)
    await nd.LIVENESS.send(handle, liveness(NodeHealth.SUSPECT, "missed"))
    await node_state(handle, NodeState.SUSPECT)
    await nd.LIVENESS.send(handle, liveness(NodeHealth.READY, "back"))
    await node_state(handle, NodeState.READY)
    await nd.ADMIN.execute(handle, NodeAdminInput(action=AdminAction.CORDON))
    await quiesce(handle)
    await handle.terminate("recorded")
    return [handle.id]


async def node_ready_paths(client: Client, queue: str, fake: StandIns) -> list[str]:
    """Every way back to Ready: from a (graceful) Suspect; from Offline through a Suspect
    (a stream that closes after the node was written off); from Offline while the agent
    cannot be dialled (the reconcile fails); from a re-enrollment whose probe fails."""
    node_id = f"paths-{suffix()}"
    handle = await start_node(client, queue, node_id)

    graceful = liveness(NodeHealth.SUSPECT, "agent closed its stream (restarting)")
    await nd.LIVENESS.send(handle, graceful.model_copy(update={"graceful": True}))
    await node_state(handle, NodeState.SUSPECT)
    await nd.LIVENESS.send(handle, liveness(NodeHealth.READY, "heartbeat stream opened"))
    await node_state(handle, NodeState.READY)
    await nd.LIVENESS.send(handle, liveness(NodeHealth.OFFLINE, "no heartbeat for 10.0s"))
    await node_state(handle, NodeState.OFFLINE)
    await nd.LIVENESS.send(handle, graceful.model_copy(update={"graceful": True}))
    await nd.LIVENESS.send(handle, liveness(NodeHealth.READY, "heartbeat stream opened"))
    await node_state(handle, NodeState.READY)
    await quiesce(handle)

    fake.unreachable.add(node_id)
    await nd.LIVENESS.send(handle, liveness(NodeHealth.OFFLINE, "did not reconnect within 1s"))
    await node_state(handle, NodeState.OFFLINE)
    published = len(fake.named("publish_node"))
    await nd.LIVENESS.send(handle, liveness(NodeHealth.READY, "heartbeat stream opened"))
    # The reconcile fails: Offline again ("could not reconcile replicas"), published.
    await eventually(lambda: len(fake.named("publish_node")) > published)
    await nd.ENROLL.send(handle, EnrollSignal(record=record_of(node_id)))
    await node_state(handle, NodeState.JOINING)
    await node_state(handle, NodeState.OFFLINE)  # the probe failed
    fake.unreachable.clear()
    await nd.LIVENESS.send(handle, liveness(NodeHealth.READY, "heartbeat stream opened"))
    await node_state(handle, NodeState.READY)
    await quiesce(handle)
    await handle.terminate("recorded")
    return [handle.id]


async def node_renewal(client: Client, queue: str, fake: StandIns) -> list[str]:
    """A certificate renewal (the ``renew_certificate`` Update signs and records), the
    agent's retry for the same key (answered with that certificate), then a liveness
    change the main loop handles meanwhile."""
    node_id = f"renew-{suffix()}"
    handle = await start_node(client, queue, node_id)
    renewal = RenewCertificateInput(
        csr_pem="stand-in CSR", key_id="key of stand-in CSR", presented_serial="01"
    )
    first = await nd.RENEW_CERTIFICATE.execute(handle, renewal)
    again = await nd.RENEW_CERTIFICATE.execute(handle, renewal)
    assert again == first, (first, again)
    await nd.LIVENESS.send(handle, liveness(NodeHealth.SUSPECT, "heartbeat stream broke"))
    await node_state(handle, NodeState.SUSPECT)
    await nd.LIVENESS.send(handle, liveness(NodeHealth.READY, "heartbeat stream opened"))
    await node_state(handle, NodeState.READY)
    await quiesce(handle)
    await handle.terminate("recorded")
    return [handle.id]


SCENARIOS: dict[str, Scenario] = {
    "workload-apply-scale-delete": apply_scale_delete,
    "workload-rollout-full-cluster": rollout_on_a_full_cluster,
    "workload-lost-preempted-drained": lost_preempted_drained,
    "workload-completion": completion,
    "workload-stop-given-up": stop_given_up,
    "workload-failures": failures,
    # Recorded with the release after 0.1.0 (its code has the patch), never before it.
    "workload-crash-loops": crash_loops,
    "node-lifecycle": node_lifecycle,
    "node-flap-hold": node_flap_hold,
    "node-continue-as-new": node_continue_as_new,
    "node-ready-paths": node_ready_paths,
    "node-renewal": node_renewal,
}


async def runs(client: Client, workflow_id: str) -> list[Any]:
    """The histories of every run of ``workflow_id``, first to last."""
    latest = await client.get_workflow_handle(workflow_id).fetch_history()
    start = latest.events[0].workflow_execution_started_event_attributes
    chain = [latest]
    while start.continued_execution_run_id:
        earlier = await client.get_workflow_handle(
            workflow_id, run_id=start.continued_execution_run_id
        ).fetch_history()
        chain.append(earlier)
        start = earlier.events[0].workflow_execution_started_event_attributes
    return chain[::-1]


async def record(client: Client, names: list[str], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    taken = [p.name for name in names for p in out.glob(f"{name}.*.json")]
    if taken:
        raise SystemExit(
            f"{out} already holds {', '.join(taken)}: saved histories are not re-recorded"
        )
    saved: list[Path] = []
    for name in names:
        fake = StandIns()
        queue = fresh_queue("rec")
        async with worker(client, queue, [WorkloadWorkflow, NodeWorkflow], fake):
            workflow_ids = await SCENARIOS[name](client, queue, fake)
        for workflow_id in workflow_ids:
            for n, history in enumerate(await runs(client, workflow_id), start=1):
                last = history.events[-1].event_type
                assert last != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED, (name, n)
                path = out / f"{name}.{n}.json"
                path.write_text(history.to_json() + "\n")
                saved.append(path)
                print(f"{path.name}: {workflow_id}, {len(history.events)} events")
    return saved


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--address", help="a running dev server (default: start one)")
    parser.add_argument("--out", type=Path, default=HERE / f"v{VERSION}")
    parser.add_argument("names", nargs="*", help=f"default: all of {', '.join(SCENARIOS)}")
    args = parser.parse_args(argv)
    names = args.names or list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if args.address:
        await record(
            await Client.connect(args.address, data_converter=pydantic_data_converter),
            names,
            args.out,
        )
        return 0
    env = await start_temporal()
    try:
        await record(env.client, names, args.out)
    finally:
        await env.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
