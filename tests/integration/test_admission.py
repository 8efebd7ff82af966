"""What apply refuses, end to end on the dev cluster (issue #10, item 6): a manifest a
runtime cannot start is refused with a clear error and nothing is started."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.runtime.base import LABEL_MANAGED, LABEL_WORKLOAD
from cloudless.cli.main import app
from cloudless.client import CloudlessClient
from cloudless.errors import NotFoundError
from cloudless.testing.cluster import LocalCluster
from tests.conftest import unique

pytestmark = [pytest.mark.docker, pytest.mark.temporal]


def containers(docker_client: Any, workload: str) -> list[Any]:
    labels = [f"{LABEL_MANAGED}=true", f"{LABEL_WORKLOAD}={workload}"]
    return list(docker_client.containers.list(all=True, filters={"label": labels}))


@pytest.fixture
def client(dev_cluster: LocalCluster) -> CloudlessClient:
    return CloudlessClient(dev_cluster.client, dev_cluster.cluster)


async def cli_apply(cluster: LocalCluster, path: Path) -> Any:
    address = cluster.client.service_client.config.target_host
    args = ["--temporal-address", address, "--cluster", cluster.cluster]
    args += ["--state-dir", str(cluster.root), "apply", "-f", str(path), "--timeout", "60"]
    return await asyncio.to_thread(CliRunner().invoke, app, args)


async def assert_nothing_started(client: CloudlessClient, docker_client: Any, name: str) -> None:
    with pytest.raises(NotFoundError):
        await client.workload_status("default", name)
    assert containers(docker_client, name) == []


async def test_cloudlessctl_refuses_a_nul_in_command_and_starts_nothing(
    dev_cluster: LocalCluster, client: CloudlessClient, docker_client: Any, tmp_path: Path
) -> None:
    name = unique("nul")
    path = tmp_path / "nul.yaml"
    path.write_text(  # "\0" in a double-quoted YAML string is a NUL character
        "apiVersion: cloudless.dev/v1\nkind: Workload\n"
        f"metadata: {{name: {name}}}\n"
        'spec: {container: {image: cloudless/busybox:latest, command: ["sh\\0", "-c"]}}\n'
    )
    result = await cli_apply(dev_cluster, path)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == f"error: {path}: 1 problem in manifest", lines
    [problem] = lines[1:]  # one line for the one problem: where, what, how to fix
    assert problem.strip().startswith("spec.container.command[0]: ")
    assert "NUL character" in problem and "fix:" in problem
    await assert_nothing_started(client, docker_client, name)
