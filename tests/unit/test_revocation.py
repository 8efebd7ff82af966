"""Revoked certificates (:mod:`cloudless.revocation`): the list a coordinator keeps of
removed nodes' certificates, and SecretsService refusing them (audited)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from cloudless.model import RevokedCertificate
from cloudless.pki import CertificateAuthority, Identity, cert_serial
from cloudless.revocation import RevocationList
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
