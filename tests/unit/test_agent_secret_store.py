"""SecretStore: token reuse, TTL = min(token, secret), invalidation, shared fetches, errors.

The SecretsService here is an in-process fake with the stub's call shape; the real gRPC
path is covered by tests/integration/test_agent_secrets.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc
import pytest

from agent.secretfs import SecretDeliveryError
from agent.secrets import SecretSource, SecretStore
from cloudless.api import secrets_pb2

SOURCE = SecretSource("prod", "db", "api")
WALL0 = 1_700_000_000.0


class Clock:
    """Monotonic and wall clocks that only move when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL0 + (self.now - 100.0)


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


@dataclass
class FakeService:
    clock: Clock
    token_ttl: float = 3600.0
    cache_ttl: float = 300.0
    data: dict[str, bytes] = field(default_factory=lambda: {"password": b"s3cret"})
    mints: int = 0
    reads: int = 0
    mint_error: grpc.aio.AioRpcError | None = None
    read_errors: list[grpc.aio.AioRpcError] = field(default_factory=list)
    gate: asyncio.Event | None = None
    revoked: set[str] = field(default_factory=set)

    async def _mint(
        self, request: secrets_pb2.GenerateAccessTokenRequest
    ) -> secrets_pb2.GenerateAccessTokenResponse:
        self.mints += 1
        if self.mint_error is not None:
            raise self.mint_error
        return secrets_pb2.GenerateAccessTokenResponse(
            token=f"tok-{self.mints}",
            token_id=f"jti-{self.mints}",
            expires_at=self.clock.wall() + self.token_ttl,
        )

    async def _read(self, request: secrets_pb2.GetSecretRequest) -> secrets_pb2.GetSecretResponse:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        if request.token in self.revoked:
            raise rpc_error(grpc.StatusCode.PERMISSION_DENIED, "token revoked")
        if self.read_errors:
            raise self.read_errors.pop(0)
        return secrets_pb2.GetSecretResponse(
            metadata=secrets_pb2.SecretMetadata(
                namespace=request.namespace, name=request.name, version=1
            ),
            data=self.data,
            cache_ttl_seconds=self.cache_ttl,
        )

    def GenerateAccessToken(
        self, request: secrets_pb2.GenerateAccessTokenRequest, *, timeout: float | None = None
    ) -> asyncio.Future[secrets_pb2.GenerateAccessTokenResponse]:
        return asyncio.ensure_future(self._mint(request))

    def GetSecret(
        self, request: secrets_pb2.GetSecretRequest, *, timeout: float | None = None
    ) -> asyncio.Future[secrets_pb2.GetSecretResponse]:
        return asyncio.ensure_future(self._read(request))


def make(**service: object) -> tuple[SecretStore, FakeService, Clock]:
    clock = Clock()
    fake = FakeService(clock, **service)  # type: ignore[arg-type]
    store = SecretStore(fake, clock=clock.monotonic, wall_clock=clock.wall)
    return store, fake, clock


async def test_second_read_is_served_from_memory() -> None:
    store, fake, _ = make()
    first = await store.get(SOURCE)
    second = await store.get(SOURCE)
    assert dict(first) == {"password": b"s3cret"} and second is first
    assert (fake.mints, fake.reads) == (1, 1)
    with pytest.raises(TypeError):
        first["password"] = b"x"  # type: ignore[index]


async def test_entry_expires_after_the_secret_ttl_and_the_token_is_reused() -> None:
    store, fake, clock = make(cache_ttl=300.0)
    await store.get(SOURCE)
    clock.now += 299
    assert store.cached(SOURCE)
    clock.now += 2
    assert not store.cached(SOURCE)
    await store.get(SOURCE)
    assert (fake.mints, fake.reads) == (1, 2)


async def test_ttl_is_capped_by_the_tokens_remaining_lifetime() -> None:
    store, fake, clock = make(token_ttl=120.0, cache_ttl=3600.0)
    await store.get(SOURCE)
    clock.now += 119
    assert store.cached(SOURCE)
    clock.now += 2
    assert not store.cached(SOURCE)
    await store.get(SOURCE)
    assert (fake.mints, fake.reads) == (2, 2)  # the expired token was renewed


