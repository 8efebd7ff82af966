"""SecretsService end to end: real Temporal dev server, real cloudless-transit over HTTP
(through hvac), real gRPC over mutual TLS, real audit files on disk.

Covers CLD-REQ-063: envelope encryption, immutable secrets, audience-bound, expiring,
use-limited and revocable tokens, node authorization, the audit log, master-key rotation
with concurrent reads, and that no value reaches Temporal history or the state dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import hvac
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from temporalio.testing import WorkflowEnvironment

from cloudless import tls
from cloudless.api import secrets_pb2, secrets_pb2_grpc
from cloudless.contracts.secret import workflow_id as secret_workflow_id
from cloudless.pki import CertificateAuthority, Identity
from cloudless.secrets.access import AccessTokens, load_or_create_key
from cloudless.secrets.client import SecretsCallError, SecretsClient
from cloudless.testing.cluster import LocalCluster
from cloudless.testing.transit import transit_server
from workers.secrets import SecretsServicer
from workers.secrets import store as secrets_store
from workers.secrets.validation import MAX_DATA_BYTES

pytestmark = [pytest.mark.temporal]

PASSWORD = b"s3cr3t-" + uuid.uuid4().hex.encode()


@pytest.fixture(scope="module")
def transit() -> Iterator[Any]:
    with transit_server() as server:
        yield server


@pytest.fixture(scope="module")
async def cluster(temporal_env: WorkflowEnvironment, transit: Any) -> AsyncIterator[LocalCluster]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cl-") as d:
        c = LocalCluster(
            temporal_env.client,
            Path(d),
            cluster=f"s-{uuid.uuid4().hex[:6]}",
            transit=hvac.Client(url=transit.url, token=transit.token),
            coordinator_options={"rotation_settle_seconds": 1.0},
        )
        await c.start()
        try:
            yield c
        finally:
            await c.close()


@pytest.fixture
async def admin(cluster: LocalCluster) -> AsyncIterator[SecretsClient]:
    async with SecretsClient.from_dir(cluster.agent_gateway, cluster.root / "admin") as client:
        yield client


def _client_for(cluster: LocalCluster, identity: Identity) -> SecretsClient:
    ca = CertificateAuthority.load(cluster.coordinator_dir)
    key, cert = ca.issue(identity)
    return SecretsClient(cluster.agent_gateway, tls.TLSMaterial(key, cert, ca.cert_pem))


def name() -> str:
    return f"db-{uuid.uuid4().hex[:8]}"


async def expect(code: grpc.StatusCode, coro: Any) -> str:
    with pytest.raises(SecretsCallError) as err:
        await coro
    assert err.value.code == code, str(err.value)
    return str(err.value)


async def test_create_get_update_delete(admin: SecretsClient) -> None:
    n = name()
    meta = await admin.create("prod", n, {"DB_PASSWORD": PASSWORD}, ["backend"])
    assert (meta.version, meta.key_version, list(meta.keys)) == (1, 1, ["DB_PASSWORD"])
    token = await admin.token("prod", n, "backend")
    got = await admin.get("prod", n, token.token)
    assert got.data["DB_PASSWORD"] == PASSWORD
    assert 0 < got.cache_ttl_seconds <= 300

    await expect(grpc.StatusCode.ALREADY_EXISTS, admin.create("prod", n, {"X": b"y"}, ["backend"]))
    updated = await admin.update("prod", n, {"DB_PASSWORD": b"rotated"})
    assert updated.version == 2
    assert (await admin.get("prod", n, token.token)).data["DB_PASSWORD"] == b"rotated"
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        admin.update("prod", n, {"DB_PASSWORD": b"x"}, expected_version=1),
    )

    assert await admin.delete("prod", n)
    await expect(grpc.StatusCode.NOT_FOUND, admin.get("prod", n, token.token))
    await expect(grpc.StatusCode.NOT_FOUND, admin.delete("prod", n))
    again = await admin.create("prod", n, {"DB_PASSWORD": b"new"}, ["backend"])
    assert again.version == 1


async def test_immutable_secret_rejects_updates(admin: SecretsClient) -> None:
    n = name()
    await admin.create("prod", n, {"TLS_KEY": b"k"}, ["web"], immutable=True)
    message = await expect(
        grpc.StatusCode.FAILED_PRECONDITION, admin.update("prod", n, {"TLS_KEY": b"x"})
    )
    assert "immutable" in message


async def test_bad_input_is_refused_with_reasons(admin: SecretsClient) -> None:
    msg = await expect(
        grpc.StatusCode.INVALID_ARGUMENT, admin.create("Prod", "x", {"K": b"v"}, ["a"])
    )
    assert "DNS-1123" in msg
    msg = await expect(grpc.StatusCode.INVALID_ARGUMENT, admin.create("prod", name(), {}, ["a"]))
    assert "at least one key" in msg
    msg = await expect(
        grpc.StatusCode.INVALID_ARGUMENT, admin.create("prod", name(), {"K": b"v"}, ["*"])
    )
    assert "audience" in msg
    msg = await expect(
        grpc.StatusCode.INVALID_ARGUMENT, admin.create("prod", name(), {"bad key": b"v"}, ["a"])
    )
    assert "data key" in msg


async def test_a_secret_at_the_size_limit_round_trips_and_one_byte_more_is_refused(
    admin: SecretsClient,
) -> None:
    """The limit is what fits Temporal: a secret's sealed record travels as one payload
    (values base64'd, sealed, base64'd again), so a secret at the limit is stored, read
    back and updated, and one byte more gets the validation error, not a payload one."""
    n = name()
    value = os.urandom(MAX_DATA_BYTES - 1)  # plus the one-byte key name
    await admin.create("prod", n, {"K": value}, ["backend"])
    token = await admin.token("prod", n, "backend")
    assert (await admin.get("prod", n, token.token)).data["K"] == value
    assert (await admin.update("prod", n, {"K": value[::-1]})).version == 2
    msg = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        admin.create("prod", name(), {"K": value + b"x"}, ["backend"]),
    )
    assert f"over the {MAX_DATA_BYTES}-byte limit" in msg
    assert await admin.delete("prod", n)


async def test_tokens_audience_scope_expiry_uses_and_revocation(
    admin: SecretsClient, cluster: LocalCluster
) -> None:
    n, other = name(), name()
    await admin.create("prod", n, {"K": PASSWORD}, ["backend", "batch"])
    await admin.create("prod", other, {"K": b"other"}, ["backend"])

    # Audience must be declared by the secret, exactly.
    await expect(grpc.StatusCode.PERMISSION_DENIED, admin.token("prod", n, "frontend"))
    await expect(grpc.StatusCode.INVALID_ARGUMENT, admin.token("prod", n, "back*"))
    # A token for one secret does not open another.
    token = await admin.token("prod", n, "backend")
    await expect(grpc.StatusCode.PERMISSION_DENIED, admin.get("prod", other, token.token))
    # TTL bounds.
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT, admin.token("prod", n, "backend", ttl_seconds=2 * 86400)
    )
    # Expired (minted with the cluster's key an hour and a half ago).
    tokens = AccessTokens(load_or_create_key(cluster.coordinator_dir), cluster.cluster)
    old, _ = tokens.mint(
        namespace="prod", name=n, audience="backend", ttl=3600, now=time.time() - 5400
    )
    assert "expired" in await expect(grpc.StatusCode.UNAUTHENTICATED, admin.get("prod", n, old))
    # Forged: signed with another key.
    forged, _ = AccessTokens(b"x" * 32, cluster.cluster).mint(
        namespace="prod", name=n, audience="backend"
    )
    await expect(grpc.StatusCode.UNAUTHENTICATED, admin.get("prod", n, forged))
    # max_uses, counted durably: a second coordinator's service sees the same count.
    limited = await admin.token("prod", n, "batch", max_uses=3)
    for _ in range(3):
        assert (await admin.get("prod", n, limited.token)).data["K"] == PASSWORD
    assert "used all 3" in await expect(
        grpc.StatusCode.RESOURCE_EXHAUSTED, admin.get("prod", n, limited.token)
    )
    async with (
        second_service(cluster) as address,
        SecretsClient.from_dir(address, cluster.root / "admin") as elsewhere,
    ):
        await expect(grpc.StatusCode.RESOURCE_EXHAUSTED, elsewhere.get("prod", n, limited.token))
        fresh = await admin.token("prod", n, "batch", max_uses=5)
        assert (await elsewhere.get("prod", n, fresh.token)).data["K"] == PASSWORD
    # Revocation.
    assert await admin.revoke("prod", n, token.token_id)
    assert "revoked" in await expect(
        grpc.StatusCode.PERMISSION_DENIED, admin.get("prod", n, token.token)
    )
    # Every one of those denials is in the audit log, with its reason.
    denied = await admin.audit(
        secrets_pb2.GetSecretAuditLogRequest(namespace="prod", name=n, outcome="DENIED")
    )
    reasons = " | ".join(f"{e.operation}: {e.reason}" for e in denied)
    for expected in (
        "GENERATE_TOKEN: audience 'frontend' is not declared",
        "expired",
        "invalid access token",
        "used all 3",
        "was revoked",
    ):
        assert expected in reasons, (expected, reasons)
    assert all(e.actor and e.source and e.time for e in denied)


async def test_secret_with_ttl_expires(admin: SecretsClient, cluster: LocalCluster) -> None:
    """Issue 10: `secrets create --ttl` was never tested to expire. A 2 s secret is served
    until its expiry and refused from then on (NOT_FOUND, saying it expired), by this
    coordinator with a warm cache and by one with a cold cache; its workflow ends, it
    leaves the list, no token can be minted for it, the audit log shows each refusal, and
    the name can be created again."""
    ns, n = f"ttl-{uuid.uuid4().hex[:6]}", "short"
    out, _ = await cli(
        cluster, "create", f"{ns}/{n}", "--data", "K=brief", "--audience", "app", "--ttl", "2s"
    )
    assert "created (version 1)" in out
    (meta,) = await admin.list_secrets(ns)
    assert meta.expires_at == pytest.approx(meta.created_at + 2.0)
    token = (await admin.token(ns, n, "app", ttl_seconds=3600)).token
    while True:  # poll: served until expiry, never after
        asked = time.time()
        try:
            got = await admin.get(ns, n, token)
        except SecretsCallError as err:
            refusal = err
            break
        assert asked < meta.expires_at, "an expired secret was served"
        assert got.data["K"] == b"brief"
        assert 0 < got.cache_ttl_seconds <= meta.expires_at - asked  # agents drop it in time
        await asyncio.sleep(0.05)
    assert time.time() >= meta.expires_at
    assert refusal.code == grpc.StatusCode.NOT_FOUND, str(refusal)
    assert f"secret {ns}/{n} expired at" in str(refusal)
    async with (
        second_service(cluster) as address,
        SecretsClient.from_dir(address, cluster.root / "admin") as cold,
    ):
        msg = await expect(grpc.StatusCode.NOT_FOUND, cold.get(ns, n, token))
        assert f"secret {ns}/{n} expired at" in msg
    # The workflow ended on its own timer: the ciphertext is out of live state.
    handle = cluster.client.get_workflow_handle(secret_workflow_id(ns, n))
    await asyncio.wait_for(handle.result(), timeout=10)  # completes (not fails) at expiry
    assert await admin.list_secrets(ns) == []
    msg = await expect(grpc.StatusCode.NOT_FOUND, admin.token(ns, n, "app"))
    assert "expired at" in msg
    _, stderr = await cli(cluster, "get", f"{ns}/{n}", "--audience", "app", ok=False)
    assert "NOT_FOUND" in stderr and "expired at" in stderr
    denied = await admin.audit(
        secrets_pb2.GetSecretAuditLogRequest(namespace=ns, name=n, outcome="DENIED")
    )
    assert {e.operation for e in denied} == {"ACCESS", "GENERATE_TOKEN"}
    assert all(f"secret {ns}/{n} expired at" in e.reason for e in denied), denied
    # Expired is gone: the name is free again, for a new secret.
    await admin.create(ns, n, {"K": b"again"}, ["app"])
    fresh = (await admin.token(ns, n, "app")).token
    assert (await admin.get(ns, n, fresh)).data["K"] == b"again"


@contextlib.asynccontextmanager
async def second_service(cluster: LocalCluster) -> AsyncIterator[str]:
    """Another coordinator's SecretsService (fresh memory) on the same Temporal + transit."""
    coordinator: Any = cluster.coordinator
    original: SecretsServicer = coordinator.secrets_runtime.servicer
    server = tls.server()
    servicer = SecretsServicer(
        original._client,
        cluster.cluster,
        original._master,
        original._tokens,
        original._audit,
    )
    secrets_pb2_grpc.add_SecretsServiceServicer_to_server(servicer, server)
    material = tls.TLSMaterial.load(cluster.coordinator_dir)
    port = server.add_secure_port(
        "127.0.0.1:0", tls.server_credentials(material, require_client_auth=True)
    )
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


