"""Shared fixtures: the real Temporal dev server, the real Docker engine, a local cluster.

Under ``CI=true`` a missing Docker engine or Temporal binary fails the run instead of
skipping, and any skipped test marked ``docker`` or ``temporal`` turns the run red.
"""

from __future__ import annotations

# isort: split
import workers  # noqa: F401  (its __init__ applies cloudless.grpc_tuning before grpc loads)

# isort: split
import contextlib
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import structlog
from temporalio.testing import WorkflowEnvironment

from agent.runtime.base import LABEL_NODE
from cloudless.images import BUSYBOX_TAG, build_busybox_image
from cloudless.testing.cluster import LocalCluster, start_temporal, temporal_binary

IN_CI = os.environ.get("CI") == "true"
_required_skips: list[str] = []

# In-process servers log each request at debug level (the in-thread transit behind every
# LocalCluster's payload codec); on stdout those lines would interleave with the output of
# CLI commands that tests invoke in-process and parse. Info and above still print.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI: a skipped integration test proves nothing."""
    if IN_CI:
        pytest.fail(f"required component unavailable under CI=true: {reason}")
    pytest.skip(reason)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and any(m in report.keywords for m in ("docker", "temporal")):
        _required_skips.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and _required_skips:
        print(f"\nCI=true: {len(_required_skips)} docker/temporal test(s) were skipped:")
        for nodeid in _required_skips:
            print(f"  {nodeid}")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    try:
        client = docker.from_env(version="auto")
        client.ping()
    except Exception as error:
        unavailable(f"no reachable Docker engine: {error}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client: Any) -> str:
    build_busybox_image(docker_client)
    return BUSYBOX_TAG


@pytest.fixture(scope="session")
def temporal_binary_path() -> str:
    """The Temporal CLI that tests and benchmark scripts start the dev server with."""
    try:
        return str(temporal_binary())
    except RuntimeError as err:
        unavailable(str(err))
        raise


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    try:
        temporal_binary()
    except RuntimeError as err:
        unavailable(str(err))
    env = await start_temporal()
    yield env
    await env.shutdown()


@pytest.fixture
def tmp_root() -> Iterator[Path]:
    # Short paths: unix socket limits and readable logs.
    with tempfile.TemporaryDirectory(prefix="cl-") as d:
        yield Path(d)


@contextlib.contextmanager
def removing_containers(client: Any, node_ids: list[str]) -> Iterator[None]:
    try:
        yield
    finally:
        for node_id in node_ids:
            for c in client.containers.list(
                all=True, filters={"label": f"{LABEL_NODE}={node_id}"}, ignore_removed=True
            ):
                with contextlib.suppress(docker.errors.NotFound):
                    c.remove(force=True)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
async def dev_cluster(
    temporal_env: WorkflowEnvironment, docker_client: Any, busybox_image: str
) -> AsyncIterator[LocalCluster]:
    """The product docs' dev cluster: zone-a 2 CPU/2 GiB, zone-b 4/4 GiB, edge 1/1 GiB."""
    suffix = uuid.uuid4().hex[:6]
    names = [f"zone-a-{suffix}", f"zone-b-{suffix}", f"edge-{suffix}"]
    with tempfile.TemporaryDirectory(prefix="cl-") as d, removing_containers(docker_client, names):
        cluster = LocalCluster(temporal_env.client, Path(d), cluster=f"c-{suffix}")
        await cluster.start()
        try:
            await cluster.add_agent(
                names[0], zone="zone-a", cpu="2", memory="2Gi", labels={"tier": "standard"}
            )
            await cluster.add_agent(
                names[1], zone="zone-b", cpu="4", memory="4Gi", labels={"tier": "standard"}
            )
            await cluster.add_agent(
                names[2], zone="edge", cpu="1", memory="1Gi", labels={"tier": "edge"}
            )
            yield cluster
        finally:
            await cluster.close()
            await cluster.stop_exec_replicas()  # exec replicas outlive their agents