async def test_token_is_renewed_shortly_before_it_expires() -> None:
    store, fake, clock = make(token_ttl=600.0, cache_ttl=10.0)
    await store.get(SOURCE)
    clock.now += 500  # secret expired, token still has 100 s (> 30 s margin)
    await store.get(SOURCE)
    assert fake.mints == 1
    clock.now += 80  # 20 s left: inside the renewal margin
    await store.get(SOURCE)
    assert fake.mints == 2


async def test_zero_cache_ttl_means_do_not_keep() -> None:
    store, fake, _ = make(cache_ttl=0.0)
    await store.get(SOURCE)
    await store.get(SOURCE)
    assert fake.reads == 2 and not store.cached(SOURCE)


async def test_invalidate_drops_every_audience_of_the_secret_only() -> None:
    store, fake, _ = make()
    other_audience = SecretSource("prod", "db", "batch")
    other_secret = SecretSource("prod", "cache", "api")
    for source in (SOURCE, other_audience, other_secret):
        await store.get(source)
    assert store.invalidate("prod/db") == 2
    assert not store.cached(SOURCE) and not store.cached(other_audience)
    assert store.cached(other_secret)
    fake.data = {"password": b"rotated"}
    assert (await store.get(SOURCE))["password"] == b"rotated"


async def test_concurrent_reads_share_one_fetch() -> None:
    store, fake, _ = make()
    fake.gate = asyncio.Event()
    waiters = [asyncio.create_task(store.get(SOURCE)) for _ in range(10)]
    await asyncio.sleep(0.01)
    fake.gate.set()
    results = await asyncio.gather(*waiters)
    assert all(r is results[0] for r in results)
    assert (fake.mints, fake.reads) == (1, 1)


async def test_a_cancelled_reader_does_not_cancel_the_shared_fetch() -> None:
    store, fake, _ = make()
    fake.gate = asyncio.Event()
    impatient = asyncio.create_task(store.get(SOURCE))
    patient = asyncio.create_task(store.get(SOURCE))
    await asyncio.sleep(0.01)
    impatient.cancel()
    fake.gate.set()
    assert (await patient)["password"] == b"s3cret"
    assert fake.reads == 1


async def test_invalidation_during_a_fetch_keeps_its_result_out_of_the_cache() -> None:
    store, fake, _ = make()
    fake.gate = asyncio.Event()
    reading = asyncio.create_task(store.get(SOURCE))
    await asyncio.sleep(0.01)
    store.invalidate("prod/db")
    fake.gate.set()
    await reading
    assert not store.cached(SOURCE)


async def test_denied_token_names_secret_audience_and_reason() -> None:
    store, _, _ = make(
        mint_error=rpc_error(grpc.StatusCode.PERMISSION_DENIED, "no replica of a workload")
    )
    with pytest.raises(SecretDeliveryError) as caught:
        await store.get(SOURCE)
    message = str(caught.value)
    assert "secret prod/db (audience 'api')" in message
    assert "minting an access token failed: permission denied: no replica" in message


async def test_missing_secret_is_reported_as_not_found() -> None:
    store, fake, _ = make()
    fake.read_errors = [rpc_error(grpc.StatusCode.NOT_FOUND, "secret prod/db does not exist")]
    with pytest.raises(SecretDeliveryError, match="reading the secret failed: not found"):
        await store.get(SOURCE)
    assert fake.mints == 1  # a fresh token is not retried


async def test_revoked_cached_token_is_replaced_once() -> None:
    store, fake, clock = make(cache_ttl=1.0)
    await store.get(SOURCE)
    clock.now += 2
    fake.revoked.add("tok-1")
    assert (await store.get(SOURCE))["password"] == b"s3cret"
    assert fake.mints == 2


async def test_errors_are_not_cached() -> None:
    store, fake, _ = make()
    fake.read_errors = [rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")]
    with pytest.raises(SecretDeliveryError, match="secrets service unreachable"):
        await store.get(SOURCE)
    assert (await store.get(SOURCE))["password"] == b"s3cret"


async def test_forget_all_empties_the_cache_but_keeps_tokens() -> None:
    store, fake, _ = make()
    await store.get(SOURCE)
    store.forget_all()
    assert not store.cached(SOURCE)
    await store.get(SOURCE)
    assert (fake.mints, fake.reads) == (1, 2)
