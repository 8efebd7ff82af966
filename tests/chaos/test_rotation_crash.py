"""Master-key rotation survives ``kill -9`` of the coordinator running it, and reads never
stop.

Real processes: ``cloudless-transit``, the Temporal dev server (SQLite) and two
coordinators with their SecretsService on the same cluster and task queue, as two
replicas of ``cloudless-coordinator`` run. The rotation rewraps in small, paced batches.
Once a batch has been rewrapped, the coordinator whose worker ran it is killed with
SIGKILL; the other one's worker takes over the activities and the workflow and finishes.

Meanwhile a reader keeps reading every secret through the live coordinators (a client
moves to a surviving coordinator, as agents fail over between gateways) and keeps
creating fresh secrets and reading each through every live coordinator, so reads miss the
coordinators' caches: the record comes from a Temporal query and the data key from a
transit unwrap, under the old and under the new key version. Not one read may fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from cloudless.cli.devstack import (
    DevPorts,
    port_open,
    spawn_coordinator,
    spawn_temporal,
    spawn_transit,
    stack_target,
    wait_until,
)
from cloudless.codec import codec_for
from cloudless.contracts.rotation import workflow_id as rotation_workflow_id
from cloudless.secrets.client import SecretsCallError, SecretsClient
from cloudless.temporal import connect
from cloudless.transit.client import embedded_transit_settings
from workers.secrets import RECORD_TTL

pytestmark = pytest.mark.temporal

PORTS = DevPorts.shifted(1600)  # clear of dev (0), devstack (1100), crash (1300)
#: The second coordinator: same Temporal and transit, its own gateway and codec ports.
SECOND = dataclasses.replace(
    PORTS,
    temporal=PORTS.temporal + 20,  # its own front (each coordinator serves one)
    ui=PORTS.ui + 20,
    gateway=PORTS.gateway + 20,
    codec=PORTS.codec + 20,
)
CLUSTER = "rotchaos"
SECRETS = 12


@pytest.fixture
def rotation_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small, paced batches (inherited by the coordinator subprocesses)."""
    monkeypatch.setenv("CLOUDLESS_ROTATION_BATCH_SIZE", "2")
    monkeypatch.setenv("CLOUDLESS_ROTATION_BATCH_INTERVAL", "0.7")
    monkeypatch.setenv("CLOUDLESS_ROTATION_SETTLE_SECONDS", "1")


def kill9(pid: int, port: int | None = None) -> None:
    """SIGKILL the process group; with ``port``, wait until the port is released."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if port is not None:
        wait_until(lambda: not port_open(port), f"the killed process to release :{port}", 30)


async def eventually(check: Any, timeout: float, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def rewrap_worker_pid(temporal: Client) -> int | None:
    """The pid of the coordinator whose worker ran (or runs) the latest ``rewrap_batch``:
    Temporal records each worker's identity, ``<pid>@<host>`` by default."""
    handle = temporal.get_workflow_handle(rotation_workflow_id(CLUSTER))
    desc = await handle.describe()
    for pending in desc.raw_description.pending_activities:
        if pending.activity_type.name == "rewrap_batch" and pending.last_worker_identity:
            return int(pending.last_worker_identity.split("@")[0])
    scheduled: dict[int, str] = {}
    latest = None
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            scheduled[event.event_id] = attrs.activity_type.name
        elif event.HasField("activity_task_started_event_attributes"):
            started = event.activity_task_started_event_attributes
            if scheduled.get(started.scheduled_event_id) == "rewrap_batch":
                latest = int(started.identity.split("@")[0])
    return latest


