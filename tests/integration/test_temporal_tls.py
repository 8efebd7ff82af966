"""``cloudlessctl`` reaches Temporal over mutual TLS and with an API key, as configured by a
config file's context (``cloudless.clientconfig``).

The real Temporal dev server speaks plaintext, so each test puts a TLS-terminating
forwarder in front of it, here in the test: its certificate comes from a throwaway
``cloudless.pki`` CA and it requires a client certificate from that CA. The API key test
uses a gRPC server that records the request metadata and refuses every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import yaml
from temporalio.testing import WorkflowEnvironment

from cloudless.client import CloudlessClient
from cloudless.pki import CertificateAuthority, Identity, write_private_file, write_public_file
from cloudless.testing.cli import invoke_ctl
from cloudless.testing.cluster import LocalCluster
from cloudless.testing.workloads import sleeper
from tests.conftest import unique

pytestmark = pytest.mark.temporal

SERVER_NAME = "temporal-front"


@dataclass
class Pki:
    """A throwaway CA, a server certificate for :data:`SERVER_NAME`, a client certificate,
    and a second, unrelated CA (all as files)."""

    dir: Path
    ca: Path = field(init=False)
    other_ca: Path = field(init=False)
    server_cert: Path = field(init=False)
    server_key: Path = field(init=False)
    client_cert: Path = field(init=False)
    client_key: Path = field(init=False)

    def __post_init__(self) -> None:
        ca = CertificateAuthority.bootstrap(self.dir / "ca", "tlstest")
        other = CertificateAuthority.bootstrap(self.dir / "other", "tlstest")
        self.ca, self.other_ca = self.dir / "ca" / "ca.crt", self.dir / "other" / "ca.crt"
        assert ca.fingerprint != other.fingerprint
        key, cert = ca.issue(
            Identity("tlstest", "coordinator", "front"), dns_names=[SERVER_NAME], client=False
        )
        self.server_key, self.server_cert = self._write("server", key, cert)
        key, cert = ca.issue(Identity("tlstest", "admin", "ops"), server=False)
        self.client_key, self.client_cert = self._write("client", key, cert)

    def _write(self, name: str, key: bytes, cert: bytes) -> tuple[Path, Path]:
        write_private_file(self.dir / f"{name}.key", key)
        write_public_file(self.dir / f"{name}.crt", cert)
        return self.dir / f"{name}.key", self.dir / f"{name}.crt"

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        ctx.load_cert_chain(self.server_cert, self.server_key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.set_alpn_protocols(["h2"])
        return ctx


@pytest.fixture
def pki() -> Iterator[Pki]:
    with tempfile.TemporaryDirectory(prefix="cl-tls-") as d:
        yield Pki(Path(d))


class TLSForwarder:
    """Terminates mutual TLS on a free loopback port and pipes each connection to
    ``upstream`` in plaintext; counts the connections whose client certificate it verified."""

    def __init__(self, upstream: str, context: ssl.SSLContext) -> None:
        self.host, port = upstream.rsplit(":", 1)
        self.port = int(port)
        self.context = context
        self.verified = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> TLSForwarder:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, ssl=self.context, ssl_handshake_timeout=10
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()  # ends both pipes of its connection
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            if writer.get_extra_info("peercert"):
                self.verified += 1
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
            self._writers.add(up_writer)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
                self._writers.discard(up_writer)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass  # the other side went away: the connection is over
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()


@pytest.fixture
async def cluster(temporal_env: WorkflowEnvironment) -> AsyncIterator[LocalCluster]:
    """A coordinator without agents: an applied workload stays Pending, and is listed."""
    with tempfile.TemporaryDirectory(prefix="cl-") as d:
        c = LocalCluster(temporal_env.client, Path(d), cluster=unique("tls"))
        await c.start()
        try:
            yield c
        finally:
            await c.close()


def write_config(path: Path, contexts: dict[str, Any], current: str) -> Path:
    path.write_text(yaml.safe_dump({"current-context": current, "contexts": contexts}))
    return path


def context(cluster: LocalCluster, address: str, tls: dict[str, str] | None) -> dict[str, Any]:
    temporal: dict[str, Any] = {"address": address, "namespace": "default"}
    if tls is not None:
        temporal["tls"] = tls
    return {"cluster": cluster.cluster, "state-dir": str(cluster.root), "temporal": temporal}


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No config file or CLOUDLESS_* setting from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("CLOUDLESS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))


async def test_get_workloads_over_mutual_tls_and_clear_failures_without_it(
    cluster: LocalCluster, pki: Pki, isolated: None
) -> None:
    name = unique("tls")
    await CloudlessClient(cluster.client, cluster.cluster).apply(sleeper(name, 1))
    upstream = cluster.client.service_client.config.target_host
    async with TLSForwarder(upstream, pki.server_context()) as front:
        full = {
            "ca": str(pki.ca),
            "cert": str(pki.client_cert),
            "key": str(pki.client_key),
            "server-name": SERVER_NAME,
        }
        config = write_config(
            pki.dir / "config.yaml",
            {
                "mtls": context(cluster, front.address, full),
                "no-client-cert": context(
                    cluster, front.address, {"ca": str(pki.ca), "server-name": SERVER_NAME}
                ),
                "wrong-ca": context(cluster, front.address, {**full, "ca": str(pki.other_ca)}),
                "plaintext": context(cluster, front.address, None),
            },
            current="mtls",
        )

        async def ctl(*args: str) -> Any:
            return await asyncio.to_thread(invoke_ctl, ["--config", str(config), *args])

        ok = await ctl("get", "workloads", "-o", "json")
        assert ok.exit_code == 0, ok.output
        assert [w["name"] for w in json.loads(ok.output)] == [name]
        assert front.verified >= 1  # the client certificate was checked by the front

        before = front.verified
        for ctx, expected in (
            ("no-client-cert", "does it require a client certificate"),
            ("wrong-ca", f"over TLS (CA {pki.other_ca}, client certificate "),
            ("wrong-ca", "Temporal's certificate was not accepted: check the CA"),
            ("plaintext", "over plaintext: the server dropped a plaintext connection"),
        ):
            failed = await ctl("--context", ctx, "get", "workloads")
            assert failed.exit_code == 1, (ctx, failed.output)
            lines = failed.output.strip().splitlines()
            assert len(lines) == 1, (ctx, failed.output)
            assert lines[0].startswith(f"error: cannot reach Temporal at {front.address}"), (
                ctx,
                lines[0],
            )
            assert expected in lines[0], (ctx, lines[0])
            assert name not in failed.output
        assert front.verified == before  # none of them got a verified connection

        # The same over flags instead of the file (flag > context: the plaintext
        # context's address with the flags' TLS material).
        flagged = await ctl(
            "--context", "plaintext",
            "--temporal-tls-ca", str(pki.ca),
            "--temporal-tls-cert", str(pki.client_cert),
            "--temporal-tls-key", str(pki.client_key),
            "--temporal-tls-server-name", SERVER_NAME,
            "get", "workloads", "-o", "json",
        )  # fmt: skip
        assert flagged.exit_code == 0, flagged.output
        assert [w["name"] for w in json.loads(flagged.output)] == [name]
    await CloudlessClient(cluster.client, cluster.cluster).delete("default", name)


if TYPE_CHECKING:  # generic only in the type stubs
    _Handler = grpc.GenericRpcHandler[bytes, bytes]
else:
    _Handler = grpc.GenericRpcHandler


class RecordingServer(_Handler):
    """A gRPC server over TLS that records every call's metadata and refuses the call."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.metadata: list[dict[str, str]] = []
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((self,))
        self.port = 0

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes]:
        recorded = dict(details.invocation_metadata)
        self.metadata.append({k: str(v) for k, v in recorded.items()})

        async def refuse(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "recorded, refused")

        return grpc.unary_unary_rpc_method_handler(refuse)

    async def __aenter__(self) -> RecordingServer:
        credentials = grpc.ssl_server_credentials(
            [(self.pki.server_key.read_bytes(), self.pki.server_cert.read_bytes())]
        )
        self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(grace=None)


