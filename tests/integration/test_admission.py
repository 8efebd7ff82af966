"""What apply refuses, end to end on the dev cluster (issue #10, items 1, 6 and 8): a
manifest a runtime cannot start, or one asking for a setting no runtime enforces, is refused
with a clear error and nothing is started, whether it comes through ``cloudlessctl``, the
client library, or a client that skips their checks; ``workingDir`` reaches the container."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowUpdateFailedError

from agent.runtime.base import LABEL_MANAGED, LABEL_WORKLOAD
from cloudless.client import CloudlessClient
from cloudless.errors import NotFoundError
from cloudless.model import ApplyInput, WorkloadPhase
from cloudless.spec import ManifestError, Workload, parse_workload
from cloudless.testing.cli import ctl
from cloudless.testing.cluster import LocalCluster
from tests.conftest import unique

pytestmark = [pytest.mark.docker, pytest.mark.temporal]


def manifest(name: str, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "cloudless.dev/v1",
        "kind": "Workload",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "container": {
                "image": "cloudless/busybox:latest",
                "command": ["sh", "-c"],
                "args": ["exec httpd -f -p 8080"],
                **container,
            },
            "resources": {"cpu": "100m", "memory": "16Mi"},
        },
    }


def containers(docker_client: Any, workload: str) -> list[Any]:
    labels = [f"{LABEL_MANAGED}=true", f"{LABEL_WORKLOAD}={workload}"]
    return list(docker_client.containers.list(all=True, filters={"label": labels}))


@pytest.fixture
def client(dev_cluster: LocalCluster) -> CloudlessClient:
    return CloudlessClient(dev_cluster.client, dev_cluster.cluster)


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
    result = await ctl(dev_cluster, "apply", "-f", str(path), "--timeout", "60")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == f"error: {path}: 1 problem in manifest", lines
    [problem] = lines[1:]  # one line for the one problem: where, what, how to fix
    assert problem.strip().startswith("spec.container.command[0]: ")
    assert "NUL character" in problem and "fix:" in problem
    await assert_nothing_started(client, docker_client, name)


async def test_unenforced_security_settings_are_refused_naming_each(
    dev_cluster: LocalCluster, client: CloudlessClient, docker_client: Any, tmp_path: Path
) -> None:
    """Both documents are refused, and neither is applied (all or nothing)."""
    plain, confined = unique("plain"), unique("confined")
    path = tmp_path / "two.yaml"
    path.write_text(
        "apiVersion: cloudless.dev/v1\nkind: Workload\n"
        f"metadata: {{name: {plain}}}\n"
        "spec: {container: {image: cloudless/busybox:latest}}\n"
        "---\n"
        "apiVersion: cloudless.dev/v1\nkind: Workload\n"
        f"metadata: {{name: {confined}}}\n"
        "spec:\n"
        "  container: {image: cloudless/busybox:latest}\n"
        "  security_context:\n"
        "    read_only_root_filesystem: true\n"
        "    capabilities_drop: [ALL]\n"
        "    runtime_class_name: gvisor\n"
    )
    result = await ctl(dev_cluster, "apply", "-f", str(path), "--timeout", "60")
    assert result.exit_code == 1, result.output
    out = result.output
    assert "3 problems in manifest" in out
    for setting in ("read_only_root_filesystem", "capabilities_drop", "runtime_class_name"):
        assert f"spec.security_context.{setting} (document 2): {setting} is set to" in out
    assert out.count("the docker runtime does not enforce it yet") == 3
    await assert_nothing_started(client, docker_client, plain)
    await assert_nothing_started(client, docker_client, confined)

    # The client library refuses the same, before anything is sent.
    data = manifest(confined)
    data["spec"]["security_context"] = {"privileged": True}
    with pytest.raises(ManifestError, match="privileged is set to true"):
        await client.apply(parse_workload(data))
    await assert_nothing_started(client, docker_client, confined)


async def test_a_client_that_skips_the_checks_is_refused_by_the_workflow(
    dev_cluster: LocalCluster, client: CloudlessClient, docker_client: Any
) -> None:
    """The workflow trusts no client: its apply validator refuses, and the run that
    update-with-start began anyway ends at once, having started nothing. (The client skips
    the payload guard too: every Cloudless client would refuse the second one, 1 MiB
    encoded, before sending.)"""
    options = client.temporal.config()
    options["interceptors"] = []
    skipping = CloudlessClient(Client(**options), client.cluster)
    for name, data in (
        (unique("skip-sec"), {"security_context": {"host_network": True}}),
        (unique("skip-size"), {"container": {"image": "busybox", "args": ["\x01" * 60_000] * 3}}),
    ):
        spec = {**manifest(name)["spec"], **data}
        workload = Workload.model_validate({**manifest(name), "spec": spec})
        handle = skipping.workload("default", name)
        with pytest.raises(WorkflowUpdateFailedError) as caught:
            await handle.apply(ApplyInput(manifest=workload), cluster=dev_cluster.cluster)
        cause = str(caught.value.cause)
        assert "host_network is set to true" in cause or "256 KiB" in cause, cause
        try:
            async with asyncio.timeout(60):  # a run that reconciles would never end
                status = await handle.handle.result()
        except WorkflowFailureError as err:
            raise AssertionError(f"the refused run failed instead of ending: {err}") from err
        assert status.replicas == []
        assert containers(docker_client, name) == []


async def test_working_dir_reaches_the_container(
    client: CloudlessClient, docker_client: Any
) -> None:
    name = unique("wd")
    workload = parse_workload(
        manifest(name, workingDir="/srv/www", args=["pwd > cwd.txt; exec httpd -f -p 8080"])
    )
    outcome = await client.apply(workload, wait=True, timeout=90)
    assert outcome.status is not None and outcome.status.phase == WorkloadPhase.AVAILABLE
    try:
        [container] = containers(docker_client, name)
        assert container.attrs["Config"]["WorkingDir"] == "/srv/www"
        code, output = container.exec_run(["cat", "/srv/www/cwd.txt"])
        assert (code, output.decode().strip()) == (0, "/srv/www")
    finally:
        await client.delete("default", name)
