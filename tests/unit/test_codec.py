"""The payload codec's cryptography, with an in-memory key source instead of transit."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import WorkflowSerializationContext
from temporalio.exceptions import ApplicationError
from typer.testing import CliRunner

from cloudless.cli.main import app as cli_app
from cloudless.codec import (
    ENCODING,
    ENV_INSECURE_PLAINTEXT,
    FORMAT_V1,
    META_ENCODING,
    META_FORMAT,
    META_KEY_ID,
    REJECTED_ENCODING,
    REJECTED_ERROR_TYPE,
    DataKey,
    ForeignPayloadError,
    NoTransitCodec,
    PayloadCodecError,
    TransitPayloadCodec,
    data_converter,
    require_codec,
    transit_codec,
)
from cloudless.errors import ConfigError
from cloudless.pki import write_private_file
from cloudless.transit.client import transit_settings


class MemoryKeys:
    """Transit's datakey/decrypt in memory: wraps data keys under one master key."""

    key_name = "cloudless-payloads"

    def __init__(self) -> None:
        self._master = AESGCM(AESGCM.generate_key(256))
        self.issued = 0
        self.unwrapped = 0
        self.down = False

    async def new_key(self) -> DataKey:
        self.issued += 1
        plaintext = os.urandom(32)
        nonce = os.urandom(12)
        wrapped = (
            "vault:v1:"
            + base64.b64encode(nonce + self._master.encrypt(nonce, plaintext, None)).decode()
        )
        return DataKey(plaintext, wrapped)

    async def unwrap(self, wrapped: str) -> bytes:
        self.unwrapped += 1
        if self.down:
            raise PayloadCodecError("cannot unwrap with transit: connection refused")
        raw = base64.b64decode(wrapped.removeprefix("vault:v1:"))
        try:
            return self._master.decrypt(raw[:12], raw[12:], None)
        except Exception as err:  # what transit answers with 400 (a foreign key)
            raise ForeignPayloadError("cipher: message authentication failed") from err


def payload(data: bytes, encoding: bytes = b"json/plain") -> Payload:
    return Payload(metadata={"encoding": encoding}, data=data)


async def test_round_trip_hides_data_and_inner_metadata() -> None:
    codec = TransitPayloadCodec(MemoryKeys())
    original = payload(b'{"secret": "hunter2"}')
    (sealed,) = await codec.encode([original])
    assert sealed.metadata[META_ENCODING] == ENCODING
    assert sealed.metadata[META_FORMAT] == FORMAT_V1
    assert sealed.metadata[META_KEY_ID].startswith(b"vault:v1:")
    assert b"hunter2" not in sealed.SerializeToString()
    assert b"json/plain" not in sealed.SerializeToString()
    assert await codec.decode([sealed]) == [original]


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=4096), encoding=st.binary(min_size=1, max_size=32))
async def test_any_payload_bytes_round_trip(data: bytes, encoding: bytes) -> None:
    codec = TransitPayloadCodec(MemoryKeys())
    original = payload(data, encoding)
    sealed = await codec.encode([original])
    assert await codec.decode(sealed) == [original]


async def test_another_process_decodes_through_transit_and_caches_the_key() -> None:
    keys = MemoryKeys()
    writer, reader = TransitPayloadCodec(keys), TransitPayloadCodec(keys)
    sealed = await writer.encode([payload(b"a"), payload(b"b")])
    assert [p.data for p in await reader.decode(sealed)] == [b"a", b"b"]
    assert await reader.decode(sealed)
    assert keys.unwrapped == 1  # one unwrap for the key, then the LRU cache
    assert await writer.decode(sealed) and keys.unwrapped == 1  # the writer knows its key


def refusal(p: Payload) -> str:
    """The reason a decoded payload was refused (it must be the refusal marker)."""
    assert p.metadata[META_ENCODING] == REJECTED_ENCODING, p
    return p.data.decode()


async def test_unencrypted_payloads_are_refused_but_shown_for_display() -> None:
    codec = TransitPayloadCodec(MemoryKeys())
    plain = [payload(b'"sent without transit"'), Payload(metadata={"encoding": b"binary/null"})]
    assert all("not encrypted" in refusal(p) for p in await codec.decode(plain))
    assert await codec.for_display().decode(plain) == plain  # the UI shows history as is


@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag"])
async def test_tampering_is_detected(where: str) -> None:
    codec = TransitPayloadCodec(MemoryKeys())
    (sealed,) = await codec.encode([payload(b"value")])
    data = bytearray(sealed.data)
    index = {"nonce": 0, "ciphertext": 12, "tag": len(data) - 1}[where]
    data[index] ^= 0x01
    sealed.data = bytes(data)
    (refused,) = await codec.decode([sealed])
    assert "failed authentication" in refusal(refused)
    with pytest.raises(PayloadCodecError, match="failed authentication"):
        await codec.for_display().decode([sealed])


