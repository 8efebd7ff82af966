"""Pure pieces of the secrets path: envelope encryption, access tokens, the audit log."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from pathlib import Path

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudless.errors import SecretError
from cloudless.secrets.access import MAX_TTL, AccessTokens, load_or_create_key
from cloudless.secrets.audit import AuditEntry, AuditLog, AuditQuery, query_problem
from cloudless.secrets.envelope import associated_data, open_sealed, seal

KEY = os.urandom(32)

data_maps = st.dictionaries(
    st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True), st.binary(max_size=200), max_size=8
)


@given(data=data_maps, version=st.integers(min_value=1, max_value=10**6))
def test_envelope_round_trip(data: dict[str, bytes], version: int) -> None:
    blob = seal(KEY, data, namespace="prod", name="db", version=version)
    assert open_sealed(KEY, blob, namespace="prod", name="db", version=version) == data


def test_ciphertext_is_bound_to_name_and_version() -> None:
    blob = seal(KEY, {"K": b"v"}, namespace="prod", name="db", version=2)
    for ns, name, version in (("dev", "db", 2), ("prod", "db2", 2), ("prod", "db", 1)):
        with pytest.raises(SecretError, match="failed authentication"):
            open_sealed(KEY, blob, namespace=ns, name=name, version=version)
    with pytest.raises(SecretError, match="failed authentication"):
        open_sealed(os.urandom(32), blob, namespace="prod", name="db", version=2)


def test_tampered_or_truncated_ciphertext_is_refused() -> None:
    blob = seal(KEY, {"K": b"value"}, namespace="p", name="n", version=1)
    raw = bytearray(base64.b64decode(blob))
    raw[-1] ^= 1
    tampered = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(SecretError, match="failed authentication"):
        open_sealed(KEY, tampered, namespace="p", name="n", version=1)
    with pytest.raises(SecretError, match="truncated"):
        open_sealed(KEY, "AAAA", namespace="p", name="n", version=1)
    with pytest.raises(SecretError, match="not base64"):
        open_sealed(KEY, "!!", namespace="p", name="n", version=1)


def test_associated_data_separates_fields() -> None:
    # "a" + "b/c" must not collide with "a/b" + "c".
    assert associated_data("a", "b.c", 1) != associated_data("a.b", "c", 1)


# ---------------------------------------------------------------- access tokens


def test_token_round_trip_and_claims() -> None:
    tokens = AccessTokens(KEY, "dev")
    token, claims = tokens.mint(
        namespace="prod",
        name="db",
        audience="backend",
        subject="cloudless://dev/node/n1",
        ttl=600,
        max_uses=3,
    )
    got = tokens.verify(token)
    assert got == claims
    assert got.scope == "prod/db" and got.max_uses == 3
    assert got.expires_at - got.issued_at == 600


def test_token_defaults_and_limits() -> None:
    tokens = AccessTokens(KEY, "dev")
    _, claims = tokens.mint(namespace="p", name="n", audience="a")
    assert claims.expires_at - claims.issued_at == 3600 and claims.max_uses == 0
    with pytest.raises(SecretError, match="between 1s and 24h"):
        tokens.mint(namespace="p", name="n", audience="a", ttl=MAX_TTL + 1)
    with pytest.raises(SecretError, match="audience"):
        tokens.mint(namespace="p", name="n", audience="*")
    with pytest.raises(SecretError, match="max_uses"):
        tokens.mint(namespace="p", name="n", audience="a", max_uses=-1)


def test_expired_forged_foreign_and_alg_none_tokens_are_refused() -> None:
    tokens = AccessTokens(KEY, "dev")
    old, _ = tokens.mint(namespace="p", name="n", audience="a", ttl=60, now=time.time() - 120)
    with pytest.raises(SecretError, match="expired") as err:
        tokens.verify(old)
    assert err.value.code == "UNAUTHENTICATED"
    forged, _ = AccessTokens(os.urandom(32), "dev").mint(namespace="p", name="n", audience="a")
    with pytest.raises(SecretError, match="invalid access token"):
        tokens.verify(forged)
    foreign, _ = AccessTokens(KEY, "other").mint(namespace="p", name="n", audience="a")
    with pytest.raises(SecretError, match="not issued by cluster dev"):
        tokens.verify(foreign)
    unsigned = jwt.encode(
        {"iss": "dev", "aud": "a", "scope": "p/n", "jti": "x", "iat": 1, "exp": 2**40},
        key="",
        algorithm="none",
    )
    with pytest.raises(SecretError, match="invalid access token"):
        tokens.verify(unsigned)
    with pytest.raises(SecretError, match="required"):
        tokens.verify("")


def test_token_key_is_created_once_and_private(tmp_path: Path) -> None:
    first = load_or_create_key(tmp_path)
    assert load_or_create_key(tmp_path) == first and len(first) == 32
    assert (tmp_path / "secrets-token.key").stat().st_mode & 0o077 == 0


# ---------------------------------------------------------------- audit log


def test_audit_append_query_and_filters(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    log = AuditLog(tmp_path, coordinator="c1", clock=lambda: now[0])
    log.record("CREATE", "ALLOWED", "cloudless://dev/admin/a", namespace="p", name="x")
    now[0] += 1
    log.record("ACCESS", "DENIED", "cloudless://dev/node/n", namespace="p", name="x", reason="r")
    now[0] += 86_400  # next day: a new segment
    log.record("ACCESS", "ALLOWED", "cloudless://dev/node/n", namespace="q", name="y")
    log.close()
    everything = log.query(AuditQuery())
    assert [e.operation for e in everything] == ["ACCESS", "ACCESS", "CREATE"]
    assert [e.outcome for e in log.query(AuditQuery(outcome="DENIED"))] == ["DENIED"]
    assert [e.name for e in log.query(AuditQuery(namespace="q"))] == ["y"]
    assert len(log.query(AuditQuery(since=now[0] - 10))) == 1
    assert len(log.query(AuditQuery(limit=2))) == 2
    assert len(list(tmp_path.glob("audit-*.c1.jsonl"))) == 2
    for path in tmp_path.iterdir():
        assert path.stat().st_mode & 0o077 == 0
        for line in path.read_text().splitlines():
            assert set(json.loads(line)) == set(AuditEntry.__dataclass_fields__)


def test_audit_retention_prunes_old_days(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    log = AuditLog(tmp_path, coordinator="c1", retention_days=2, clock=lambda: now[0])
    log.record("CREATE", "ALLOWED", "a")
    now[0] += 5 * 86_400
    log.record("CREATE", "ALLOWED", "a")
    assert log.prune() == 1
    assert len(log.query(AuditQuery())) == 1
    log.close()


def test_audit_survives_a_torn_last_line(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, coordinator="c1")
    log.record("CREATE", "ALLOWED", "a")
    log.close()
    segment = next(tmp_path.glob("audit-*"))
    with segment.open("ab") as f:
        f.write(b'{"time": 1, "oper')
    assert len(log.query(AuditQuery())) == 1


class FsyncCounter:
    """Counts real fsyncs (and what each covered) while passing them to the OS."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, log: AuditLog) -> None:
        self.covered: list[int] = []
        self.fail = False
        real = os.fsync

        def counting(fd: int) -> None:
            if self.fail:
                raise OSError(5, "Input/output error")
            self.covered.append(log._written)  # lines written when this fsync started
            real(fd)

        monkeypatch.setattr(os, "fsync", counting)