@dataclasses.dataclass
class Reader:
    """Reads through every live coordinator until stopped; records every failure."""

    live: dict[int, SecretsClient]  # coordinator pid -> its SecretsService
    tokens: dict[str, str]
    errors: list[str] = dataclasses.field(default_factory=list)
    reads: int = 0
    cold_reads: int = 0  # reads of a secret the reading coordinator never loaded
    survivor_reads: int = 0  # reads after the kill
    killed: bool = False
    round_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def run(self) -> None:
        fresh = 0
        while not self.stop.is_set():
            async with self.round_lock:
                for client in list(self.live.values()):
                    for name, token in self.tokens.items():
                        await self.read(client, name, token)
                fresh += 1
                await self.fresh_secret(f"fresh-{fresh}")

    async def fresh_secret(self, name: str) -> None:
        """Create a secret through one coordinator and read it through each: every one
        of these reads loads the record from Temporal first (a cache miss), and on the
        coordinators that did not create it the data key comes from transit."""
        writer = next(iter(self.live.values()))
        try:
            await writer.create("prod", name, {"K": name.encode()}, ["app"])
            token = (await writer.token("prod", name, "app")).token
        except SecretsCallError as err:
            self.errors.append(f"create {name}: {err}")
            return
        for client in self.live.values():
            self.cold_reads += 1
            await self.read(client, name, token)

    async def read(self, client: SecretsClient, name: str, token: str) -> None:
        try:
            got = await client.get("prod", name, token)
        except SecretsCallError as err:
            self.errors.append(f"read {name}: {err}")
            return
        if got.data["K"] != name.encode():
            self.errors.append(f"read {name}: wrong value")
        self.reads += 1
        self.survivor_reads += self.killed

    async def retire(self, pid: int) -> None:
        """Stop using a coordinator; returns once no call to it is in flight."""
        async with self.round_lock:
            await self.live.pop(pid).close()
            self.killed = True


async def test_reads_never_fail_while_the_rotating_coordinator_is_killed(
    tmp_path: Path, rotation_env: None
) -> None:
    state = tmp_path / "stack"
    state.mkdir()
    pids: list[int] = []
    clients: list[SecretsClient] = []
    try:
        pids.append(await asyncio.to_thread(spawn_transit, state, PORTS))
        pids.append(await asyncio.to_thread(spawn_temporal, state, PORTS))
        gateways = {}
        for ports in (PORTS, SECOND):
            pid = await asyncio.to_thread(spawn_coordinator, state, CLUSTER, ports)
            pids.append(pid)
            gateways[pid] = ports.gateway
            clients.append(
                SecretsClient.from_dir(f"127.0.0.1:{ports.gateway + 1}", state / "admin")
            )
        by_pid = dict(zip(gateways, clients, strict=True))
        admin = clients[0]
        temporal = await connect(
            stack_target(state, PORTS), codec=codec_for(embedded_transit_settings(state))
        )
        names = [f"s{i}" for i in range(SECRETS)]
        for n in names:
            await admin.create("prod", n, {"K": n.encode()}, ["app"])
        tokens = {n: (await admin.token("prod", n, "app")).token for n in names}
        before = await admin.key_info()

        reader = Reader(live=dict(by_pid), tokens=tokens)
        reading = asyncio.create_task(reader.run())
        started_at = time.monotonic()
        started = await admin.rotate(wait=False)
        assert started.state in ("Rotating", "Rewrapping")

        async def some_rewrapped() -> bool:
            last = (await clients[1].key_info()).last_rotation
            return last.state == "Rewrapping" and 0 < last.rewrapped < SECRETS

        await eventually(some_rewrapped, 30, "the first rewrapped batch")
        victim = await rewrap_worker_pid(temporal)
        assert victim in by_pid, (victim, list(by_pid))
        (survivor,) = (pid for pid in by_pid if pid != victim)
        await reader.retire(victim)  # the client fails over before the kill, not after
        await asyncio.to_thread(kill9, victim, gateways[victim])
        reads_at_kill = reader.reads

        async def finished() -> Any:
            info = await by_pid[survivor].key_info()
            return info if info.last_rotation.state == "Done" else None

        info = await eventually(finished, 120, "the surviving coordinator to finish")
        rotation_seconds = time.monotonic() - started_at
        reader.stop.set()
        await reading

        assert reader.errors == [], reader.errors[:5]
        assert reader.survivor_reads > 0 and reader.reads > reads_at_kill
        assert reader.cold_reads > 0
        # Every cached record expired at least once while the rotation ran: the original
        # secrets were re-read from Temporal, their rewrapped keys unwrapped by transit.
        assert rotation_seconds > RECORD_TTL
        target = before.latest_version + 1
        assert info.latest_version == target  # rotated exactly once despite the kill
        assert info.min_decryption_version == target
        assert info.last_rotation.rewrapped >= SECRETS
        listed = await by_pid[survivor].list_secrets("prod")
        assert {m.name for m in listed} >= set(names)
        for meta in listed:
            assert meta.key_version == target, meta
        for n in names:
            assert (await by_pid[survivor].get("prod", n, tokens[n])).data["K"] == n.encode()
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
        for pid in pids:
            kill9(pid)