async def test_truncated_and_unknown_format_are_refused() -> None:
    codec = TransitPayloadCodec(MemoryKeys())
    (sealed,) = await codec.encode([payload(b"value")])
    short = Payload(metadata=dict(sealed.metadata), data=sealed.data[:20])
    future = Payload(metadata={**sealed.metadata, META_FORMAT: b"v99"}, data=sealed.data)
    truncated, unknown = await codec.decode([short, future])
    assert "truncated" in refusal(truncated) and "format" in refusal(unknown)


async def test_wrong_key_id_fails_even_when_the_key_unwraps() -> None:
    keys = MemoryKeys()
    codec = TransitPayloadCodec(keys, max_key_uses=1)
    first, second = await codec.encode([payload(b"one"), payload(b"two")])
    assert first.metadata[META_KEY_ID] != second.metadata[META_KEY_ID]
    swapped = Payload(
        metadata={**first.metadata, META_KEY_ID: second.metadata[META_KEY_ID]}, data=first.data
    )
    (refused,) = await TransitPayloadCodec(keys).decode([swapped])
    assert "failed authentication" in refusal(refused)


async def test_key_from_another_transit_is_refused() -> None:
    (sealed,) = await TransitPayloadCodec(MemoryKeys()).encode([payload(b"x")])
    (refused,) = await TransitPayloadCodec(MemoryKeys()).decode([sealed])
    assert "authentication failed" in refusal(refused)


async def test_transit_unreachable_is_an_error_not_a_refusal() -> None:
    """A refusal drops a message for good: only a payload proven foreign is refused;
    when transit cannot answer, decoding fails and Temporal retries the task."""
    keys = MemoryKeys()
    (sealed,) = await TransitPayloadCodec(keys).encode([payload(b"x")])
    keys.down = True
    with pytest.raises(PayloadCodecError, match="connection refused"):
        await TransitPayloadCodec(keys).decode([sealed])


async def test_a_refused_payload_converts_to_a_non_retryable_error() -> None:
    """What a workflow sees for a refused input, signal, update or query argument."""
    converter = data_converter(TransitPayloadCodec(MemoryKeys()))
    plain = pydantic_data_converter.payload_converter.to_payloads([{"op": "injected"}])
    with pytest.raises(ApplicationError) as raised:
        await converter.decode(plain, [dict])
    assert raised.value.type == REJECTED_ERROR_TYPE and raised.value.non_retryable
    assert "payload refused: it is not encrypted" in str(raised.value)


async def test_context_views_share_one_data_key() -> None:
    """The SDK makes a view of the codec per workflow and activity: they must not each
    fetch a data key (that would be a transit call per task)."""
    keys = MemoryKeys()
    codec = TransitPayloadCodec(keys)
    first = codec.with_context(WorkflowSerializationContext("default", "workload/a"))
    second = codec.with_context(WorkflowSerializationContext("default", "workload/b"))
    (a,), (b,) = await first.encode([payload(b"a")]), await second.encode([payload(b"b")])
    assert keys.issued == 1 and a.metadata[META_KEY_ID] == b.metadata[META_KEY_ID]
    assert "not encrypted" in refusal((await first.decode([payload(b"x")]))[0])


async def test_key_rotates_by_count() -> None:
    keys = MemoryKeys()
    codec = TransitPayloadCodec(keys, max_key_uses=3)
    sealed = await codec.encode([payload(bytes([i])) for i in range(7)])
    ids = [p.metadata[META_KEY_ID] for p in sealed]
    assert keys.issued == 3
    assert ids[0] == ids[1] == ids[2] != ids[3] == ids[4] == ids[5] != ids[6]
    assert [p.data for p in await TransitPayloadCodec(keys).decode(sealed)] == [
        bytes([i]) for i in range(7)
    ]


async def test_key_rotates_by_age() -> None:
    now = [0.0]
    keys = MemoryKeys()
    codec = TransitPayloadCodec(keys, max_key_age=60, clock=lambda: now[0])
    (a,) = await codec.encode([payload(b"a")])
    now[0] = 59.0
    (b,) = await codec.encode([payload(b"b")])
    now[0] = 60.0
    (c,) = await codec.encode([payload(b"c")])
    assert a.metadata[META_KEY_ID] == b.metadata[META_KEY_ID] != c.metadata[META_KEY_ID]
    assert keys.issued == 2


