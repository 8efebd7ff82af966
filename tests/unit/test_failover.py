"""Failover between coordinators: the pure order and deadline shares
(``policies/failover.py``), and the agent's ``CoordinatorSecrets`` over fake stubs.

The stubs answer, refuse or fail each call as told and record which coordinator got which
call with what deadline; a call that "hangs" moves a fake clock by its deadline and fails
with DEADLINE_EXCEEDED, so deadlines are checked without waiting.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.secretfs import SecretDeliveryError
from agent.secrets import (
    FAILOVER_CODES,
    CoordinatorSecrets,
    CoordinatorsUnreachable,
    SecretSource,
    SecretStore,
)
from cloudless.api import secrets_pb2
from policies.failover import attempt_timeout, failover_order

# ---------------------------------------------------------------------------- the policy


def test_order_starts_at_the_current_one_and_goes_round() -> None:
    assert failover_order(3, 0) == [0, 1, 2]
    assert failover_order(3, 2) == [2, 0, 1]
    assert failover_order(1, 0) == [0]


def test_order_prefers_the_heartbeat_coordinator_unless_it_just_failed() -> None:
    assert failover_order(3, 0, preferred=1) == [1, 2, 0]
    assert failover_order(3, 0, preferred=1, failed={1}) == [0, 1, 2]
    assert failover_order(3, 2, preferred=None, failed={2}) == [2, 0, 1]


@pytest.mark.parametrize(
    ("count", "current", "preferred"), [(0, 0, None), (2, 2, None), (2, 0, -1), (2, 0, 5)]
)
def test_order_rejects_impossible_indexes(count: int, current: int, preferred: int | None) -> None:
    with pytest.raises(ValueError):
        failover_order(count, current, preferred)


@given(
    st.integers(1, 8).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.integers(0, n - 1),
            st.none() | st.integers(0, n - 1),
            st.sets(st.integers(0, n - 1)),
        )
    )
)
def test_every_coordinator_is_tried_exactly_once(
    case: tuple[int, int, int | None, set[int]],
) -> None:
    count, current, preferred, failed = case
    order = failover_order(count, current, preferred, failed)
    assert sorted(order) == list(range(count))
    usable = preferred is not None and preferred not in failed
    assert order[0] == (preferred if usable else current)
    assert all(b == (a + 1) % count for a, b in itertools.pairwise(order))


@given(
    st.floats(-5, 100, allow_nan=False),
    st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=8),
)
def test_attempt_shares_never_overrun_the_deadline(remaining: float, used: list[float]) -> None:
    """However much of its share each attempt uses, the next still fits in what is left."""
    left, spent = remaining, 0.0
    for position, fraction in enumerate(used):
        share = attempt_timeout(left, len(used) - position)
        assert 0.0 <= share <= max(0.0, left)
        spent += share * fraction
        left -= share * fraction
    assert spent <= max(0.0, remaining) + 1e-9


def test_attempt_share_is_an_equal_split_of_the_time_left() -> None:
    assert attempt_timeout(10.0, 2) == 5.0
    assert attempt_timeout(10.0, 1) == 10.0
    assert attempt_timeout(-1.0, 3) == 0.0
    with pytest.raises(ValueError):
        attempt_timeout(1.0, 0)


# ---------------------------------------------------------------------------- the client


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


HANG = "hang"  # the call takes its whole deadline, then DEADLINE_EXCEEDED


@dataclass
class Calls:
    """What every stub was asked, in order: (coordinator, method, deadline)."""

    log: list[tuple[str, str, float]] = field(default_factory=list)

    def where(self) -> list[str]:
        return [address for address, _, _ in self.log]


@dataclass
class FakeCoordinator:
    """A SecretsService stub that fails with the queued outcomes, then answers. Its
    tokens carry its key: ``known_keys`` says whose tokens it accepts."""

    address: str
    calls: Calls
    clock: Clock
    outcomes: list[grpc.StatusCode | str] = field(default_factory=list)
    known_keys: set[str] = field(default_factory=set)
    mints: int = 0

    def __post_init__(self) -> None:
        self.known_keys.add(self.address)

    async def _outcome(self, method: str, timeout: float | None) -> None:
        assert timeout is not None, "every attempt must carry a deadline"
        self.calls.log.append((self.address, method, timeout))
        if not self.outcomes:
            return
        outcome = self.outcomes.pop(0)
        if outcome == HANG:
            self.clock.now += timeout
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        assert isinstance(outcome, grpc.StatusCode)
        raise rpc_error(outcome, f"{self.address} says {outcome.name}")

    async def _mint(
        self, request: secrets_pb2.GenerateAccessTokenRequest, timeout: float | None
    ) -> secrets_pb2.GenerateAccessTokenResponse:
        await self._outcome("GenerateAccessToken", timeout)
        self.mints += 1
        return secrets_pb2.GenerateAccessTokenResponse(
            token=f"{self.address}/tok-{self.mints}", expires_at=2_000_000_000.0
        )

    async def _read(
        self, request: secrets_pb2.GetSecretRequest, timeout: float | None
    ) -> secrets_pb2.GetSecretResponse:
        await self._outcome("GetSecret", timeout)
        if request.token.split("/tok-")[0] not in self.known_keys:
            raise rpc_error(grpc.StatusCode.UNAUTHENTICATED, "access token signature invalid")
        return secrets_pb2.GetSecretResponse(
            data={"served-by": self.address.encode()}, cache_ttl_seconds=300.0
        )

    def GenerateAccessToken(
        self, request: secrets_pb2.GenerateAccessTokenRequest, *, timeout: float | None = None
    ) -> asyncio.Future[secrets_pb2.GenerateAccessTokenResponse]:
        return asyncio.ensure_future(self._mint(request, timeout))

    def GetSecret(
        self, request: secrets_pb2.GetSecretRequest, *, timeout: float | None = None
    ) -> asyncio.Future[secrets_pb2.GetSecretResponse]:
        return asyncio.ensure_future(self._read(request, timeout))


def cluster(*addresses: str) -> tuple[CoordinatorSecrets, dict[str, FakeCoordinator], Calls]:
    calls, clock = Calls(), Clock()
    fakes = {a: FakeCoordinator(a, calls, clock, known_keys={"shared"}) for a in addresses}
    client = CoordinatorSecrets([(a, fakes[a]) for a in addresses], clock=clock)
    return client, fakes, calls


READ = secrets_pb2.GetSecretRequest(namespace="prod", name="db", token="shared/tok-0")
SOURCE = SecretSource("prod", "db", "api")


async def read(client: CoordinatorSecrets, timeout: float | None = 10.0) -> str:
    response = await client.GetSecret(READ, timeout=timeout)
    return response.data["served-by"].decode()


async def test_a_healthy_first_coordinator_answers_alone() -> None:
    client, _, calls = cluster("a", "b")
    assert await read(client) == "a"
    assert calls.log == [("a", "GetSecret", 5.0)]  # its share: half, one other is left


@pytest.mark.parametrize("code", sorted(FAILOVER_CODES, key=str))
async def test_a_coordinator_that_does_not_answer_hands_the_call_on(
    code: grpc.StatusCode,
) -> None:
    client, fakes, calls = cluster("a", "b", "c")
    fakes["a"].outcomes = [code]
    fakes["b"].outcomes = [code]
    assert await read(client) == "c"
    assert calls.where() == ["a", "b", "c"]
    assert client.current == "c"
    calls.log.clear()
    assert await read(client) == "c"  # the next call starts where the last was answered
    assert calls.where() == ["c"]


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.ABORTED,
    ],
)
async def test_an_answer_is_final_even_a_refusal(code: grpc.StatusCode) -> None:
    client, fakes, calls = cluster("a", "b")
    fakes["b"].outcomes = [grpc.StatusCode.UNAVAILABLE]
    await read(client)  # a answers
    fakes["a"].outcomes = [code]
    calls.log.clear()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read(client)
    assert caught.value.code() == code and not isinstance(caught.value, CoordinatorsUnreachable)
    assert calls.where() == ["a"]
    assert client.current == "a"


async def test_when_none_answers_one_line_names_every_coordinator_tried() -> None:
    client, fakes, _ = cluster("10.0.0.1:7444", "10.0.0.2:7444")
    fakes["10.0.0.1:7444"].outcomes = [grpc.StatusCode.UNAVAILABLE]
    fakes["10.0.0.2:7444"].outcomes = [HANG]
    with pytest.raises(CoordinatorsUnreachable) as caught:
        await read(client)
    err = caught.value
    assert err.tried == ["10.0.0.1:7444", "10.0.0.2:7444"] and err.untried == []
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # the last failure's
    details = err.details()
    assert details is not None and "\n" not in details
    assert details == (
        "no coordinator answered: 10.0.0.1:7444: unavailable (10.0.0.1:7444 says "
        "UNAVAILABLE); 10.0.0.2:7444: deadline exceeded (Deadline Exceeded)"
    )
    assert client.current == "10.0.0.1:7444"  # nobody answered: nothing moves


async def test_the_store_turns_it_into_one_transient_delivery_error() -> None:
    client, fakes, _ = cluster("a:1", "b:2")
    fakes["a:1"].outcomes = [grpc.StatusCode.UNAVAILABLE]
    fakes["b:2"].outcomes = [grpc.StatusCode.UNAVAILABLE]
    store = SecretStore(client)
    with pytest.raises(SecretDeliveryError) as caught:
        await store.get(SOURCE)
    message = str(caught.value)
    assert caught.value.transient and "\n" not in message
    assert message.startswith(
        "secret prod/db (audience 'api'): minting an access token failed: secrets service "
        "unreachable: no coordinator answered: a:1: unavailable"
    )
    assert "; b:2: unavailable" in message


async def test_a_hanging_coordinator_gets_its_share_of_the_deadline_not_all_of_it() -> None:
    client, fakes, calls = cluster("a", "b", "c")
    fakes["a"].outcomes = [HANG]
    fakes["b"].outcomes = [HANG]
    start = client._clock()
    assert await read(client, timeout=9.0) == "c"
    assert calls.log == [("a", "GetSecret", 3.0), ("b", "GetSecret", 3.0), ("c", "GetSecret", 3.0)]
    assert client._clock() - start == 6.0


async def test_a_fast_failure_leaves_the_next_coordinator_more_time() -> None:
    client, fakes, calls = cluster("a", "b")
    fakes["a"].outcomes = [grpc.StatusCode.UNAVAILABLE]  # refused at once: no time spent
    assert await read(client, timeout=8.0) == "b"
    assert [t for _, _, t in calls.log] == [4.0, 8.0]


async def test_a_call_without_a_deadline_gets_the_default_one() -> None:
    client, _, calls = cluster("a")
    await read(client, timeout=None)
    assert calls.log == [("a", "GetSecret", 10.0)]


async def test_a_spent_deadline_stops_the_round_and_says_who_was_not_tried() -> None:
    calls, clock = Calls(), Clock()
    fakes = [FakeCoordinator(a, calls, clock) for a in ("a", "b", "c")]
    client = CoordinatorSecrets([(f.address, f) for f in fakes], clock=clock)

    async def hang_past_the_deadline(request: object, timeout: float | None) -> None:
        calls.log.append(("a", "GetSecret", timeout or 0.0))
        clock.now += 100.0  # an attempt that overran its share (a stuck resolver)
        raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    fakes[0]._read = hang_past_the_deadline  # type: ignore[method-assign,assignment]
    with pytest.raises(CoordinatorsUnreachable) as caught:
        await read(client, timeout=6.0)
    assert calls.where() == ["a"]
    assert caught.value.untried == ["b", "c"]
    assert "not tried, the 6s deadline was spent: b, c" in (caught.value.details() or "")


async def test_calls_follow_the_heartbeat_stream() -> None:
    client, _, calls = cluster("a", "b", "c")
    stream: list[str | None] = [None]
    client.follow(lambda: stream[0])
    assert await read(client) == "a"
    stream[0] = "b"
    assert await read(client) == "b"
    stream[0] = "elsewhere:1"  # not a coordinator we know: ignored
    assert await read(client) == "b"
    assert calls.where() == ["a", "b", "b"]


async def test_a_preferred_coordinator_that_failed_is_not_preferred_until_it_answers() -> None:
    client, fakes, calls = cluster("a", "b")
    client.follow(lambda: "a")  # the stream still looks fine, but its secrets calls fail
    fakes["a"].outcomes = [grpc.StatusCode.UNAVAILABLE]
    assert await read(client) == "b"
    assert await read(client) == "b"
    assert calls.where() == ["a", "b", "b"]  # no second attempt at a


async def test_a_token_from_a_coordinator_with_another_key_is_replaced_once() -> None:
    """Coordinators that share the token key (as they must) accept each other's tokens;
    one that does not refuses it, and the store mints a new one there, once."""
    client, fakes, calls = cluster("a", "b")
    store = SecretStore(client)
    assert (await store.get(SOURCE))["served-by"] == b"a"
    store.invalidate("prod/db")
    fakes["a"].outcomes = [grpc.StatusCode.UNAVAILABLE]
    assert (await store.get(SOURCE))["served-by"] == b"b"
    assert [(a, m) for a, m, _ in calls.log] == [
        ("a", "GenerateAccessToken"),
        ("a", "GetSecret"),
        ("a", "GetSecret"),  # a is down now
        ("b", "GetSecret"),  # b refuses a's token ...
        ("b", "GenerateAccessToken"),  # ... so b mints one
        ("b", "GetSecret"),
    ]
    assert (fakes["a"].mints, fakes["b"].mints) == (1, 1)


async def test_a_token_shared_by_both_keys_is_read_elsewhere_without_a_new_mint() -> None:
    client, fakes, _ = cluster("a", "b")
    fakes["b"].known_keys.add("a")  # one token key for the cluster
    store = SecretStore(client)
    await store.get(SOURCE)
    store.invalidate("prod/db")
    fakes["a"].outcomes = [grpc.StatusCode.UNAVAILABLE]
    assert (await store.get(SOURCE))["served-by"] == b"b"
    assert (fakes["a"].mints, fakes["b"].mints) == (1, 0)


async def test_a_failover_between_mint_and_read_still_gets_one_retry() -> None:
    """Minted by a, which then went down; b refuses a's token: minted in this very fetch,
    but by another coordinator, so one new token from b is still worth it."""
    client, fakes, _ = cluster("a", "b")
    store = SecretStore(client)
    original = fakes["a"]._read

    async def down(request: secrets_pb2.GetSecretRequest, timeout: float | None) -> object:
        fakes["a"].outcomes = [grpc.StatusCode.UNAVAILABLE]
        return await original(request, timeout)

    fakes["a"]._read = down  # type: ignore[method-assign,assignment]
    assert (await store.get(SOURCE))["served-by"] == b"b"
    assert (fakes["a"].mints, fakes["b"].mints) == (1, 1)


async def test_a_fresh_token_refused_by_its_own_coordinator_is_final() -> None:
    client, fakes, calls = cluster("a", "b")
    store = SecretStore(client)
    fakes["a"].known_keys.clear()  # a refuses even its own token: a real refusal
    with pytest.raises(SecretDeliveryError, match="reading the secret failed: not authenticated"):
        await store.get(SOURCE)
    assert [(a, m) for a, m, _ in calls.log] == [("a", "GenerateAccessToken"), ("a", "GetSecret")]


async def test_close_closes_every_channel() -> None:
    closed: list[str] = []

    @dataclass
    class Channel:
        name: str

        async def close(self, grace: float | None = None) -> None:
            closed.append(self.name)

    calls, clock = Calls(), Clock()
    client = CoordinatorSecrets(
        [("a", FakeCoordinator("a", calls, clock)), ("b", FakeCoordinator("b", calls, clock))],
        channels=[Channel("a"), Channel("b")],  # type: ignore[list-item]
    )
    await SecretStore(client).close()
    assert closed == ["a", "b"]


def test_a_client_needs_a_coordinator() -> None:
    with pytest.raises(ValueError, match="at least one coordinator"):
        CoordinatorSecrets([])
