"""No plaintext in Temporal: a workflow and an activity run through the transit codec
against the real dev server, and a client *without* the codec reads the raw history
(SDK and ``temporal`` CLI) and finds no trace of the values, while the codec-enabled
client, and the CLI through the coordinator's codec endpoint, read them back."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from google.protobuf import json_format
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from cloudless.codec import (
    ENCODING,
    META_ENCODING,
    TransitDataKeySource,
    TransitPayloadCodec,
    data_converter,
)
from cloudless.testing.cluster import temporal_binary
from cloudless.testing.transit import transit_server
from cloudless.transit.client import transit_client
from transit.server import TransitServer
from workers.codec_server import CodecServer
from workers.codec_server import load_or_create_token as codec_token

pytestmark = pytest.mark.temporal


@dataclass
class ProbeInput:
    marker: str


@activity.defn
async def echo_marker(marker: str) -> str:
    """Fails its first attempt with the marker in the message: failures must not leak."""
    if activity.info().attempt == 1:
        raise ApplicationError(f"first attempt refused {marker}")
    return f"echo {marker}"


@workflow.defn
class CodecProbeWorkflow:
    @workflow.run
    async def run(self, probe: ProbeInput) -> dict[str, str]:
        echoed = await workflow.execute_activity(
            echo_marker,
            probe.marker,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100)),
        )
        return {"echoed": echoed, "marker": probe.marker}


@pytest.fixture(scope="module")
def transit() -> Iterator[TransitServer]:
    with transit_server() as server:
        yield server


def new_codec(server: TransitServer) -> TransitPayloadCodec:
    return TransitPayloadCodec(TransitDataKeySource(transit_client(server.url, server.token)))


@pytest.fixture(scope="module")
async def codec_client(temporal_env: WorkflowEnvironment, transit: TransitServer) -> Client:
    options = temporal_env.client.config()
    options["data_converter"] = data_converter(new_codec(transit))
    return Client(**options)


@pytest.fixture(scope="module")
async def codec_endpoint(
    transit: TransitServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[str, str]]:
    """The coordinator's endpoint with a codec of its own, so decoding goes via transit."""
    token = codec_token(tmp_path_factory.mktemp("codec"))
    server = await CodecServer(new_codec(transit), token, listen="127.0.0.1:0").start()
    yield server.url, token
    await server.stop()


