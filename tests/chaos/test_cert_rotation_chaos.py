"""Every kind of certificate rotates again and again while the cluster works (issue #11,
item 5), with real processes: the jailed Temporal, the coordinator and its front, three
agents running exec replicas.

The coordinator's and the local admin's certificates live 15 seconds (the
``cert-rotation`` Schedule renews them every 10 s), node certificates 30 seconds (agents
renew them over mutual TLS about every 20 s): a node must outlive a coordinator restart,
about 10 s here, within the last third of its certificate's lifetime, or it would have to
enroll again. Through at least five renewals of each:

- an operator (``cloudlessctl`` with the admin context, the way a person uses it) reads
  the cluster every half second and scales a workload each round: not one call fails;
- the coordinator is killed (``kill -9``) just before its certificate is due and started
  again: it renews its certificate as it starts, and the agents renew through it;
- one agent is frozen (SIGSTOP) from before its renewal point to past it, and thawed
  before its certificate expires: it renews at once, with the certificate it has;
- no node is ever Offline, and no agent enrolls again.

Last, an agent frozen past its certificate's expiry is told to enroll again, with the
command to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from cloudless.cli.devstack import (
    DEV_AGENTS,
    DEV_FILE,
    DevPorts,
    port_open,
    record_process,
    spawn_coordinator,
    wait_until,
)
from cloudless.pki import cert_not_after, cert_serial
from cloudless.testing.cli import invoke_ctl
from cloudless.testing.cluster import exec_dev_stack
from cloudless.testing.outage import eventually
from cloudless.tls import CERT_FILE

pytestmark = pytest.mark.temporal

#: Clear of dev (0), devstack (1100), the chaos stacks (1300-2900), front (3700),
#: front_cost (4100) and coordinator certs (4500); below the random test ports (13,000).
PORTS = DevPorts.shifted(4600)
CLUSTER = "rotchaos"
VALIDITY = timedelta(seconds=15)
NODE_VALIDITY = timedelta(seconds=30)
ROTATIONS = 5
COORDINATOR_ARGS = (
    "--coordinator-cert-validity", "15s",
    "--node-cert-validity", "30s",
)  # fmt: skip
WORKLOAD = "rotating"
FROZEN, LATE = DEV_AGENTS[1], DEV_AGENTS[2]


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Path]:
    state = tmp_path_factory.mktemp("rotchaos") / "stack"
    async with exec_dev_stack(state, CLUSTER, PORTS, coordinator_args=COORDINATOR_ARGS):
        yield state


def _pid(state: Path, role: str) -> int:
    pids: dict[str, int] = json.loads((state / DEV_FILE).read_text())["pids"]
    return pids[role]


def _ctl(state: Path, *args: str) -> tuple[int, str]:
    result = invoke_ctl(["--config", str(state / "config.yaml"), "--state-dir", str(state), *args])
    return result.exit_code, result.output


def _serial(path: Path) -> str | None:
    try:
        return cert_serial(path.read_bytes())
    except (OSError, ValueError):
        return None  # mid-rename: the next look sees it


class Watch:
    """The serials each certificate has had, seen on disk as often as it is looked at."""

    def __init__(self, state: Path) -> None:
        self.paths = {
            "coordinator": state / "coordinator" / CERT_FILE,
            "admin": state / "admin" / CERT_FILE,
            **{a.name: state / "agents" / a.name / CERT_FILE for a in DEV_AGENTS},
        }
        self.serials: dict[str, list[str]] = {kind: [] for kind in self.paths}

    def look(self) -> None:
        for kind, path in self.paths.items():
            serial = _serial(path)
            if serial is not None and serial not in self.serials[kind]:
                self.serials[kind].append(serial)

    def renewals(self, kind: str) -> int:
        return len(self.serials[kind]) - 1

    def cert(self, kind: str) -> bytes:
        return self.paths[kind].read_bytes()


class Operator:
    """``cloudlessctl`` calls as a person makes them; every one must succeed (except
    while the coordinator, which serves the front, is down on purpose)."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.calls = 0
        self.failures: list[str] = []
        self.paused = False
        self._one_at_a_time = asyncio.Lock()  # the CLI runner redirects sys.stdout

    async def call(self, *args: str) -> str:
        """One call, and its output; none while :attr:`paused` (the output is empty)."""
        async with self._one_at_a_time:
            if self.paused:
                return ""
            code, out = await asyncio.to_thread(_ctl, self.state, *args)
        self.calls += 1
        if code != 0:
            self.failures.append(f"{' '.join(args)}: {out.strip()[-500:]}")
        return out

    async def pause(self) -> None:
        """No calls from now on until :attr:`paused` is cleared; returns once the call in
        flight, if any, has finished (it may not meet the coordinator being killed)."""
        self.paused = True
        async with self._one_at_a_time:
            pass

    async def nodes(self) -> dict[str, str]:
        out = await self.call("get", "nodes", "-o", "json")
        try:
            return {n["node_id"]: n["state"] for n in json.loads(out)}
        except ValueError:
            return {}