async def test_decode_cache_is_bounded() -> None:
    keys = MemoryKeys()
    writer = TransitPayloadCodec(keys, max_key_uses=1)
    sealed = await writer.encode([payload(bytes([i])) for i in range(4)])
    reader = TransitPayloadCodec(keys, cache_size=2)
    await reader.decode(sealed)
    await reader.decode(sealed[2:])  # still cached
    assert keys.unwrapped == 4
    await reader.decode(sealed[:1])  # evicted, unwrapped again
    assert keys.unwrapped == 5


async def test_without_transit_encrypted_payloads_get_a_clear_error() -> None:
    (sealed,) = await TransitPayloadCodec(MemoryKeys()).encode([payload(b"x")])
    plain = payload(b"y")
    assert await NoTransitCodec().decode([plain]) == [plain]
    with pytest.raises(PayloadCodecError, match="VAULT_ADDR/VAULT_TOKEN"):
        await NoTransitCodec().decode([sealed])


async def test_data_converter_encrypts_values_and_failure_messages() -> None:
    converter = data_converter(TransitPayloadCodec(MemoryKeys()))
    (encoded,) = await converter.encode([{"marker": "plaintext-marker"}])
    assert b"plaintext-marker" not in encoded.SerializeToString()
    assert await converter.decode([encoded], [dict]) == [{"marker": "plaintext-marker"}]
    failure = Failure()
    await converter.encode_failure(ApplicationError("plaintext-marker in a message"), failure)
    assert b"plaintext-marker" not in failure.SerializeToString()
    decoded = await converter.decode_failure(failure)
    assert "plaintext-marker" in str(decoded)


def test_transit_settings_env_first_then_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    assert transit_settings(tmp_path) is None
    assert transit_codec(tmp_path) is None
    directory = tmp_path / "transit"
    write_private_file(directory / "root-token", b"clt.embedded\n")
    assert transit_settings(tmp_path) is None  # no address published: not running here
    (directory / "address").write_text("http://127.0.0.1:18200\n")
    found = transit_settings(tmp_path)
    assert found is not None
    assert (found.addr, found.token, found.source) == (
        "http://127.0.0.1:18200",
        "clt.embedded",
        str(directory),
    )
    assert "clt.embedded" not in repr(found)
    assert isinstance(transit_codec(tmp_path), TransitPayloadCodec)
    monkeypatch.setenv("VAULT_TOKEN", "s.vault")
    monkeypatch.setenv("VAULT_ADDR", "https://vault.example:8200")
    env = transit_settings(tmp_path)
    assert env is not None and (env.addr, env.token) == ("https://vault.example:8200", "s.vault")
    monkeypatch.delenv("VAULT_TOKEN")
    with pytest.raises(ConfigError, match="VAULT_TOKEN is not"):
        transit_settings(tmp_path)


# ----------------------------------------------------------------- fail closed


@pytest.fixture
def no_transit(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("VAULT_ADDR", "VAULT_TOKEN", ENV_INSECURE_PLAINTEXT):
        monkeypatch.delenv(var, raising=False)


def test_require_codec_fails_closed_with_the_fix() -> None:
    codec = TransitPayloadCodec(MemoryKeys())
    assert require_codec(codec, who="x") is codec
    assert require_codec(codec, who="x", insecure_plaintext=True) is codec
    with pytest.raises(ConfigError) as err:
        require_codec(None, who="cloudless-coordinator")
    message = str(err.value)
    assert message.startswith("cloudless-coordinator refuses to run without the payload codec")
    assert "VAULT_ADDR and VAULT_TOKEN" in message and "cloudless-transit" in message
    assert "--insecure-plaintext-payloads" in message and ENV_INSECURE_PLAINTEXT in message
    assert require_codec(None, who="x", insecure_plaintext=True) is None


def test_cli_refuses_temporal_without_a_codec(tmp_path: Path, no_transit: None) -> None:
    # Temporal is unreachable on purpose: the refusal must come before any connection.
    base = ["--state-dir", str(tmp_path), "--temporal-address", "127.0.0.1:1"]
    refused = CliRunner().invoke(cli_app, [*base, "get", "nodes"])
    assert refused.exit_code == 1
    assert "cloudlessctl refuses to run without the payload codec" in refused.output
    assert "cannot reach Temporal" not in refused.output
    # The opt-out (flag or environment) gets past the check to the connection attempt.
    flagged = CliRunner().invoke(cli_app, ["--insecure-plaintext-payloads", *base, "get", "nodes"])
    assert flagged.exit_code == 1 and "cannot reach Temporal" in flagged.output
    via_env = CliRunner().invoke(
        cli_app, [*base, "get", "nodes"], env={ENV_INSECURE_PLAINTEXT: "1"}
    )
    assert via_env.exit_code == 1 and "cannot reach Temporal" in via_env.output