async def test_only_admins_manage_and_nodes_need_a_placed_replica(
    admin: SecretsClient, cluster: LocalCluster
) -> None:
    n = name()
    await admin.create("prod", n, {"K": b"v"}, ["backend"])
    node = _client_for(cluster, Identity(cluster=cluster.cluster, role="node", name="n-1"))
    async with node:
        await expect(grpc.StatusCode.PERMISSION_DENIED, node.list_secrets())
        await expect(
            grpc.StatusCode.PERMISSION_DENIED, node.create("prod", name(), {"K": b"v"}, ["a"])
        )
        msg = await expect(grpc.StatusCode.PERMISSION_DENIED, node.token("prod", n, "backend"))
        assert "runs no replica" in msg
        # A node may read with a token an admin gave it.
        token = await admin.token("prod", n, "backend")
        assert (await node.get("prod", n, token.token)).data["K"] == b"v"
    foreign_ca = CertificateAuthority.bootstrap(cluster.root / "foreign-ca", cluster.cluster)
    key, cert = foreign_ca.issue(Identity(cluster=cluster.cluster, role="admin", name="mallory"))
    # A certificate from another CA never gets past the TLS handshake.
    real_ca = CertificateAuthority.load(cluster.coordinator_dir).cert_pem
    async with SecretsClient(cluster.agent_gateway, tls.TLSMaterial(key, cert, real_ca)) as mallory:
        await expect(grpc.StatusCode.UNAVAILABLE, mallory.list_secrets())


