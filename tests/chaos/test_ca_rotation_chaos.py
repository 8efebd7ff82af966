"""The cluster CA rotates five times in a row, once across a coordinator restart, while
the cluster works (issue #11, item 5): real Temporal, a real coordinator and agents over
mutual TLS, exec replicas.

Node certificates live 12 seconds and every overlap is 13, so each rotation takes the
nodes through two renewals. An operator reads the cluster every half second (except while
the coordinator is down on purpose): not one call fails. No node is ever Offline, none
enrolls again, and at the end every certificate in use is of the fifth new CA.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import cast

import pytest
from temporalio.testing import WorkflowEnvironment

from cloudless.client import CloudlessClient
from cloudless.pki import CertificateAuthority, verify_issued_by
from cloudless.testing.cluster import LocalCluster, exec_cluster
from cloudless.testing.workloads import sleeper
from cloudless.tls import TLSMaterial
from tests.conftest import unique
from workers.coordinator import Coordinator

pytestmark = pytest.mark.temporal

NODE_VALIDITY = timedelta(seconds=12)
OVERLAP = timedelta(seconds=13)
ROTATIONS = 5
RESTART_DURING = 2  # the third rotation: the coordinator restarts in its first overlap


@pytest.fixture
async def cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    async with exec_cluster(
        temporal_env.client, "cachaos", agents=2, node_cert_validity=NODE_VALIDITY
    ) as c:
        yield c


async def test_five_ca_rotations_one_across_a_restart(cluster: LocalCluster) -> None:
    client = CloudlessClient(cluster.client, cluster.cluster)
    name = unique("cachaos")
    applied = await client.apply(sleeper(name, 2), wait=True, timeout=60)
    assert applied.status is not None and applied.status.ready == 2
    enrolled = {
        n: (await client.describe_node(n)).status.record.enrolled_at  # type: ignore[union-attr]
        for n in cluster.agent_names
    }
    fingerprints = [CertificateAuthority.load(cluster.coordinator_dir).fingerprint]
    failures: list[str] = []
    states: set[str] = set()
    calls = 0
    paused = asyncio.Event()  # set: the coordinator is down on purpose
    stop = asyncio.Event()

    async def operate() -> None:
        nonlocal calls
        while not stop.is_set():
            if not paused.is_set():
                try:
                    workloads = await client.list_workloads()
                    assert any(w.name == name for w in workloads)
                    for node in cluster.agent_names:
                        status = (await client.describe_node(node)).status
                        if status is not None:
                            states.add(status.state.value)
                    calls += 1
                except Exception as err:  # every failure counts, whatever it is
                    if not paused.is_set():
                        failures.append(repr(err)[:300])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)

    operator = asyncio.create_task(operate())
    try:
        for i in range(ROTATIONS):
            await client.rotate_ca(OVERLAP)
            if i == RESTART_DURING:
                await asyncio.sleep(OVERLAP.total_seconds() / 2)  # into the first overlap
                paused.set()
                await cluster.stop_coordinator(cast(Coordinator, cluster.coordinator))
                await cluster.add_coordinator(
                    gateway_listen=cluster.gateway, agent_listen=cluster.agent_gateway
                )
                paused.clear()
            report = await asyncio.wait_for(client.ca_rotation(), timeout=120)
            assert report.phase == "Done", report
            fingerprints.append(CertificateAuthority.load(cluster.coordinator_dir).fingerprint)
    finally:
        stop.set()
        await operator

    assert len(set(fingerprints)) == ROTATIONS + 1, fingerprints
    assert not failures, failures
    assert calls >= 100, calls
    assert "Offline" not in states, states
    final = CertificateAuthority.load(cluster.coordinator_dir)
    for node in cluster.agent_names:
        status = (await client.describe_node(node)).status
        assert status is not None and status.record.enrolled_at == enrolled[node], node
        handle = cluster.agents[node]
        await asyncio.wait_for(
            handle.renewer.wait_renewals(handle.renewer.renewals + 1), timeout=30
        )
        material = TLSMaterial.load(handle.state_dir)
        verify_issued_by(material.cert_pem, final.cert_pem)
        assert material.ca_pem == final.cert_pem
    await client.delete("default", name)
