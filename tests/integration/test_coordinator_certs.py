"""The coordinator's own certificates renew without a restart (issue #11, item 5), from
the ``cert-rotation`` Schedule.

A real dev stack (transit, the jailed Temporal, the coordinator and its front, three
agents) whose coordinator issues itself and the local admin 20-second certificates. It
runs through at least three renewals of its certificate while the agents heartbeat to
it: no node leaves Ready, ``cloudlessctl`` (the admin's context, ``<state>/config.yaml``)
keeps working through the front, the coordinator keeps reaching Temporal (through its
own door) and the agents (with new channels), and an apply succeeds after the third
renewal, well past the first certificate's expiry.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from cloudless.cli.devstack import DEV_AGENTS, DevPorts
from cloudless.pki import cert_not_after, cert_serial
from cloudless.testing.cli import invoke_ctl
from cloudless.testing.cluster import exec_dev_stack
from cloudless.testing.outage import eventually
from cloudless.tls import CERT_FILE

pytestmark = pytest.mark.temporal

PORTS = DevPorts.shifted(4500)  # clear of dev (0), devstack (1100), chaos (1300-2900), front (3700)
CLUSTER = "certs"
VALIDITY = "20s"
RENEWALS = 3


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Path]:
    state = tmp_path_factory.mktemp("coordcerts") / "stack"
    args = ("--coordinator-cert-validity", VALIDITY)
    async with exec_dev_stack(state, CLUSTER, PORTS, coordinator_args=args):
        yield state


async def _all_ready(state: Path, ready: dict[str, str]) -> bool:
    return await _node_states(state) == ready


def _ctl(state: Path, *args: str) -> tuple[int, str]:
    result = invoke_ctl(["--config", str(state / "config.yaml"), "--state-dir", str(state), *args])
    return result.exit_code, result.output


async def _node_states(state: Path) -> dict[str, str]:
    code, out = await asyncio.to_thread(_ctl, state, "get", "nodes", "-o", "json")
    assert code == 0, out
    return {n["node_id"]: n["state"] for n in json.loads(out)}


async def test_three_renewals_while_the_cluster_works(stack: Path, tmp_path: Path) -> None:
    ready = {a.name: "Ready" for a in DEV_AGENTS}
    await eventually(
        lambda: _all_ready(stack, ready), "every agent Ready after enrollment", timeout=60
    )
    cert_path = stack / "coordinator" / CERT_FILE
    admin_path = stack / "admin" / CERT_FILE
    first = cert_path.read_bytes()
    first_expiry = cert_not_after(first)
    serials = [cert_serial(first)]
    admin_serials = {cert_serial(admin_path.read_bytes())}
    checks = 0
    deadline = time.monotonic() + 120  # three renewals take ~40 s
    while len(serials) <= RENEWALS:
        assert time.monotonic() < deadline, f"only {len(serials) - 1} renewals: {serials}"
        states = await _node_states(stack)
        assert states == ready, (len(serials), states)
        code, out = await asyncio.to_thread(_ctl, stack, "get", "workloads", "-o", "json")
        assert code == 0, out
        checks += 1
        serial = cert_serial(cert_path.read_bytes())
        if serial != serials[-1]:
            serials.append(serial)
        admin_serials.add(cert_serial(admin_path.read_bytes()))
        await asyncio.sleep(1.0)  # across processes there is no event to await
    assert len(set(serials)) == RENEWALS + 1, serials  # a new certificate each time
    assert len(admin_serials) >= RENEWALS, admin_serials  # the admin's renews alike
    # Past the first certificate's expiry: nothing in the process still uses it.
    assert datetime.now(UTC) > first_expiry
    manifest = tmp_path / "renewed.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "cloudless.dev/v1",
                "kind": "Workload",
                "metadata": {"name": "after-renewals"},
                "spec": {
                    "replicas": 3,
                    "runtime": "exec",
                    "container": {"command": ["sleep"], "args": ["600"]},
                    "resources": {"cpu": "50m", "memory": "8Mi"},
                },
            }
        )
    )
    code, out = await asyncio.to_thread(
        _ctl, stack, "apply", "-f", str(manifest), "--timeout", "60"
    )
    assert code == 0, out
    code, out = await asyncio.to_thread(_ctl, stack, "get", "workloads", "-o", "json")
    (workload,) = [w for w in json.loads(out) if w["name"] == "after-renewals"]
    assert workload["ready"] == 3, workload  # the coordinator reached the agents
    code, out = await asyncio.to_thread(_ctl, stack, "get", "nodes", "-o", "json")
    assert {n["state"] for n in json.loads(out)} == {"Ready"}, out
    assert checks >= 10
    # The Schedule renewed them all: the coordinator never had to itself.
    log = (stack / "logs" / "coordinator.log").read_text()
    assert "pki.rotation_schedule_created" in log
    assert "pki.coordinator_cert_renewed" in log
    assert "pki.renewed_without_schedule" not in log
    # An admin can ask for a look now, and force one. A forced run renews what was issued
    # before it; certificates carry whole seconds, so one the Schedule issued in the same
    # second is taken as current (not renewed twice): let a second or two pass first.
    await asyncio.sleep(2)
    code, out = await asyncio.to_thread(_ctl, stack, "certs", "rotate", "--force", "-o", "json")
    assert code == 0, out
    report = json.loads(out)
    assert report["force"] and not report["unreachable"], report
    ((instance,),) = [[i["instance"] for i in report["instances"]]]
    assert {(c["kind"], c["renewed"]) for c in report["instances"][0]["certificates"]} == {
        ("coordinator", True),
        ("admin", True),
    }, report
    code, out = await asyncio.to_thread(_ctl, stack, "certs", "rotate")
    assert code == 0 and instance in out and "coordinator" in out, out