def _forged_client(cluster: LocalCluster, uri: str | None) -> SecretsClient:
    """A client whose certificate the cluster CA signed but which names ``uri`` (another
    cluster's identity) or no Cloudless identity at all (``None``). Our CA refuses to
    issue either; a CA shared by several clusters (an enterprise CA) would not."""
    ca = CertificateAuthority.load(cluster.coordinator_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    sans: list[x509.GeneralName] = [x509.DNSName("intruder")]
    if uri is not None:
        sans.append(x509.UniformResourceIdentifier(uri))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intruder")]))
        .issuer_name(ca._cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca._key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    material = tls.TLSMaterial(key_pem, cert.public_bytes(serialization.Encoding.PEM), ca.cert_pem)
    return SecretsClient(cluster.agent_gateway, material)


async def test_every_denial_is_audited_with_actor_source_and_reason(
    admin: SecretsClient, cluster: LocalCluster
) -> None:
    ns = f"deny-{uuid.uuid4().hex[:6]}"
    await admin.create(ns, "db", {"K": PASSWORD}, ["app"])
    token = (await admin.token(ns, "db", "app")).token
    foreign = "cloudless://other-cluster/admin/mallory"
    async with _forged_client(cluster, foreign) as mallory:
        await expect(grpc.StatusCode.UNAUTHENTICATED, mallory.list_secrets(ns))
        msg = await expect(grpc.StatusCode.UNAUTHENTICATED, mallory.get(ns, "db", token))
        assert "not one of cluster other-cluster" in msg
    async with _forged_client(cluster, None) as nobody:
        await expect(grpc.StatusCode.UNAUTHENTICATED, nobody.get(ns, "db", token))
    node_id = Identity(cluster=cluster.cluster, role="node", name="n-deny")
    async with _client_for(cluster, node_id) as node:
        await expect(grpc.StatusCode.PERMISSION_DENIED, node.update(ns, "db", {"K": b"x"}))
        await expect(
            grpc.StatusCode.PERMISSION_DENIED,
            node.audit(secrets_pb2.GetSecretAuditLogRequest(namespace=ns)),
        )
    # The denials answered only after they were fsynced: read the files, not a cache.
    denied = {
        (e.operation, e.actor): e
        for e in await admin.audit(
            secrets_pb2.GetSecretAuditLogRequest(namespace=ns, outcome="DENIED")
        )
    }
    assert set(denied) == {
        ("LIST", foreign),
        ("ACCESS", foreign),
        ("ACCESS", "anonymous"),
        ("UPDATE", node_id.uri()),
        ("AUDIT", node_id.uri()),
    }
    assert "not one of cluster other-cluster" in denied["ACCESS", foreign].reason
    assert "names no Cloudless identity" in denied["ACCESS", "anonymous"].reason
    assert "needs an admin certificate" in denied["UPDATE", node_id.uri()].reason
    for e in denied.values():
        assert e.source.startswith("ipv4:127.0.0.1:"), e.source
        assert e.name in ("db", "") and e.namespace == ns
    raw = b"".join(p.read_bytes() for p in (cluster.coordinator_dir / "audit").iterdir())
    assert token.encode() not in raw and PASSWORD not in raw


async def test_list_and_audit_log(admin: SecretsClient, cluster: LocalCluster) -> None:
    ns = f"audit-{uuid.uuid4().hex[:6]}"
    await admin.create(ns, "one", {"K": PASSWORD}, ["a"])
    await admin.create(ns, "two", {"K": PASSWORD}, ["a"])
    listed = await admin.list_secrets(ns)
    assert [m.name for m in listed] == ["one", "two"]
    assert all(not hasattr(m, "data") for m in listed)
    token = await admin.token(ns, "one", "a")
    await admin.get(ns, "one", token.token)
    await expect(grpc.StatusCode.PERMISSION_DENIED, admin.get(ns, "two", token.token))
    entries = await admin.audit(secrets_pb2.GetSecretAuditLogRequest(namespace=ns))
    seen = {(e.operation, e.outcome, e.name) for e in entries}
    assert {
        ("CREATE", "ALLOWED", "one"),
        ("CREATE", "ALLOWED", "two"),
        ("GENERATE_TOKEN", "ALLOWED", "one"),
        ("ACCESS", "ALLOWED", "one"),
        ("ACCESS", "DENIED", "two"),
        ("LIST", "ALLOWED", ""),
    } <= seen
    assert all(e.actor.startswith(f"cloudless://{cluster.cluster}/admin/") for e in entries)
    assert all(e.source for e in entries)
    assert [e.time for e in entries] == sorted((e.time for e in entries), reverse=True)
    denied = await admin.audit(secrets_pb2.GetSecretAuditLogRequest(namespace=ns, outcome="DENIED"))
    assert [(e.operation, e.name) for e in denied] == [("ACCESS", "two")]
    assert "scope" in denied[0].reason or "is for" in denied[0].reason
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        admin.audit(secrets_pb2.GetSecretAuditLogRequest(operation="STEAL")),
    )


async def test_no_value_in_temporal_history_logs_or_on_disk(
    admin: SecretsClient,
    cluster: LocalCluster,
    temporal_env: WorkflowEnvironment,
    capfd: pytest.CaptureFixture[str],
) -> None:
    n = name()
    await admin.create("prod", n, {"DB_PASSWORD": PASSWORD}, ["backend"])
    await admin.update("prod", n, {"DB_PASSWORD": PASSWORD + b"2"})
    token = await admin.token("prod", n, "backend")
    await admin.get("prod", n, token.token)
    handle = temporal_env.client.get_workflow_handle(secret_workflow_id("prod", n))
    history = await handle.fetch_history()
    raw = history.to_json().encode()
    assert PASSWORD not in raw and token.token.encode() not in raw
    await expect(grpc.StatusCode.PERMISSION_DENIED, admin.get("prod", name(), token.token))
    logs = capfd.readouterr()
    assert "secrets.refused" in logs.out + logs.err  # the logs were captured
    assert PASSWORD.decode() not in logs.out + logs.err
    assert token.token not in logs.out + logs.err
    coordinator: Any = cluster.coordinator
    coordinator.audit.flush()
    for path in cluster.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert PASSWORD not in data, path
            assert token.token.encode() not in data, path


async def test_rotation_rewraps_every_data_key_while_reads_continue(
    admin: SecretsClient, cluster: LocalCluster, transit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [name() for _ in range(12)]
    for n in names:
        await admin.create("rot", n, {"K": n.encode()}, ["app"])
    tokens = {n: (await admin.token("rot", n, "app")).token for n in names}
    before = await admin.key_info()
    # Every read during the rotation misses the coordinator's record cache: it queries the
    # secret's workflow, so it sees each rewrapped key as it lands and unwraps it through
    # transit (a warm cache would serve the pre-rotation record throughout).
    monkeypatch.setattr(secrets_store, "RECORD_TTL", 0.0)
    servicer: SecretsServicer = cluster.coordinator.secrets_runtime.servicer  # type: ignore[attr-defined]
    errors: list[BaseException] = []
    reads = 0
    stop = asyncio.Event()

    async def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            for n in names:
                try:
                    got = await admin.get("rot", n, tokens[n])
                    assert got.data["K"] == n.encode()
                    reads += 1
                except BaseException as err:
                    errors.append(err)

    task = asyncio.create_task(reader())
    progress = await admin.rotate(wait=True)
    stop.set()
    await task
    assert not errors, errors[:3]
    assert reads > 0
    assert progress.state == "Done"
    assert progress.target_version == before.latest_version + 1
    after = await admin.key_info()
    assert after.latest_version == progress.target_version
    assert after.min_decryption_version == progress.target_version
    assert after.schedule_id and after.rotation_interval == "90d" and after.next_rotation_at
    assert after.last_rotation.state == "Done"
    for meta in await admin.list_secrets("rot"):
        assert meta.key_version == progress.target_version
    # Reads during the rotation unwrapped rewrapped (new-version) data keys through transit.
    new_prefix = f"vault:v{after.latest_version}:"
    rewrapped = {w for w in servicer.store.data_keys if w.startswith(new_prefix)}
    assert len(rewrapped) >= len(names)
    # Reads work on a cold cache (keys unwrapped by transit under the new version).
    async with (
        second_service(cluster) as address,
        SecretsClient.from_dir(address, cluster.root / "admin") as cold,
    ):
        for n in names:
            assert (await cold.get("rot", n, tokens[n])).data["K"] == n.encode()


async def cli(cluster: LocalCluster, *args: str, ok: bool = True) -> tuple[str, str]:
    """Run the real ``cloudlessctl`` against this cluster (a subprocess; the loop serves)."""
    env = {
        **os.environ,
        "CLOUDLESS_SECRETS_ADDRESS": cluster.agent_gateway,
        "CLOUDLESS_ADMIN_DIR": str(cluster.root / "admin"),
        "CLOUDLESS_CLUSTER": cluster.cluster,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cloudless.cli.main",
        "secrets",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert (proc.returncode == 0) == ok, (args, out, err)
    return out.decode(), err.decode()


async def test_cli_secrets_commands(cluster: LocalCluster, tmp_path: Path) -> None:
    ref = f"production/{name()}"
    cert = tmp_path / "tls.pem"
    cert.write_bytes(b"-----BEGIN FAKE-----\n")
    out, _ = await cli(
        cluster,
        "create",
        ref,
        "--data",
        "DB_PASSWORD=hunter2",
        "--data",
        f"CERT=@{cert}",
        "--audience",
        "backend-api",
        "--ttl",
        "90d",
    )
    assert "created (version 1)" in out
    out, _ = await cli(cluster, "get", ref, "--key", "DB_PASSWORD")
    assert out == "hunter2"
    out, _ = await cli(cluster, "list", "-n", "production", "-o", "json")
    listed = json.loads(out)
    assert ref.split("/")[1] in {m["name"] for m in listed}
    assert "hunter2" not in out
    out, err = await cli(
        cluster, "token", ref, "--audience", "backend-api", "--ttl", "1h", "--max-uses", "100"
    )
    token = out.strip()
    token_id = err.split()[2].rstrip(",")
    out, _ = await cli(cluster, "get", ref, "--token", token, "-o", "json")
    assert json.loads(out)["data"]["DB_PASSWORD"] == "hunter2"
    out, _ = await cli(cluster, "update", ref, "--data", "DB_PASSWORD=swordfish")
    assert "version 2" in out
    out, _ = await cli(cluster, "revoke", ref, token_id)
    assert "revoked" in out
    _, err = await cli(cluster, "get", ref, "--token", token, ok=False)
    assert "revoked" in err and "PERMISSION_DENIED" in err
    out, _ = await cli(cluster, "audit", ref, "--outcome", "DENIED", "-o", "json")
    assert [e["operation"] for e in json.loads(out)] == ["ACCESS"]
    _, err = await cli(cluster, "create", "no-slash", "--data", "K=V", "--audience", "a", ok=False)
    assert "<namespace>/<name>" in err
    out, _ = await cli(cluster, "key-info")
    assert "cloudless-secrets" in out
    out, _ = await cli(cluster, "delete", ref)
    assert "deleted" in out


async def test_cli_secrets_rotate(cluster: LocalCluster) -> None:
    ref = f"rotcli/{name()}"
    await cli(cluster, "create", ref, "--data", "K=before-rotation", "--audience", "app")
    out, _ = await cli(cluster, "key-info", "-o", "json")
    before = json.loads(out)["latest_version"]

    out, _ = await cli(cluster, "rotate", "--wait")
    wf = f"key-rotation/{cluster.cluster}"
    assert out.startswith(f"rotation {wf}: Done, target version {before + 1}, "), out
    assert "data keys rewrapped" in out

    out, _ = await cli(cluster, "rotate", "--wait", "-o", "json")
    progress = json.loads(out)
    assert progress["workflow_id"] == wf and progress["state"] == "Done"
    assert progress["target_version"] == before + 2
    assert int(progress["rewrapped"]) >= 1  # at least the secret above (int64: a string)

    out, _ = await cli(cluster, "key-info", "-o", "json")
    info = json.loads(out)
    assert info["latest_version"] == info["min_decryption_version"] == before + 2
    assert info["last_rotation"]["state"] == "Done"
    out, _ = await cli(cluster, "list", "-n", "rotcli", "-o", "json")
    assert {m["key_version"] for m in json.loads(out)} == {before + 2}
    out, _ = await cli(cluster, "get", ref, "--key", "K")
    assert out == "before-rotation"