async def test_the_api_key_is_sent_as_a_bearer_token_and_shown_nowhere(
    pki: Pki, isolated: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api_key = "tcld-" + unique("k3y")
    key_file = tmp_path / "api.key"
    write_private_file(key_file, api_key.encode() + b"\n")
    async with RecordingServer(pki) as server:
        address = f"127.0.0.1:{server.port}"
        config = write_config(
            tmp_path / "config.yaml",
            {
                "cloud": {
                    "cluster": "cloud",
                    "state-dir": str(tmp_path / "state"),
                    "temporal": {
                        "address": address,
                        "namespace": "ns.acct",
                        "tls": {"ca": str(pki.ca), "server-name": SERVER_NAME},
                        "api-key-file": str(key_file),
                    },
                }
            },
            current="cloud",
        )
        args = ["--config", str(config), "--insecure-plaintext-payloads"]
        failed = await asyncio.to_thread(invoke_ctl, [*args, "get", "nodes"])
        view = await asyncio.to_thread(invoke_ctl, [*args, "config", "view"])
    assert failed.exit_code == 1 and "recorded, refused" in failed.output, failed.output
    assert server.metadata, "the client never reached the server"
    assert all(m.get("authorization") == f"Bearer {api_key}" for m in server.metadata)
    assert view.exit_code == 0 and "<redacted>" not in view.output  # a file, not the key
    assert str(key_file) in view.output
    for text in (failed.output, view.output, caplog.text):
        assert api_key not in text
