"""The transit keyring without HTTP: crypto, Vault's version rules, sealing and the file."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transit.keyring import (
    KEY_TYPES,
    MIN_AUTO_ROTATE_SECONDS,
    KeyNotFoundError,
    Keyring,
    SealedFile,
    SealError,
    TransitError,
    load_or_create_seal_key,
    parse_ciphertext,
    parse_vault_duration,
    seal,
    unseal,
)


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def ring() -> Keyring:
    return Keyring()  # in memory: no store


def material(ring: Keyring, name: str) -> list[bytes]:
    """The raw key versions, read from the model only to prove they never reach disk."""
    return [v.material for v in ring._keys[name].versions.values()]


# --------------------------------------------------------------------------- crypto


def test_encrypt_decrypt_round_trip_and_ciphertext_format(ring: Keyring) -> None:
    out = ring.encrypt("k", b"hello")
    assert out.key_version == 1
    assert out.ciphertext.startswith("vault:v1:")
    raw = base64.b64decode(out.ciphertext.split(":", 2)[2])
    assert len(raw) == 12 + len(b"hello") + 16  # nonce || ct || tag, as Vault lays it out
    assert ring.decrypt("k", out.ciphertext) == b"hello"
    assert ring.encrypt("k", b"hello").ciphertext != out.ciphertext  # random nonces


def test_encrypt_upserts_unless_told_not_to(ring: Keyring) -> None:
    ring.encrypt("new", b"x")
    assert ring.list_keys() == ["new"]
    with pytest.raises(KeyNotFoundError, match="encryption key not found"):
        ring.encrypt("other", b"x", upsert_type=None)
    with pytest.raises(KeyNotFoundError):
        ring.decrypt("missing", "vault:v1:AAAA")


@pytest.mark.parametrize("key_type", sorted(KEY_TYPES))
def test_every_supported_type_round_trips(ring: Keyring, key_type: str) -> None:
    ring.create_key("k", key_type)
    assert len(material(ring, "k")[0]) == KEY_TYPES[key_type].size
    ct = ring.encrypt("k", b"data", associated_data=b"ad").ciphertext
    assert ring.decrypt("k", ct, associated_data=b"ad") == b"data"


def test_default_key_is_256_bit_aes_gcm(ring: Keyring) -> None:
    info, created = ring.create_key("k")
    assert created and info["type"] == "aes256-gcm96"
    assert len(material(ring, "k")[0]) == 32


def test_associated_data_must_match(ring: Keyring) -> None:
    ct = ring.encrypt("k", b"secret", associated_data=b"tenant-a").ciphertext
    with pytest.raises(TransitError, match=r"^cipher: message authentication failed$"):
        ring.decrypt("k", ct, associated_data=b"tenant-b")
    with pytest.raises(TransitError, match="message authentication failed"):
        ring.decrypt("k", ct)


def test_tampering_anywhere_is_detected(ring: Keyring) -> None:
    ct = ring.encrypt("k", b"0123456789abcdef").ciphertext
    raw = bytearray(base64.b64decode(ct.split(":", 2)[2]))
    for position in (0, 11, 12, len(raw) // 2, len(raw) - 1):  # nonce, body and tag
        forged = bytearray(raw)
        forged[position] ^= 0x01
        bad = "vault:v1:" + base64.b64encode(bytes(forged)).decode()
        with pytest.raises(TransitError, match="cipher: message authentication failed"):
            ring.decrypt("k", bad)


@pytest.mark.parametrize(
    ("ciphertext", "message"),
    [
        ("v1:AAAA", "invalid ciphertext: no prefix"),
        ("vault:AAAA", "invalid ciphertext: wrong number of fields"),
        ("vault:x1:AAAA", "version number could not be decoded"),
        ("vault:v1:not base64!", "could not decode base64"),
        ("vault:v1:AAAA", "invalid ciphertext length"),
        ("vault:v9:AAAA", "invalid ciphertext: version is too new"),
    ],
)
def test_malformed_ciphertexts_get_vaults_messages(
    ring: Keyring, ciphertext: str, message: str
) -> None:
    ring.create_key("k")
    with pytest.raises(TransitError, match=message):
        ring.decrypt("k", ciphertext)


def test_parse_ciphertext_reads_v0_as_v1() -> None:
    assert parse_ciphertext("vault:v0:AAAA") == (1, b"\x00\x00\x00")


# --------------------------------------------------------------------------- versions


def test_rotation_keeps_old_versions_decryptable(ring: Keyring) -> None:
    old = ring.encrypt("k", b"v1 data").ciphertext
    info = ring.rotate_key("k")
    assert info["latest_version"] == 2 and set(info["keys"]) == {"1", "2"}
    new = ring.encrypt("k", b"v2 data")
    assert new.key_version == 2
    assert ring.decrypt("k", old) == b"v1 data"
    rewrapped = ring.rewrap("k", old)
    assert rewrapped.key_version == 2 and rewrapped.ciphertext.startswith("vault:v2:")
    assert ring.decrypt("k", rewrapped.ciphertext) == b"v1 data"


def test_min_decryption_version_refuses_old_ciphertexts(ring: Keyring) -> None:
    old = ring.encrypt("k", b"x").ciphertext
    ring.rotate_key("k")
    ring.configure_key("k", min_decryption_version=2)
    with pytest.raises(
        TransitError, match=r"^ciphertext or signature version is disallowed by policy \(too old\)$"
    ):
        ring.decrypt("k", old)
    with pytest.raises(TransitError, match="too old"):
        ring.rewrap("k", old)


def test_encrypt_with_explicit_key_version(ring: Keyring) -> None:
    ring.create_key("k")
    ring.rotate_key("k")
    ring.rotate_key("k")
    assert ring.encrypt("k", b"x", key_version=1).key_version == 1
    with pytest.raises(TransitError, match="higher than the latest key version"):
        ring.encrypt("k", b"x", key_version=4)
    ring.configure_key("k", min_encryption_version=2)
    with pytest.raises(TransitError, match="less than the minimum encryption key version"):
        ring.encrypt("k", b"x", key_version=1)
    assert ring.encrypt("k", b"x").key_version == 3


def test_config_validation_follows_vault(ring: Keyring) -> None:
    ring.create_key("k")
    ring.rotate_key("k")  # latest 2
    with pytest.raises(TransitError, match="cannot set min decryption version of 3, latest"):
        ring.configure_key("k", min_decryption_version=3)
    with pytest.raises(TransitError, match="cannot set min encryption version of 5, latest"):
        ring.configure_key("k", min_encryption_version=5)
    with pytest.raises(TransitError, match="should not be less than min decryption version"):
        ring.configure_key("k", min_decryption_version=2, min_encryption_version=1)
    with pytest.raises(TransitError, match="cannot be negative"):
        ring.configure_key("k", min_decryption_version=-1)
    # A refused change leaves nothing half-applied.
    assert ring.read_key("k")["min_decryption_version"] == 1
    info, warnings = ring.configure_key("k", min_decryption_version=0)
    assert info["min_decryption_version"] == 1 and "forcing minimum to 1" in warnings[0]
    info, _ = ring.configure_key("k", min_decryption_version=2, min_encryption_version=0)
    assert (info["min_decryption_version"], info["min_encryption_version"]) == (2, 0)
    with pytest.raises(KeyNotFoundError):
        ring.configure_key("nope", deletion_allowed=True)


def test_trim_deletes_versions_within_vaults_rules(ring: Keyring) -> None:
    cts = [ring.encrypt("k", b"x").ciphertext]
    for _ in range(3):
        ring.rotate_key("k")
        cts.append(ring.encrypt("k", b"x").ciphertext)
    with pytest.raises(TransitError, match="minimum encryption version is not set"):
        ring.trim_key("k", 2)
    ring.configure_key("k", min_decryption_version=3, min_encryption_version=4)
    with pytest.raises(TransitError, match="greater than minimum decryption version"):
        ring.trim_key("k", 4)
    with pytest.raises(TransitError, match="should be positive"):
        ring.trim_key("k", 0)
    info = ring.trim_key("k", 3)
    assert set(info["keys"]) == {"3", "4"} and info["min_available_version"] == 3
    assert len(material(ring, "k")) == 2
    assert ring.decrypt("k", cts[2]) == b"x"
    with pytest.raises(TransitError, match="cannot be decremented"):
        ring.trim_key("k", 2)
    with pytest.raises(TransitError, match="versions below 3 were trimmed"):
        ring.configure_key("k", min_decryption_version=2)


def test_delete_needs_deletion_allowed(ring: Keyring) -> None:
    ring.create_key("k")
    with pytest.raises(TransitError, match="deletion is not allowed for this key"):
        ring.delete_key("k")
    ring.configure_key("k", deletion_allowed=True)
    ring.delete_key("k")
    assert ring.list_keys() == []
    with pytest.raises(TransitError, match="not found"):
        ring.delete_key("k")


def test_create_existing_key_is_a_no_op(ring: Keyring) -> None:
    first, created = ring.create_key("k")
    again, created_again = ring.create_key("k", "chacha20-poly1305")
    assert created and not created_again
    assert again == first  # type and versions untouched, as in Vault


@pytest.mark.parametrize(
    ("key_type", "message"),
    [("aes512-gcm", "^unknown key type aes512-gcm$"), ("rsa-2048", "not supported by cloudless")],
)
def test_unsupported_key_types(ring: Keyring, key_type: str, message: str) -> None:
    with pytest.raises(TransitError, match=message):
        ring.create_key("k", key_type)


@pytest.mark.parametrize("name", ["", "-x", "x-", "a/b", "a b", "ü", "x" * 257])
def test_key_names_are_validated(ring: Keyring, name: str) -> None:
    with pytest.raises(TransitError, match="invalid key name"):
        ring.create_key(name)


def test_data_keys(ring: Keyring) -> None:
    ring.create_key("k")
    for bits in (128, 256, 512):
        key = ring.generate_data_key("k", bits)
        assert len(key.plaintext) == bits // 8
        assert ring.decrypt("k", key.ciphertext) == key.plaintext
    with pytest.raises(TransitError, match="invalid bits; must be 128, 256, or 512"):
        ring.generate_data_key("k", 64)
    with pytest.raises(KeyNotFoundError):
        ring.generate_data_key("missing")


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (3600, 3600),
        ("3600", 3600),
        ("720h", 720 * 3600),
        ("1h30m", 5400),
        ("30d", 30 * 86400),
        ("1.5h", 5400),
        ("90s", 90),
        ("0", 0),
        (0, 0),
    ],
)
def test_vault_durations(value: object, seconds: int) -> None:
    assert parse_vault_duration(value) == seconds


@pytest.mark.parametrize("value", ["abc", "1y", "h", "", True, [1], "1h 30m"])
def test_bad_durations_name_the_field(value: object) -> None:
    with pytest.raises(TransitError, match='field "auto_rotate_period"'):
        parse_vault_duration(value)


def test_auto_rotate_period_limits(ring: Keyring) -> None:
    ring.create_key("k")
    with pytest.raises(TransitError, match="0 to disable or at least an hour"):
        ring.configure_key("k", auto_rotate_period=60)
    with pytest.raises(TransitError, match="cannot be negative"):
        ring.configure_key("k", auto_rotate_period=-3600)
    with pytest.raises(TransitError, match="at least an hour"):
        ring.create_key("j", auto_rotate_period=5)


def test_auto_rotation_follows_the_clock() -> None:
    clock = FakeClock()
    ring = Keyring(clock=clock)
    ring.create_key("hourly", auto_rotate_period=MIN_AUTO_ROTATE_SECONDS)
    ring.create_key("manual")
    assert ring.rotate_due() == []
    clock.advance(MIN_AUTO_ROTATE_SECONDS - 1)
    assert ring.rotate_due() == []
    clock.advance(1)
    assert ring.rotate_due() == [("hourly", 2)]
    assert ring.rotate_due() == []  # the period counts from the new version
    clock.advance(10 * MIN_AUTO_ROTATE_SECONDS)  # long downtime: one rotation, not ten
    assert ring.rotate_due() == [("hourly", 3)]
    assert ring.read_key("manual")["latest_version"] == 1
    assert ring.read_key("hourly")["keys"]["3"] == int(clock.now)


# --------------------------------------------------------------------------- property


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.binary(max_size=512), st.binary(max_size=64), st.booleans()),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from(sorted(KEY_TYPES)),
)
def test_round_trip_across_rotations(
    messages: list[tuple[bytes, bytes, bool]], key_type: str
) -> None:
    """Whatever was encrypted under any version decrypts to the same bytes later, and
    rewrapping to the latest version preserves it too."""
    ring = Keyring()
    ring.create_key("p", key_type)
    sealed = []
    for plaintext, aad, rotate_after in messages:
        ciphertext = ring.encrypt("p", plaintext, associated_data=aad).ciphertext
        sealed.append((ciphertext, plaintext, aad))
        if rotate_after:
            ring.rotate_key("p")
    latest = ring.read_key("p")["latest_version"]
    for ciphertext, plaintext, aad in sealed:
        assert ring.decrypt("p", ciphertext, associated_data=aad) == plaintext
        rewrapped = ring.rewrap("p", ciphertext, associated_data=aad)
        assert rewrapped.key_version == latest
        assert ring.decrypt("p", rewrapped.ciphertext, associated_data=aad) == plaintext


def test_concurrent_encrypts_during_rotation(ring: Keyring) -> None:
    ring.create_key("k")
    errors: list[BaseException] = []
    outputs: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        try:
            for j in range(200):
                data = f"{i}-{j}".encode()
                ct = ring.encrypt("k", data).ciphertext
                with lock:
                    outputs.append((ct, data))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for _ in range(20):
        ring.rotate_key("k")
    for t in threads:
        t.join()
    assert not errors
    assert all(ring.decrypt("k", ct) == data for ct, data in outputs)


# --------------------------------------------------------------------------- sealing


@pytest.fixture
def seal_key(tmp_path: Path) -> bytes:
    return load_or_create_seal_key(tmp_path / "seal.key")


def test_seal_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "seal.key"
    key = load_or_create_seal_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert base64.b64decode(path.read_bytes().strip()) == key
    assert load_or_create_seal_key(path) == key


def test_seal_key_file_forms_and_errors(tmp_path: Path) -> None:
    raw = tmp_path / "raw.key"
    raw.write_bytes(b"\x07" * 32)
    raw.chmod(0o600)
    assert load_or_create_seal_key(raw) == b"\x07" * 32
    short = tmp_path / "short.key"
    short.write_bytes(b"too short")
    short.chmod(0o600)
    with pytest.raises(SealError, match="exactly 32 bytes"):
        load_or_create_seal_key(short)
    raw.chmod(0o644)
    with pytest.raises(SealError, match="group/other"):
        load_or_create_seal_key(raw)
    with pytest.raises(SealError, match="does not exist"):
        load_or_create_seal_key(tmp_path / "absent.key", create=False)


def test_keyring_survives_reopen(tmp_path: Path, seal_key: bytes) -> None:
    path = tmp_path / "keyring.sealed"
    ring = Keyring.open(path, seal_key)
    ct1 = ring.encrypt("k", b"first", associated_data=b"ad").ciphertext
    ring.rotate_key("k")
    ring.configure_key("k", min_decryption_version=1, deletion_allowed=True)
    ct2 = ring.encrypt("k", b"second").ciphertext
    info = ring.read_key("k")

    again = Keyring.open(path, seal_key)
    assert again.read_key("k") == info
    assert again.decrypt("k", ct1, associated_data=b"ad") == b"first"
    assert again.decrypt("k", ct2) == b"second"


def test_keyring_file_is_private_and_holds_no_key_material(tmp_path: Path, seal_key: bytes) -> None:
    path = tmp_path / "keyring.sealed"
    ring = Keyring.open(path, seal_key)
    ring.create_key("payments-master-key")
    ring.rotate_key("payments-master-key")
    blob = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for key in material(ring, "payments-master-key"):
        assert key not in blob
        assert base64.b64encode(key) not in blob
        assert key.hex().encode() not in blob
    assert b"payments-master-key" not in blob  # even names are sealed
    assert seal_key not in blob and base64.b64encode(seal_key) not in blob
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no leftovers


def test_wrong_seal_key_refuses_and_leaves_the_file_alone(tmp_path: Path, seal_key: bytes) -> None:
    path = tmp_path / "keyring.sealed"
    Keyring.open(path, seal_key).create_key("k")
    before = path.read_bytes()
    with pytest.raises(SealError, match="sealed with a different seal key"):
        Keyring.open(path, os.urandom(32))
    assert path.read_bytes() == before


def test_corrupt_keyring_refuses_and_leaves_the_file_alone(tmp_path: Path, seal_key: bytes) -> None:
    path = tmp_path / "keyring.sealed"
    Keyring.open(path, seal_key).create_key("k")
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(SealError, match="corrupt or was tampered with"):
        Keyring.open(path, seal_key)
    assert path.read_bytes() == bytes(blob)
    path.write_bytes(b"{}")
    with pytest.raises(SealError, match="not a cloudless-transit keyring"):
        Keyring.open(path, seal_key)
    path.write_bytes(seal(b'{"format": 1, "keys": {"k": {"type": "x"}}}', seal_key))
    with pytest.raises(SealError, match="decrypted but is not valid"):
        Keyring.open(path, seal_key)


def test_seal_round_trip_binds_the_header(seal_key: bytes) -> None:
    blob = seal(b"payload", seal_key)
    assert unseal(blob, seal_key) == b"payload"
    forged = blob[:4] + bytes([blob[4]]) + bytes(8) + blob[13:]  # swap the key id
    with pytest.raises(SealError):
        unseal(forged, seal_key)


def test_failed_write_rolls_back(tmp_path: Path, seal_key: bytes) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    ring = Keyring(SealedFile(blocker / "keyring.sealed", seal_key))
    with pytest.raises(Exception, match="cannot write"):
        ring.create_key("k")
    assert ring.list_keys() == []  # memory never runs ahead of disk


class _SlowStore(SealedFile):
    """A store whose save blocks until released: a slow fsync, held still for the test."""

    def __init__(self, path: Path, seal_key: bytes) -> None:
        super().__init__(path, seal_key)
        self.saving = threading.Event()
        self.release = threading.Event()

    def save(self, state: dict[str, object]) -> None:
        self.saving.set()
        assert self.release.wait(10)
        super().save(state)


def test_readers_do_not_wait_for_a_writers_disk_write(tmp_path: Path, seal_key: bytes) -> None:
    store = _SlowStore(tmp_path / "keyring.sealed", seal_key)
    ring = Keyring(store)
    store.release.set()
    ring.create_key("k")
    old = ring.encrypt("k", b"x", upsert_type=None).ciphertext
    store.release.clear()
    store.saving.clear()
    writer = threading.Thread(target=ring.rotate_key, args=("k",))
    writer.start()
    assert store.saving.wait(10)
    # The rotation is on its way to disk: readers neither block nor see version 2 yet.
    assert ring.read_key("k")["latest_version"] == 1
    assert ring.encrypt("k", b"y", upsert_type=None).key_version == 1
    assert ring.decrypt("k", old) == b"x"
    assert ring.list_keys() == ["k"] and "k" in ring and "other" not in ring
    store.release.set()
    writer.join(10)
    assert ring.read_key("k")["latest_version"] == 2
    assert ring.encrypt("k", b"z", upsert_type=None).key_version == 2