async def test_audit_commit_is_on_disk_before_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path, coordinator="c1")
    fsyncs = FsyncCounter(monkeypatch, log)
    await log.commit("CREATE", "ALLOWED", "a", namespace="p", name="x")
    await log.commit("ACCESS", "DENIED", "anonymous", reason="no certificate")
    # Each commit waited for an fsync that started after its own line was written.
    assert fsyncs.covered == [1, 2]
    log.record("ACCESS", "ALLOWED", "a")  # rides the next commit
    await log.commit("DELETE", "ALLOWED", "a")
    assert fsyncs.covered == [1, 2, 4]
    log.close()
    assert log.query(AuditQuery(limit=1))[0].operation == "DELETE"


async def test_audit_concurrent_commits_share_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path, coordinator="c1")
    fsyncs = FsyncCounter(monkeypatch, log)
    await asyncio.gather(*(log.commit("CREATE", "ALLOWED", f"a{i}") for i in range(200)))
    # Group commit: the first round covers the first writer, the next one everybody else.
    assert len(fsyncs.covered) <= 2 and fsyncs.covered[-1] == 200
    assert log._synced == 200
    log.close()
    assert len(log.query(AuditQuery())) == 200


async def test_audit_commit_fails_loudly_when_fsync_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path, coordinator="c1")
    fsyncs = FsyncCounter(monkeypatch, log)
    fsyncs.fail = True
    with pytest.raises(OSError, match="Input/output error"):
        await log.commit("CREATE", "ALLOWED", "a")
    fsyncs.fail = False
    await log.commit("UPDATE", "ALLOWED", "a")  # the next commit covers both lines
    assert fsyncs.covered == [2] and log._synced == 2
    log.close()


def test_audit_query_validation() -> None:
    assert query_problem(AuditQuery(operation="STEAL"))
    assert query_problem(AuditQuery(outcome="MAYBE"))
    assert query_problem(AuditQuery(limit=10**6))
    assert query_problem(AuditQuery(since=2, until=1))
    assert query_problem(AuditQuery(operation="ACCESS", outcome="DENIED")) is None


def test_token_ids_are_safe_on_a_command_line() -> None:
    tokens = AccessTokens(KEY, "dev")
    ids = [tokens.mint(namespace="p", name="n", audience="a")[1].token_id for _ in range(500)]
    assert all(i.isalnum() and not i.startswith("-") for i in ids)  # `secrets revoke NS/N ID`
    assert len(set(ids)) == len(ids)
