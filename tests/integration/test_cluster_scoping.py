"""Two clusters sharing one Temporal namespace list only their own workloads.

``get workloads``, ``describe node`` and ``node cordon``/``drain`` all start from the list
of a cluster's running workload workflows; listing every workload workflow in the
namespace showed another cluster's workloads and made those commands wait on workflows
this cluster's workers do not run.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from cloudless.client import CloudlessClient
from cloudless.testing.cluster import LocalCluster
from cloudless.testing.workloads import sleeper
from tests.conftest import unique

pytestmark = pytest.mark.temporal


@pytest.fixture
async def two_clusters(
    temporal_env: WorkflowEnvironment,
) -> AsyncIterator[tuple[LocalCluster, LocalCluster]]:
    """Two coordinators without agents (workloads stay Pending: still listed)."""
    with tempfile.TemporaryDirectory(prefix="cl-") as d:
        suffix = uuid.uuid4().hex[:5]
        clusters = [
            LocalCluster(temporal_env.client, Path(d) / side, cluster=f"{side}-{suffix}")
            for side in ("a", "b")
        ]
        for c in clusters:
            c.root.mkdir()
            await c.start()
        try:
            yield clusters[0], clusters[1]
        finally:
            for c in clusters:
                await c.close()


async def test_each_cluster_lists_only_its_own_workloads(
    two_clusters: tuple[LocalCluster, LocalCluster],
) -> None:
    a, b = (CloudlessClient(c.client, c.cluster) for c in two_clusters)
    mine, theirs = unique("mine"), unique("theirs")
    await a.apply(sleeper(mine, 1))
    await b.apply(sleeper(theirs, 1))
    assert [w.name for w in await a.list_workloads()] == [mine]
    assert [w.name for w in await b.list_workloads("default")] == [theirs]
    await a.delete("default", mine)
    await b.delete("default", theirs)
