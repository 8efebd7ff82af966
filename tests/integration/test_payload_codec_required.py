"""The payload codec fails closed: a coordinator without transit refuses to start (and
writes nothing to Temporal), unless it is given the explicit, loudly logged opt-out.

Real processes: ``python -m workers.coordinator`` against the real Temporal dev server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from cloudless.cli.devstack import port_open, wait_until
from cloudless.codec import ENCODING, ENV_INSECURE_PLAINTEXT, META_ENCODING
from cloudless.contracts.ledger import workflow_id as cluster_workflow_id
from cloudless.errors import ConfigError
from cloudless.testing.cluster import free_port
from workers.coordinator import Coordinator

pytestmark = pytest.mark.temporal

REPO = Path(__file__).resolve().parents[2]


def coordinator_env(state: Path, env: WorkflowEnvironment, cluster: str) -> dict[str, str]:
    """The test's environment minus every way to find transit (and minus the opt-out)."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VAULT_ADDR", "VAULT_TOKEN", ENV_INSECURE_PLAINTEXT)
    }
    return {
        **base,
        "CLOUDLESS_TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "CLOUDLESS_CLUSTER": cluster,
        "CLOUDLESS_STATE_DIR": str(state),
        "CLOUDLESS_CODEC_LISTEN": "",
    }


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m workers.coordinator <args>`` in its own session, output in ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "workers.coordinator", *args],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


async def workflow_exists(env: WorkflowEnvironment, workflow_id: str) -> bool:
    try:
        await env.client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def test_coordinator_without_transit_refuses_to_start(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    cluster = f"fc-{uuid.uuid4().hex[:6]}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.coordinator",
        "--gateway-listen", f"127.0.0.1:{free_port()}",
        "--agent-listen", f"127.0.0.1:{free_port()}",
        cwd=REPO, env=coordinator_env(tmp_path, temporal_env, cluster),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, (out, err)
    message = err.decode()
    assert "cloudless-coordinator refuses to run without the payload codec" in message
    assert "VAULT_ADDR and VAULT_TOKEN" in message and "--insecure-plaintext-payloads" in message
    # It refused before touching anything: no PKI bootstrapped, no workflow started.
    assert not (tmp_path / "coordinator").exists()
    assert not await workflow_exists(temporal_env, cluster_workflow_id(cluster))


async def test_in_process_coordinator_refuses_without_a_codec(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    cluster = f"fc-{uuid.uuid4().hex[:6]}"
    coordinator = Coordinator(client=temporal_env.client, cluster=cluster, state_dir=tmp_path)
    with pytest.raises(ConfigError, match="the coordinator refuses to run without"):
        await coordinator.start()
    assert not (tmp_path / "coordinator").exists()
    assert not await workflow_exists(temporal_env, cluster_workflow_id(cluster))


async def test_coordinator_opt_out_runs_plaintext_and_says_so(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    cluster = f"fc-{uuid.uuid4().hex[:6]}"
    gateway = free_port()
    log = tmp_path / "coordinator.log"
    proc = spawn(
        ["--insecure-plaintext-payloads", "--gateway-listen", f"127.0.0.1:{gateway}",
         "--agent-listen", f"127.0.0.1:{free_port()}"],
        coordinator_env(tmp_path, temporal_env, cluster), log,
    )  # fmt: skip
    try:
        await asyncio.to_thread(
            wait_until, lambda: port_open(gateway), "the coordinator", 60, proc, log
        )
        assert "INSECURE_PLAINTEXT_PAYLOADS" in log.read_text()
        handle = temporal_env.client.get_workflow_handle(cluster_workflow_id(cluster))
        history = await handle.fetch_history()
        started = next(
            e
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
        )
        (payload,) = started.workflow_execution_started_event_attributes.input.payloads
        assert payload.metadata[META_ENCODING] != ENCODING  # plaintext, as asked
        assert cluster.encode() in payload.data
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