async def _sleep_until(when: datetime) -> None:
    # Certificates expire and fall due at times, not on events: wait for the time.
    await asyncio.sleep(max(0.0, (when - datetime.now(UTC)).total_seconds()))


def _renew_point(cert_pem: bytes, fraction: float, validity: timedelta = VALIDITY) -> datetime:
    expiry = cert_not_after(cert_pem)
    return expiry - validity * (1 - fraction)


async def test_every_certificate_rotates_five_times_while_the_cluster_works(
    stack: Path, tmp_path: Path
) -> None:
    operator, watch = Operator(stack), Watch(stack)
    ready = {a.name: "Ready" for a in DEV_AGENTS}
    await eventually(
        lambda: _states_are(operator, ready), "every agent Ready after enrollment", timeout=60
    )
    operator.failures.clear()  # the wait above may have asked before the front was up
    manifest = tmp_path / "rotating.yaml"
    _write_workload(manifest, 3)
    await operator.call("apply", "-f", str(manifest), "--timeout", "60")
    assert not operator.failures, operator.failures

    states_seen: set[str] = set()
    stop = asyncio.Event()

    async def keep_looking() -> None:
        while not stop.is_set():
            watch.look()
            states_seen.update((await operator.nodes()).values())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)

    looker = asyncio.create_task(keep_looking())
    try:
        # 1. A rotation across a coordinator restart: killed just before its renewal
        #    point, started again at once (which takes past that point).
        coordinator_cert = watch.cert("coordinator")
        await _sleep_until(_renew_point(coordinator_cert, 0.6))
        await operator.pause()
        await asyncio.to_thread(_kill9_coordinator, stack)
        pid = await asyncio.to_thread(
            spawn_coordinator, stack, CLUSTER, PORTS, extra_args=COORDINATOR_ARGS
        )
        record_process(stack, "coordinator", pid)
        # Its ports open before its front has loaded what it authorizes with (it answers
        # "the coordinator is starting" meanwhile): calls count from its first answer on.
        await eventually(
            lambda: _answers(stack), "the restarted coordinator's front to answer", timeout=60
        )
        operator.paused = False
        restarted = cert_serial(watch.cert("coordinator"))
        assert restarted != cert_serial(coordinator_cert), "not renewed at the restart"

        # 2. A rotation while an agent is away past its renewal point, back before expiry.
        frozen_cert = watch.cert(FROZEN.name)
        latest = _renew_point(frozen_cert, 2 / 3 + 0.05, NODE_VALIDITY)  # the jitter's end
        await _sleep_until(_renew_point(frozen_cert, 0.55, NODE_VALIDITY))
        agent_pid = _pid(stack, f"agent/{FROZEN.name}")
        os.kill(agent_pid, signal.SIGSTOP)
        try:
            await _sleep_until(latest + timedelta(milliseconds=500))
        finally:
            os.kill(agent_pid, signal.SIGCONT)
        back_at = datetime.now(UTC)
        assert back_at < cert_not_after(frozen_cert)
        await eventually(
            lambda: _changed(watch, FROZEN.name, frozen_cert),
            "the thawed agent to renew before its certificate expires",
            timeout=max(1.0, (cert_not_after(frozen_cert) - back_at).total_seconds()),
        )

        # 3. On until every certificate has rotated five times, scaling each round.
        deadline = time.monotonic() + 300  # ~100 s when the machine is not loaded
        replicas = 3
        while min(watch.renewals(kind) for kind in watch.paths) < ROTATIONS:
            assert time.monotonic() < deadline, watch.serials
            replicas = 2 if replicas == 3 else 3
            await operator.call("scale", "workload", WORKLOAD, "--replicas", str(replicas))
            await asyncio.sleep(2)  # across processes there is no event to await
    finally:
        stop.set()
        await looker

    assert not operator.failures, operator.failures
    assert operator.calls >= 60, operator.calls
    assert "Offline" not in states_seen, states_seen
    assert all(len(set(s)) == len(s) >= ROTATIONS + 1 for s in watch.serials.values())
    # Nobody enrolled again: one enrollment per agent in its log, renewals many.
    for a in DEV_AGENTS:
        log = (stack / "logs" / f"agent-{a.name}.log").read_text(errors="replace")
        assert log.count('"agent.enrolled"') <= 1, a.name
        assert log.count('"renew.renewed"') >= ROTATIONS, (a.name, log[-2000:])
    coordinator_log = (stack / "logs" / "coordinator.log").read_text(errors="replace")
    assert "pki.renewed_without_schedule" not in coordinator_log
    out = await operator.call("get", "workloads", "-o", "json")
    (workload,) = [w for w in json.loads(out) if w["name"] == WORKLOAD]
    assert workload["ready"] == replicas, workload

    # Last: an agent away past its certificate's expiry is told to enroll again.
    late_pid = _pid(stack, f"agent/{LATE.name}")
    os.kill(late_pid, signal.SIGSTOP)
    try:
        frozen_until = cert_not_after(watch.cert(LATE.name)) + timedelta(seconds=1)
        await _sleep_until(frozen_until)
    finally:
        os.kill(late_pid, signal.SIGCONT)
    late_log = stack / "logs" / f"agent-{LATE.name}.log"
    await eventually(
        lambda: _says(late_log, f"cloudlessctl token create --node {LATE.name}"),
        "the late agent to say how to enroll again",
        timeout=30,
    )


def _kill9_coordinator(state: Path) -> None:
    os.killpg(_pid(state, "coordinator"), signal.SIGKILL)
    wait_until(lambda: not port_open(PORTS.gateway), "the killed coordinator's port", 30)


async def _answers(state: Path) -> bool:
    code, _ = await asyncio.to_thread(_ctl, state, "get", "nodes", "-o", "json")
    return code == 0


async def _states_are(operator: Operator, want: dict[str, str]) -> bool:
    return await operator.nodes() == want


async def _changed(watch: Watch, kind: str, old: bytes) -> bool:
    watch.look()
    return cert_serial(watch.cert(kind)) != cert_serial(old)


async def _says(log: Path, text: str) -> bool:
    return text in log.read_text(errors="replace")


def _write_workload(path: Path, replicas: int) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "cloudless.dev/v1",
                "kind": "Workload",
                "metadata": {"name": WORKLOAD},
                "spec": {
                    "replicas": replicas,
                    "runtime": "exec",
                    "container": {"command": ["sleep"], "args": ["600"]},
                    "resources": {"cpu": "50m", "memory": "8Mi"},
                },
            }
        )
    )
