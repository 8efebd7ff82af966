"""cloudless-transit over real HTTP, driven by the real ``hvac`` client Cloudless uses.

Every call goes through ``hvac.Client(...).secrets.transit`` (or hvac's adapter for requests
hvac validates away client-side), so what passes here is what Cloudless code will see, and
what it would see from a real Vault.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import re
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloudless.errors import ConfigError
from cloudless.testing.cluster import free_port
from cloudless.testing.transit import running_transit, serve_in_thread, transit_server
from cloudless.transit.client import transit_client
from transit.keyring import MIN_AUTO_ROTATE_SECONDS, Keyring, SealError
from transit.server import (
    KEYRING_FILE,
    SEAL_KEY_FILE,
    TOKEN_FILE,
    TransitServer,
    open_state,
    tls_context,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unique(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def server() -> Iterator[TransitServer]:
    with transit_server() as s:
        yield s


@pytest.fixture
def client(server: TransitServer) -> Iterator[Any]:
    c = hvac.Client(url=server.url, token=server.token)
    yield c
    c.adapter.close()


@pytest.fixture
def transit(client: Any) -> Any:
    return client.secrets.transit


# --------------------------------------------------------------------------- auth


def test_authentication(server: TransitServer, client: Any) -> None:
    assert client.is_authenticated()
    lookup = client.lookup_token()
    assert lookup["data"]["policies"] == ["root"]
    assert server.token not in str(lookup)  # lookup-self does not echo the token
    assert not hvac.Client(url=server.url, token="wrong").is_authenticated()


@pytest.mark.parametrize("token", ["wrong-token", ""])
def test_wrong_or_missing_token_is_403_permission_denied(server: TransitServer, token: str) -> None:
    bad = hvac.Client(url=server.url, token=token or None)
    calls: list[Callable[[], Any]] = [
        lambda: bad.secrets.transit.list_keys(),
        lambda: bad.secrets.transit.encrypt_data("k", plaintext=b64(b"x")),
        lambda: bad.secrets.transit.read_key("does-not-exist"),  # no path probing either
    ]
    for call in calls:
        with pytest.raises(hvac.exceptions.Forbidden) as err:
            call()
        assert err.value.errors == ["permission denied"]


def test_bearer_header_is_accepted(server: TransitServer) -> None:
    ok = requests.get(
        f"{server.url}/v1/auth/token/lookup-self",
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=5,
    )
    assert ok.status_code == 200
    bad = requests.get(
        f"{server.url}/v1/auth/token/lookup-self",
        headers={"Authorization": "Bearer nope"},
        timeout=5,
    )
    assert bad.status_code == 403 and bad.json() == {"errors": ["permission denied"]}


def test_health_is_unauthenticated_and_reveals_nothing(server: TransitServer) -> None:
    anonymous = hvac.Client(url=server.url)
    health = anonymous.sys.read_health_status(method="GET")
    assert health["initialized"] is True and health["sealed"] is False
    assert set(health) == {
        "initialized",
        "sealed",
        "standby",
        "performance_standby",
        "replication_performance_mode",
        "replication_dr_mode",
        "server_time_utc",
        "version",
        "cluster_name",
    }
    head = anonymous.sys.read_health_status(method="HEAD")
    assert head.status_code == 200


# --------------------------------------------------------------------------- keys


def test_create_and_read_key(transit: Any) -> None:
    name = unique()
    created = transit.create_key(name)
    assert created["data"]["name"] == name
    data = transit.read_key(name)["data"]
    assert data["type"] == "aes256-gcm96"
    assert list(data["keys"]) == ["1"] and isinstance(data["keys"]["1"], int)
    assert abs(data["keys"]["1"] - time.time()) < 60
    assert data["latest_version"] == 1
    assert data["min_decryption_version"] == 1
    assert data["min_encryption_version"] == 0
    assert data["deletion_allowed"] is False
    assert data["auto_rotate_period"] == 0
    assert data["supports_encryption"] and data["supports_decryption"]
    assert not data["supports_signing"]
    again = transit.create_key(name)  # existing: untouched, with Vault's warning
    assert again["warnings"] == [f"key {name} already existed"]


def test_create_key_types_and_options(client: Any, transit: Any) -> None:
    name = unique()
    transit.create_key(name, key_type="chacha20-poly1305", auto_rotate_period="720h")
    data = transit.read_key(name)["data"]
    assert data["type"] == "chacha20-poly1305"
    assert data["auto_rotate_period"] == 720 * 3600
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        transit.create_key(unique(), key_type="rsa-2048")
    assert "key type rsa-2048 is not supported by cloudless-transit" in err.value.errors[0]
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        # hvac refuses unknown types itself, so send the request through its adapter.
        client.adapter.post(f"/v1/transit/keys/{unique()}", json={"type": "aes512-gcm"})
    assert err.value.errors == ["unknown key type aes512-gcm"]
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        transit.create_key(unique(), derived=True)
    assert "derived is not supported" in err.value.errors[0]
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        transit.create_key(unique(), auto_rotate_period="10m")
    assert err.value.errors == ["auto rotate period must be 0 to disable or at least an hour"]


def test_list_keys(server: TransitServer, transit: Any) -> None:
    names = sorted(unique("list") for _ in range(3))
    for name in names:
        transit.create_key(name)
    listed = transit.list_keys()["data"]["keys"]
    assert set(names) <= set(listed) and listed == sorted(listed)
    # hvac's strict_http mode sends GET ?list=true instead of the LIST method.
    strict = hvac.Client(url=server.url, token=server.token, strict_http=True)
    assert strict.secrets.transit.list_keys()["data"]["keys"] == listed


def test_list_keys_empty_is_404_like_vault() -> None:
    with running_transit() as (url, token):
        empty = hvac.Client(url=url, token=token)
        with pytest.raises(hvac.exceptions.InvalidPath):
            empty.secrets.transit.list_keys()


def test_delete_key_needs_deletion_allowed(transit: Any) -> None:
    name = unique()
    transit.create_key(name)
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        transit.delete_key(name)
    assert "deletion is not allowed for this key" in err.value.errors[0]
    transit.update_key_configuration(name, deletion_allowed=True)
    response = transit.delete_key(name)
    assert response.status_code == 204
    with pytest.raises(hvac.exceptions.InvalidPath):
        transit.read_key(name)
    assert name not in transit.list_keys()["data"]["keys"]


def test_rotate_and_configure(transit: Any) -> None:
    name = unique()
    transit.create_key(name)
    rotated = transit.rotate_key(name)["data"]
    assert rotated["latest_version"] == 2 and set(rotated["keys"]) == {"1", "2"}
    transit.rotate_key(name)
    config = transit.update_key_configuration(
        name, min_decryption_version=2, min_encryption_version=3, auto_rotate_period=7200
    )["data"]
    assert config["min_decryption_version"] == 2
    assert config["min_encryption_version"] == 3
    assert config["auto_rotate_period"] == 7200
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        transit.update_key_configuration(name, min_decryption_version=9)
    assert err.value.errors == ["cannot set min decryption version of 9, latest key version is 3"]
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        transit.update_key_configuration(name, min_encryption_version=1)
    assert err.value.errors == [
        "min encryption version should not be less than min decryption version"
    ]
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        transit.update_key_configuration(name, auto_rotate_period="soon")
    assert 'field "auto_rotate_period"' in err.value.errors[0]
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        transit.rotate_key(unique("missing"))
    assert err.value.errors == ["encryption key not found"]


def test_trim_key(transit: Any) -> None:
    name = unique()
    transit.create_key(name)
    first = transit.encrypt_data(name, plaintext=b64(b"old"))["data"]["ciphertext"]
    for _ in range(3):
        transit.rotate_key(name)
    latest = transit.encrypt_data(name, plaintext=b64(b"new"))["data"]["ciphertext"]
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        transit.trim_key(name, min_version=2)
    assert "minimum encryption version is not set" in err.value.errors[0]
    transit.update_key_configuration(name, min_decryption_version=3, min_encryption_version=4)
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        transit.trim_key(name, min_version=4)
    assert err.value.errors == [
        "minimum available version cannot be greater than minimum decryption version"
    ]
    trimmed = transit.trim_key(name, min_version=3)["data"]
    assert set(trimmed["keys"]) == {"3", "4"} and trimmed["min_available_version"] == 3
    assert transit.decrypt_data(name, ciphertext=latest)["data"]["plaintext"] == b64(b"new")
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        transit.decrypt_data(name, ciphertext=first)
    assert err.value.errors == ["ciphertext or signature version is disallowed by policy (too old)"]


# --------------------------------------------------------------------------- crypto


def test_encrypt_decrypt_single(transit: Any) -> None:
    name = unique()
    transit.create_key(name)
    out = transit.encrypt_data(name, plaintext=b64(b"attack at dawn"))["data"]
    assert out["key_version"] == 1 and out["ciphertext"].startswith("vault:v1:")
    plain = transit.decrypt_data(name, ciphertext=out["ciphertext"])["data"]["plaintext"]
    assert base64.b64decode(plain) == b"attack at dawn"
    empty = transit.encrypt_data(name, plaintext="")["data"]["ciphertext"]
    assert transit.decrypt_data(name, ciphertext=empty)["data"]["plaintext"] == ""


def test_encrypt_upserts_a_missing_key(transit: Any) -> None:
    name = unique("upsert")
    ct = transit.encrypt_data(name, plaintext=b64(b"x"))["data"]["ciphertext"]
    assert transit.read_key(name)["data"]["type"] == "aes256-gcm96"
    assert transit.decrypt_data(name, ciphertext=ct)["data"]["plaintext"] == b64(b"x")
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        transit.decrypt_data(unique("missing"), ciphertext=ct)
    assert err.value.errors == ["encryption key not found"]


def test_associated_data(transit: Any) -> None:
    name = unique()
    ct = transit.encrypt_data(name, plaintext=b64(b"x"), associated_data=b64(b"tenant-a"))
    ciphertext = ct["data"]["ciphertext"]
    good = transit.decrypt_data(name, ciphertext=ciphertext, associated_data=b64(b"tenant-a"))
    assert good["data"]["plaintext"] == b64(b"x")
    for wrong in (b64(b"tenant-b"), None):
        with pytest.raises(hvac.exceptions.InvalidRequest) as err:
            transit.decrypt_data(name, ciphertext=ciphertext, associated_data=wrong)
        assert err.value.errors == ["cipher: message authentication failed"]


def test_batch_encrypt_decrypt(transit: Any) -> None:
    name = unique()
    items = [{"plaintext": b64(f"item {i}".encode()), "reference": f"ref-{i}"} for i in range(5)]
    items[2]["associated_data"] = b64(b"ad")
    results = transit.encrypt_data(name, batch_input=items)["data"]["batch_results"]
    assert [r["reference"] for r in results] == [f"ref-{i}" for i in range(5)]
    assert all(r["key_version"] == 1 for r in results)
    decrypt_items = [{"ciphertext": r["ciphertext"], "reference": r["reference"]} for r in results]
    decrypt_items[2]["associated_data"] = b64(b"ad")
    plain = transit.decrypt_data(name, batch_input=decrypt_items)["data"]["batch_results"]
    assert [base64.b64decode(r["plaintext"]) for r in plain] == [
        f"item {i}".encode() for i in range(5)
    ]
    assert [r["reference"] for r in plain] == [f"ref-{i}" for i in range(5)]


def test_batch_with_failed_items(client: Any, transit: Any) -> None:
    name = unique()
    transit.create_key(name)
    good = transit.encrypt_data(name, plaintext=b64(b"ok"))["data"]["ciphertext"]
    batch = [{"ciphertext": good}, {"ciphertext": "vault:v1:bm9wZQ=="}, {"ciphertext": "junk"}]
    # Any failed item makes the request a 400, whose body still carries every result.
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        transit.decrypt_data(name, batch_input=batch)
    results = err.value.json["data"]["batch_results"]
    assert results[0]["plaintext"] == b64(b"ok")
    assert results[1]["error"] == "invalid ciphertext length"
    assert results[2]["error"] == "invalid ciphertext: no prefix"
    # Vault's partial_failure_response_code turns a partial success into another status.
    partial = client.adapter.post(
        f"/v1/transit/decrypt/{name}",
        json={"batch_input": batch, "partial_failure_response_code": 200},
    )
    assert partial["data"]["batch_results"][2]["error"] == "invalid ciphertext: no prefix"


def test_tampered_ciphertext_and_malformed_input(transit: Any) -> None:
    name = unique()
    ct = transit.encrypt_data(name, plaintext=b64(b"sensitive"))["data"]["ciphertext"]
    raw = bytearray(base64.b64decode(ct.split(":", 2)[2]))
    raw[-1] ^= 0x01
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        transit.decrypt_data(name, ciphertext="vault:v1:" + b64(bytes(raw)))
    assert err.value.errors == ["cipher: message authentication failed"]
    for bad, message in [
        ("not-a-ciphertext", "invalid ciphertext: no prefix"),
        ("vault:v1:%%%", "invalid ciphertext: could not decode base64"),
        ("vault:v7:" + b64(bytes(raw)), "invalid ciphertext: version is too new"),
    ]:
        with pytest.raises(hvac.exceptions.InvalidRequest) as err:
            transit.decrypt_data(name, ciphertext=bad)
        assert err.value.errors == [message]
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        transit.encrypt_data(name, plaintext="***")
    assert err.value.errors == ["failed to base64-decode plaintext"]


def test_min_decryption_version_refuses_old_ciphertext(transit: Any) -> None:
    name = unique()
    old = transit.encrypt_data(name, plaintext=b64(b"v1"))["data"]["ciphertext"]
    transit.rotate_key(name)
    transit.update_key_configuration(name, min_decryption_version=2)
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        transit.decrypt_data(name, ciphertext=old)
    assert err.value.errors == ["ciphertext or signature version is disallowed by policy (too old)"]


def test_rewrap_single_and_batch(transit: Any) -> None:
    name = unique()
    cts = [
        transit.encrypt_data(name, plaintext=b64(f"p{i}".encode()))["data"]["ciphertext"]
        for i in range(3)
    ]
    transit.rotate_key(name)
    transit.rotate_key(name)
    single = transit.rewrap_data(name, ciphertext=cts[0])["data"]
    assert single["key_version"] == 3 and single["ciphertext"].startswith("vault:v3:")
    assert transit.decrypt_data(name, ciphertext=single["ciphertext"])["data"]["plaintext"] == b64(
        b"p0"
    )
    batch = transit.rewrap_data(
        name, ciphertext=None, batch_input=[{"ciphertext": c, "reference": c[-4:]} for c in cts]
    )["data"]["batch_results"]
    assert [r["key_version"] for r in batch] == [3, 3, 3]
    for i, r in enumerate(batch):
        assert r["reference"] == cts[i][-4:]
        assert transit.decrypt_data(name, ciphertext=r["ciphertext"])["data"]["plaintext"] == b64(
            f"p{i}".encode()
        )
    pinned = transit.rewrap_data(name, ciphertext=cts[1], key_version=2)["data"]
    assert pinned["key_version"] == 2


def test_generate_data_keys(client: Any, transit: Any) -> None:
    name = unique()
    transit.create_key(name)
    for bits in (128, 256, 512):
        out = transit.generate_data_key(name, key_type="plaintext", bits=bits)["data"]
        key = base64.b64decode(out["plaintext"])
        assert len(key) == bits // 8 and out["key_version"] == 1
        unwrapped = transit.decrypt_data(name, ciphertext=out["ciphertext"])["data"]["plaintext"]
        assert base64.b64decode(unwrapped) == key
    wrapped = transit.generate_data_key(name, key_type="wrapped")["data"]
    assert "plaintext" not in wrapped
    unwrapped = transit.decrypt_data(name, ciphertext=wrapped["ciphertext"])["data"]["plaintext"]
    assert len(base64.b64decode(unwrapped)) == 32  # the default is 256 bits
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        client.adapter.post(f"/v1/transit/datakey/plaintext/{name}", json={"bits": 64})
    assert err.value.errors == ["invalid bits; must be 128, 256, or 512"]
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        transit.generate_data_key(unique("missing"), key_type="wrapped")
    assert err.value.errors == ["encryption key not found"]


# --------------------------------------------------------------------------- HTTP edges


def test_http_errors_have_vaults_shape(server: TransitServer, client: Any) -> None:
    headers = {"X-Vault-Token": server.token}
    base = f"{server.url}/v1/transit"
    cases = [
        ("POST", f"{base}/encrypt/k", b"{not json", 400, "failed to parse JSON input"),
        ("POST", f"{base}/encrypt/k", b"[1, 2]", 400, "the body must be a JSON object"),
        ("POST", f"{base}/datakey/plaintext/k", b'{"bits": "many"}', 400, 'field "bits"'),
        ("POST", f"{base}/datakey/secret/k", b"{}", 400, "Invalid path"),
        ("POST", f"{base}/keys/bad%20name", b"{}", 400, "invalid key name"),
        ("GET", f"{base}/nothing/here", b"", 404, "unsupported path"),
        ("GET", f"{base}/encrypt/k", b"", 405, "unsupported operation"),
        ("GET", f"{server.url}/v1/secret/data/x", b"", 404, "unsupported path"),
    ]
    for method, url, body, status, message in cases:
        response = requests.request(method, url, data=body, headers=headers, timeout=5)
        assert response.status_code == status, (url, response.text)
        assert response.headers["Content-Type"] == "application/json"
        errors = response.json()["errors"]
        assert len(errors) == 1 and message in errors[0], (url, errors)
    # A typo'd parameter is not silently ignored: Vault's warning names it.
    warned = client.adapter.post("/v1/transit/keys/typo-check", json={"tpye": "aes256-gcm96"})
    assert warned["warnings"] == ["Endpoint ignored these unrecognized parameters: [tpye]"]


def test_body_limit(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    small_server = TransitServer(state.keyring, state.token, port=0, max_body_bytes=1024)
    with serve_in_thread(small_server) as small:
        c = hvac.Client(url=small.url, token=small.token)
        with pytest.raises(hvac.exceptions.VaultError) as err:
            c.secrets.transit.encrypt_data("k", plaintext=b64(os.urandom(2048)))
        assert err.value.errors == ["http: request body too large"]
        # The connection was dropped, not poisoned: the next request works.
        assert c.secrets.transit.encrypt_data("k", plaintext=b64(b"small"))["data"]


def test_custom_mount_path() -> None:
    with running_transit(mount="cloudless/transit") as (url, token):
        c = hvac.Client(url=url, token=token)
        out = c.secrets.transit.encrypt_data(
            "k", plaintext=b64(b"x"), mount_point="cloudless/transit"
        )
        assert out["data"]["key_version"] == 1
        with pytest.raises(hvac.exceptions.InvalidPath):
            c.secrets.transit.encrypt_data("k", plaintext=b64(b"x"))  # default mount


def test_transit_client_reads_vault_env(
    server: TransitServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_ADDR", server.url)
    monkeypatch.setenv("VAULT_TOKEN", server.token)
    assert transit_client().is_authenticated()
    assert not transit_client(token="wrong").is_authenticated()
    monkeypatch.delenv("VAULT_TOKEN")
    with pytest.raises(ConfigError, match="no transit token"):
        transit_client()


# --------------------------------------------------------------------------- rotation


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_auto_rotate_period_rotates_in_the_background() -> None:
    clock = FakeClock()
    with transit_server(clock=clock, rotate_interval=0.02) as s:
        transit = hvac.Client(url=s.url, token=s.token).secrets.transit
        transit.create_key("auto")
        transit.update_key_configuration("auto", auto_rotate_period="1h")
        transit.create_key("manual")
        old = transit.encrypt_data("auto", plaintext=b64(b"x"))["data"]["ciphertext"]
        clock.now += MIN_AUTO_ROTATE_SECONDS + 1
        deadline = time.monotonic() + 5
        while transit.read_key("auto")["data"]["latest_version"] < 2:
            assert time.monotonic() < deadline, "auto rotation did not happen"
            time.sleep(0.02)
        time.sleep(0.1)  # several more checks: no further rotation until the period passes
        assert transit.read_key("auto")["data"]["latest_version"] == 2
        assert transit.read_key("manual")["data"]["latest_version"] == 1
        assert transit.encrypt_data("auto", plaintext=b64(b"y"))["data"]["key_version"] == 2
        assert transit.decrypt_data("auto", ciphertext=old)["data"]["plaintext"] == b64(b"x")


# --------------------------------------------------------------------------- disk


def test_restart_keeps_keys_and_token(tmp_path: Path) -> None:
    with running_transit(tmp_path) as (url, token):
        transit = hvac.Client(url=url, token=token).secrets.transit
        transit.create_key("persist")
        v1 = transit.encrypt_data("persist", plaintext=b64(b"one"), associated_data=b64(b"a"))
        transit.rotate_key("persist")
        transit.update_key_configuration("persist", deletion_allowed=True)
        v2 = transit.encrypt_data("persist", plaintext=b64(b"two"))["data"]["ciphertext"]
        wrapped = transit.generate_data_key("persist", key_type="wrapped")["data"]["ciphertext"]
        info = transit.read_key("persist")["data"]
    with running_transit(tmp_path) as (url2, token2):
        assert token2 == token
        transit = hvac.Client(url=url2, token=token2).secrets.transit
        assert transit.read_key("persist")["data"] == info
        ct1 = v1["data"]["ciphertext"]
        one = transit.decrypt_data("persist", ciphertext=ct1, associated_data=b64(b"a"))
        assert one["data"]["plaintext"] == b64(b"one")
        assert transit.decrypt_data("persist", ciphertext=v2)["data"]["plaintext"] == b64(b"two")
        assert transit.decrypt_data("persist", ciphertext=wrapped)["data"]["plaintext"]


def test_wrong_seal_key_refuses_to_start(tmp_path: Path) -> None:
    with running_transit(tmp_path) as (url, token):
        hvac.Client(url=url, token=token).secrets.transit.create_key("k")
    keyring_bytes = (tmp_path / KEYRING_FILE).read_bytes()
    other = tmp_path / "other.key"
    other.write_text(b64(os.urandom(32)))
    other.chmod(0o600)
    with pytest.raises(SealError, match="sealed with a different seal key"):
        open_state(tmp_path, seal_key_file=other)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "transit.server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path),
            "--seal-key-file",
            str(other),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "sealed with a different seal key" in done.stderr
    assert "Refusing to start; the file was not modified" in done.stderr
    (tmp_path / SEAL_KEY_FILE).unlink()  # a lost seal key must not be silently replaced
    with pytest.raises(SealError, match="exists but seal key file"):
        open_state(tmp_path)
    assert not (tmp_path / SEAL_KEY_FILE).exists()
    assert (tmp_path / KEYRING_FILE).read_bytes() == keyring_bytes


def test_keyring_file_is_private_and_sealed(tmp_path: Path) -> None:
    with transit_server(tmp_path) as s:
        transit = hvac.Client(url=s.url, token=s.token).secrets.transit
        transit.create_key("customer-master")
        datakey = transit.generate_data_key("customer-master", key_type="plaintext")["data"]
        transit.rotate_key("customer-master")
        material = [v.material for v in s.keyring._keys["customer-master"].versions.values()]
    path = tmp_path / KEYRING_FILE
    blob = path.read_bytes()
    for name in (KEYRING_FILE, SEAL_KEY_FILE, TOKEN_FILE):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    secrets_to_find = [base64.b64decode(datakey["plaintext"]), *material]
    assert datakey["plaintext"].encode() not in blob
    for secret in secrets_to_find:
        assert secret not in blob and b64(secret).encode() not in blob
    assert b"customer-master" not in blob
    assert (tmp_path / TOKEN_FILE).read_text().strip().encode() not in blob


# --------------------------------------------------------------------------- TLS, CLI


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "transit-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_and_the_loopback_rule(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    state = open_state(tmp_path / "data")
    with pytest.raises(ConfigError, match=re.escape("refusing to listen on '0.0.0.0' without TLS")):
        TransitServer(state.keyring, state.token, host="0.0.0.0", port=0)
    context = tls_context(cert, key)
    tls_server = TransitServer(state.keyring, state.token, port=0, ssl_context=context)
    with serve_in_thread(tls_server) as s:
        assert s.url.startswith("https://127.0.0.1:")
        c = hvac.Client(url=s.url, token=s.token, verify=str(cert))
        assert c.is_authenticated()
        ct = c.secrets.transit.encrypt_data("tls", plaintext=b64(b"x"))["data"]["ciphertext"]
        assert c.secrets.transit.decrypt_data("tls", ciphertext=ct)["data"]["plaintext"]
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{s.url}/v1/sys/health", timeout=5)  # unknown CA: refused


def test_cli_refuses_plaintext_on_a_public_address(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "transit.server",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "refusing to listen on '0.0.0.0' without TLS" in done.stderr
    assert not data.exists()  # refused before touching any file


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "CLOUDLESS_TRANSIT_TOKEN"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "transit.server",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(f"{url}/v1/sys/health", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.05)
        token = (data / TOKEN_FILE).read_text().strip()
        c = hvac.Client(url=url, token=token)
        assert c.is_authenticated()
        c.secrets.transit.encrypt_data("cli", plaintext=b64(b"plaintext-marker"))
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert str(data / SEAL_KEY_FILE) in stderr  # where the new seal key went is logged
    assert token not in stderr and "plaintext-marker" not in stderr
    assert b64(b"plaintext-marker") not in stderr
    ring = Keyring.open(data / KEYRING_FILE, base64.b64decode((data / SEAL_KEY_FILE).read_text()))
    assert ring.list_keys() == ["cli"]
