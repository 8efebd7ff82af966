"""Revoked certificates (:mod:`cloudless.revocation`): the list a coordinator keeps of
removed nodes' certificates, and SecretsService refusing them (audited)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from cloudless import revocation
from cloudless.api import gateway_pb2
from cloudless.model import RevokedCertificate
from cloudless.pki import CertificateAuthority, Identity, cert_serial
from cloudless.revocation import SERIAL_CACHE_SIZE, RevocationList
from workers.gateway import GatewayServicer
from workers.secrets.refusals import Refusals

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def issue(tmp_path: Path, *names: str) -> list[bytes]:
    ca = CertificateAuthority.bootstrap(tmp_path, "dev")
    return [ca.issue(Identity(cluster="dev", role="node", name=n))[1] for n in names]


def revoked(cert: bytes, node_id: str) -> RevokedCertificate:
    return RevokedCertificate(
        serial=cert_serial(cert),
        node_id=node_id,
        not_after=NOW + timedelta(days=30),
        revoked_at=NOW,
    )


async def test_the_list_refuses_what_the_ledger_and_this_process_revoked(tmp_path: Path) -> None:
    gone, local, kept = issue(tmp_path, "gone", "local", "kept")
    ledger: list[RevokedCertificate] = [revoked(gone, "gone")]

    async def fetch() -> list[RevokedCertificate]:
        return list(ledger)

    rl = RevocationList(fetch)
    assert rl.revoked(gone) is None  # nothing loaded yet
    await rl.refresh()
    assert rl.revoked(gone) == "gone" and rl.revoked(kept) is None
    # Removed through this process: refused at once, and kept until the ledger lists it.
    rl.add(cert_serial(local), "local")
    assert rl.revoked(local) == "local"
    await rl.refresh()
    assert rl.revoked(local) == "local"
    ledger.append(revoked(local, "local"))
    await rl.refresh()
    ledger.clear()  # expired: the ledger dropped them
    await rl.refresh()
    assert rl.revoked(local) is None and rl.revoked(gone) is None
    assert rl.revoked(b"not a certificate") is None


async def test_a_failed_refresh_keeps_the_last_list(tmp_path: Path) -> None:
    (gone,) = issue(tmp_path, "gone")
    failed, calls = asyncio.Event(), 0

    async def fetch() -> list[RevokedCertificate]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return [revoked(gone, "gone")]
        failed.set()
        raise RuntimeError("ledger busy")

    rl = RevocationList(fetch, interval=0.01)
    await rl.start()
    try:
        await asyncio.wait_for(failed.wait(), timeout=5)
        assert rl.revoked(gone) == "gone"
    finally:
        await rl.stop()


class Aborted(Exception):
    pass


class Context:
    """A gRPC servicer context: the peer's certificate, and an abort that raises."""

    def __init__(self, cert: bytes) -> None:
        self._auth = {"x509_pem_cert": [cert]}
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def auth_context(self) -> dict[str, Any]:
        return self._auth

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)


class Audit:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str, str, dict[str, object]]] = []

    async def commit(self, operation: str, outcome: str, actor: str, **fields: object) -> None:
        self.entries.append((operation, outcome, actor, fields))


async def test_secrets_service_refuses_a_revoked_node_certificate(tmp_path: Path) -> None:
    gone, kept = issue(tmp_path, "gone", "kept")

    async def fetch() -> list[RevokedCertificate]:
        return [revoked(gone, "gone")]

    rl = RevocationList(fetch)
    await rl.refresh()
    audit = Audit()
    refusals = Refusals("dev", audit, rl)  # type: ignore[arg-type]
    assert (await refusals.caller(Context(kept), "GET")).name == "kept"  # type: ignore[arg-type]
    ctx = Context(gone)
    with pytest.raises(Aborted, match="revoked when the node was removed"):
        await refusals.caller(ctx, "GET", namespace="ns", name="s")  # type: ignore[arg-type]
    assert ctx.aborted is not None and ctx.aborted[0] == grpc.StatusCode.UNAUTHENTICATED
    assert audit.entries[-1][:3] == ("GET", "DENIED", "cloudless://dev/node/gone")


class Liveness:
    """The liveness monitor as the gateway's Heartbeat uses it: records the beats."""

    interval = 1.0

    def __init__(self) -> None:
        self.beats = 0
        self.open = 0

    def connected(self, node_id: str, epoch: int, moved: bool) -> int:
        self.open += 1
        return 1

    def beat(self, node_id: str, beat: object) -> None:
        self.beats += 1

    def disconnected(self, node_id: str, token: int) -> None:
        self.open -= 1


async def test_an_open_heartbeat_stream_parses_its_certificate_once_and_is_cut_when_revoked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With more nodes than the serial cache holds (5,000 at 1 Hz against 4,096 entries),
    every beat used to evict another stream's serial and parse its own certificate again:
    ~12 µs a beat, +16 % coordinator CPU. The stream's serial is taken once when it opens;
    each beat still looks it up in the current list, so a revocation cuts the open stream
    at its next beat after the refresh, as before."""
    mine, gone = issue(tmp_path, "mine", "gone")
    ledger = [revoked(gone, "gone")]  # something is revoked: the check is on the path

    async def fetch() -> list[RevokedCertificate]:
        return list(ledger)

    rl = RevocationList(fetch)
    await rl.refresh()
    parsed: list[bytes] = []

    def counting(pem: bytes) -> str:
        parsed.append(pem)
        return cert_serial(pem)

    monkeypatch.setattr(revocation, "cert_serial", counting)
    liveness = Liveness()
    gateway = GatewayServicer(
        None,  # type: ignore[arg-type]  # heartbeats never reach Temporal
        "dev",
        verifier=None,  # type: ignore[arg-type]
        liveness=liveness,  # type: ignore[arg-type]
        revocations=rl,
    )
    fleet = [f"another node's certificate {i}".encode() for i in range(SERIAL_CACHE_SIZE)]

    async def beats() -> AsyncIterator[gateway_pb2.HeartbeatRequest]:
        for seq in range(1, 4):
            yield gateway_pb2.HeartbeatRequest(seq=seq)
            for pem in fleet:  # the rest of the fleet's beats, between two of this node's
                rl.revoked(pem)
        ledger.append(revoked(mine, "mine"))  # removed while its stream is open
        await rl.refresh()
        yield gateway_pb2.HeartbeatRequest(seq=4)
        raise AssertionError("the stream was not cut at the beat after the revocation")

    ctx = Context(mine)
    with pytest.raises(Aborted, match="certificate of node 'mine' was revoked"):
        async for _ in gateway.Heartbeat(beats(), ctx):  # type: ignore[arg-type]
            pass
    assert ctx.aborted is not None and ctx.aborted[0] == grpc.StatusCode.PERMISSION_DENIED
    assert liveness.beats == 3 and liveness.open == 0
    assert parsed.count(mine) == 1, f"parsed {parsed.count(mine)} times for one stream"