@pytest.fixture(scope="module")
async def finished(codec_client: Client) -> AsyncIterator[tuple[str, str, Any]]:
    """Run the probe once; yields (workflow id, marker, result)."""
    marker = f"plaintext-marker-{uuid.uuid4().hex}"
    queue = f"codec-{uuid.uuid4().hex[:8]}"
    async with Worker(
        codec_client,
        task_queue=queue,
        workflows=[CodecProbeWorkflow],
        activities=[echo_marker],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        handle = await codec_client.start_workflow(
            CodecProbeWorkflow.run,
            ProbeInput(marker=marker),
            id=f"codec-probe-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
            memo={"note": marker},
            static_summary=f"probe {marker}",
        )
        result = await handle.result()
    yield handle.id, marker, result


async def test_codec_client_reads_values_back(finished: tuple[str, str, Any]) -> None:
    _, marker, result = finished
    assert result == {"echoed": f"echo {marker}", "marker": marker}


async def test_raw_history_holds_no_plaintext(
    temporal_env: WorkflowEnvironment, finished: tuple[str, str, Any]
) -> None:
    workflow_id, marker, _ = finished
    plain = temporal_env.client  # pydantic converter, no codec: sees what Temporal stores
    history = await plain.get_workflow_handle(workflow_id).fetch_history()
    raw = b"".join(event.SerializeToString() for event in history.events)
    assert marker.encode() not in raw
    payloads = list(_payloads(history.events))
    assert payloads, "the history should carry payloads"
    assert all(p.metadata[META_ENCODING] == ENCODING for p in payloads)
    # The failed first attempt is in the history too (as the activity's last failure).
    assert any(
        e.activity_task_started_event_attributes.HasField("last_failure") for e in history.events
    )
    with pytest.raises(Exception, match="binary/encrypted"):
        await plain.get_workflow_handle(workflow_id).result()


async def test_temporal_cli_shows_no_plaintext(
    temporal_env: WorkflowEnvironment, finished: tuple[str, str, Any]
) -> None:
    workflow_id, marker, _ = finished
    shown = await _temporal_cli(temporal_env, "workflow", "show", "-w", workflow_id, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert marker not in shown.stdout
    # Payload bytes are base64 in the JSON: look inside them too.
    datas = list(_json_payload_data(json.loads(shown.stdout)))
    assert datas and all(encoding == ENCODING for encoding, _ in datas)
    assert not any(marker.encode() in data for _, data in datas)
    described = await _temporal_cli(
        temporal_env, "workflow", "describe", "-w", workflow_id, "-o", "json"
    )
    assert described.returncode == 0, described.stderr
    assert marker not in described.stdout  # memo and summary are encrypted too


async def test_cli_decodes_through_the_codec_endpoint(
    temporal_env: WorkflowEnvironment,
    finished: tuple[str, str, Any],
    codec_endpoint: tuple[str, str],
) -> None:
    workflow_id, marker, _ = finished
    url, token = codec_endpoint
    args = ("workflow", "show", "-w", workflow_id, "-o", "json", "--codec-endpoint", url)
    shown = await _temporal_cli(temporal_env, *args, "--codec-auth", f"Bearer {token}")
    assert shown.returncode == 0, shown.stderr
    datas = list(_json_payload_data(json.loads(shown.stdout)))
    assert datas and not any(ENCODING in m for m, _ in datas)  # all decoded
    assert any(marker.encode() in d for _, d in datas)


async def test_endpoint_decodes_a_history_payload_for_a_logged_in_browser(
    temporal_env: WorkflowEnvironment,
    finished: tuple[str, str, Any],
    codec_endpoint: tuple[str, str],
) -> None:
    workflow_id, marker, _ = finished
    url, token = codec_endpoint
    history = await temporal_env.client.get_workflow_handle(workflow_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    body = json.dumps(
        {"payloads": [json_format.MessageToDict(p) for p in started.input.payloads]}
    ).encode()
    login = await asyncio.to_thread(_http, url, "GET", f"/login?token={token}")
    assert login[0] == 200
    cookie = login[1]["Set-Cookie"].split(";")[0]
    status, _, answer = await asyncio.to_thread(
        _http,
        url,
        "POST",
        "/decode",
        body,
        {
            "Content-Type": "application/json",
            "Cookie": cookie,
            "Origin": "http://127.0.0.1:8233",
            "X-Namespace": "default",
        },
    )
    assert status == 200, answer
    (decoded,) = json.loads(answer)["payloads"]
    payload = json_format.ParseDict(decoded, Payload())
    assert json.loads(payload.data) == {"marker": marker}


def _json_payload_data(node: Any) -> Iterator[tuple[bytes, bytes]]:
    """(encoding, data) of every payload in the CLI's JSON (proto JSON: base64 bytes)."""
    if isinstance(node, dict):
        metadata = node.get("metadata")
        if isinstance(metadata, dict) and "encoding" in metadata:
            encoding = base64.b64decode(metadata["encoding"])
            yield encoding, base64.b64decode(node.get("data", ""))
        for value in node.values():
            yield from _json_payload_data(value)
    elif isinstance(node, list):
        for value in node:
            yield from _json_payload_data(value)


def _payloads(events: Any) -> Iterator[Payload]:
    """Every Payload message anywhere in the events (a walk over the proto fields)."""
    for event in events:
        yield from _walk(event)


def _walk(message: Any) -> Iterator[Payload]:
    if isinstance(message, Payload):
        yield message
        return
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = list(value.values())
        elif field.is_repeated:
            items = list(value)
        else:
            items = [value]
        for item in items:
            if hasattr(item, "ListFields"):
                yield from _walk(item)


async def _temporal_cli(env: WorkflowEnvironment, *args: str) -> subprocess.CompletedProcess[str]:
    address = env.client.service_client.config.target_host
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    return await asyncio.to_thread(
        subprocess.run,
        [temporal_binary(), *args, "--address", address],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean,
    )


def _http(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, str]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read().decode()
    finally:
        conn.close()
