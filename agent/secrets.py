"""Secret delivery on the agent: fetch with a scoped token, cache in memory, inject.

:class:`SecretStore` talks to the coordinator's ``SecretsService`` over the agent's mTLS
channel (the node certificate is the caller's identity). For each (secret, audience) it
mints an access token, reads the secret with it and keeps the data in memory only, for
``min(cache_ttl_seconds, token lifetime left)``. Concurrent reads of one secret share one
fetch; an invalidation (from a heartbeat) drops the entry.

:class:`SecretDelivery` resolves a replica's references right before every (re)start:
environment values go into the replica's process (exec) or a tmpfs env file (docker),
volumes become files under :class:`~agent.secretfs.SecretFiles`. Nothing here logs a value
or a token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple, Protocol, Self, TypeVar

import grpc
import structlog

from agent.enroll import GATEWAY_SERVER_NAME, split_addresses
from agent.runtime.base import ReplicaSpec, ResolvedSecrets, SecretMount, SecretVolume
from agent.runtime.registry import capabilities
from agent.secretfs import SecretDeliveryError, SecretFiles, projected_files
from cloudless.api import secrets_pb2, secrets_pb2_grpc
from cloudless.tls import TLSMaterial, secure_channel
from policies.failover import attempt_timeout, failover_order

__all__ = [
    "FAILOVER_CODES",
    "CoordinatorSecrets",
    "CoordinatorsUnreachable",
    "SecretDelivery",
    "SecretSource",
    "SecretStore",
    "SecretsClient",
]

log = structlog.get_logger("cloudless.agent.secrets")

SecretData = Mapping[str, bytes]
Clock = Callable[[], float]

#: Token lifetime the agent asks for; the service caps it.
DEFAULT_TOKEN_TTL = 3600.0
#: A token is renewed this long before it expires (at most a tenth of its lifetime).
TOKEN_RENEW_MARGIN = 30.0
RPC_TIMEOUT = 10.0
#: Codes that say "this token is no good" (revoked, used up): mint a new one, try once more.
_TOKEN_REJECTED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
_REASONS = {
    grpc.StatusCode.PERMISSION_DENIED: "permission denied",
    grpc.StatusCode.UNAUTHENTICATED: "not authenticated",
    grpc.StatusCode.NOT_FOUND: "not found",
    grpc.StatusCode.FAILED_PRECONDITION: "not readable now",
    grpc.StatusCode.UNAVAILABLE: "secrets service unreachable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "secrets service timed out",
}


_TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
)
#: "This coordinator did not answer": the call goes to the next one. UNAVAILABLE is a
#: refused or broken connection, a coordinator shutting down (its GOAWAY cancels calls in
#: flight with this code) or one that cannot reach Temporal; DEADLINE_EXCEEDED is one
#: that hangs. Both calls are safe to repeat: minting writes nothing durable and a node's
#: tokens are not use-limited. Every other code is an answer (denied, not found, a bad
#: request, CANCELLED by our own caller), and another coordinator would answer the same.
FAILOVER_CODES: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)
_WHITESPACE = re.compile(r"\s+")
_DETAILS_LIMIT = 200
_T = TypeVar("_T")


class SecretsClient(Protocol):
    """The two SecretsService calls a node makes (a ``SecretsServiceStub`` satisfies it)."""

    def GenerateAccessToken(
        self, request: secrets_pb2.GenerateAccessTokenRequest, *, timeout: float | None = None
    ) -> Awaitable[secrets_pb2.GenerateAccessTokenResponse]: ...

    def GetSecret(
        self, request: secrets_pb2.GetSecretRequest, *, timeout: float | None = None
    ) -> Awaitable[secrets_pb2.GetSecretResponse]: ...


class SecretSource(NamedTuple):
    """What a token is scoped to: one secret, read for one audience."""

    namespace: str
    name: str
    audience: str

    @property
    def secret(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class _Token:
    value: str
    renew_at: float  # monotonic
    expires_at: float  # monotonic
    issuer: str = ""  # the coordinator that minted it ("" when the client does not say)


@dataclass
class _Entry:
    data: SecretData
    expires_at: float  # monotonic


# ---------------------------------------------------------------------------- failover


def _describe(err: grpc.aio.AioRpcError) -> str:
    """``unavailable (connection refused)``: a gRPC failure on one short line."""
    details = _WHITESPACE.sub(" ", err.details() or "").strip()
    if len(details) > _DETAILS_LIMIT:
        details = details[: _DETAILS_LIMIT - 3] + "..."
    what = err.code().name.lower().replace("_", " ")
    return f"{what} ({details})" if details else what


class CoordinatorsUnreachable(grpc.aio.AioRpcError):
    """No coordinator answered one call; the details name each one tried and why, and
    any the deadline left no time for. The code is the last failure's."""

    def __init__(
        self,
        failures: Sequence[tuple[str, grpc.aio.AioRpcError]],
        untried: Sequence[str],
        budget: float,
    ) -> None:
        self.tried = [address for address, _ in failures]
        self.untried = list(untried)
        parts = [f"{address}: {_describe(err)}" for address, err in failures]
        if untried:
            parts.append(f"not tried, the {budget:g}s deadline was spent: {', '.join(untried)}")
        code = failures[-1][1].code() if failures else grpc.StatusCode.DEADLINE_EXCEEDED
        super().__init__(
            code,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            "no coordinator answered: " + "; ".join(parts),
            None,
        )


class CoordinatorSecrets:
    """The SecretsService calls over every coordinator the node knows, failing over.

    Each call starts at the coordinator the heartbeat stream is connected to (see
    :meth:`follow`) unless that one just failed a call, else at the last one that
    answered, and goes round the list: a coordinator that does not answer
    (:data:`FAILOVER_CODES`) hands the call to the next. Every coordinator is asked at
    most once per call, each attempt gets an equal share of the time left
    (:func:`policies.failover.attempt_timeout`), and when none answers the call raises
    :class:`CoordinatorsUnreachable` naming each. Any other error is an answer and is
    raised as it is.

    Args:
        targets: ``(address, stub)`` per coordinator, in the node's order.
        channels: Closed by :meth:`close` (the stubs' channels, when this client made them).
        clock: Monotonic seconds, for deadlines (injectable for tests).
        default_timeout: The deadline of a call that brings none.
    """

    def __init__(
        self,
        targets: Sequence[tuple[str, SecretsClient]],
        *,
        channels: Sequence[grpc.aio.Channel] = (),
        clock: Clock = time.monotonic,
        default_timeout: float = RPC_TIMEOUT,
    ) -> None:
        if not targets:
            raise ValueError("at least one coordinator address is required")
        self._targets = list(targets)
        self._index = {address: i for i, (address, _) in enumerate(self._targets)}
        self._channels = list(channels)
        self._clock = clock
        self._default_timeout = default_timeout
        self._current = 0
        #: Coordinators whose last attempt failed: not preferred until one answers again.
        self._failed: set[int] = set()
        self._preferred: Callable[[], str | None] = lambda: None

    @classmethod
    def connect(cls, addresses: str | Sequence[str], material: TLSMaterial) -> Self:
        """One mTLS channel per coordinator agent gateway, where the node certificate
        identifies the caller. Channels connect on their first call."""
        ordered = split_addresses(addresses)
        if not ordered:
            raise ValueError("at least one coordinator address is required")
        channels = [
            secure_channel(address, GATEWAY_SERVER_NAME, material.ca_pem, material)
            for address in ordered
        ]
        stubs: list[tuple[str, SecretsClient]] = [
            (address, secrets_pb2_grpc.SecretsServiceStub(channel))
            for address, channel in zip(ordered, channels, strict=True)
        ]
        return cls(stubs, channels=channels)

    @property
    def current(self) -> str:
        """The coordinator the last answered call went to (the first, before any)."""
        return self._targets[self._current][0]

    def follow(self, preferred: Callable[[], str | None]) -> None:
        """Start each call at ``preferred()`` (the heartbeat stream's coordinator; None
        while it has none): the node's stream shows it answers, and calls follow the
        stream when it moves. An address not in the list is ignored."""
        self._preferred = preferred

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(grace=None)

    def GenerateAccessToken(
        self, request: secrets_pb2.GenerateAccessTokenRequest, *, timeout: float | None = None
    ) -> Awaitable[secrets_pb2.GenerateAccessTokenResponse]:
        return self._call(
            "GenerateAccessToken",
            lambda stub, t: stub.GenerateAccessToken(request, timeout=t),
            timeout,
        )

    def GetSecret(
        self, request: secrets_pb2.GetSecretRequest, *, timeout: float | None = None
    ) -> Awaitable[secrets_pb2.GetSecretResponse]:
        return self._call("GetSecret", lambda stub, t: stub.GetSecret(request, timeout=t), timeout)

    async def _call(
        self,
        method: str,
        send: Callable[[SecretsClient, float], Awaitable[_T]],
        timeout: float | None,
    ) -> _T:
        budget = self._default_timeout if timeout is None else timeout
        deadline = self._clock() + budget
        preferred = self._index.get(self._preferred() or "")
        order = failover_order(len(self._targets), self._current, preferred, self._failed)
        failures: list[tuple[str, grpc.aio.AioRpcError]] = []
        for position, index in enumerate(order):
            share = attempt_timeout(deadline - self._clock(), len(order) - position)
            if share <= 0:
                break
            address, stub = self._targets[index]
            try:
                response = await send(stub, share)
            except grpc.aio.AioRpcError as err:
                if err.code() not in FAILOVER_CODES:
                    self._answered(index)  # an answer, if not the one we wanted
                    raise
                self._failed.add(index)
                failures.append((address, err))
                log.info(
                    "secrets.coordinator_failed",
                    method=method,
                    coordinator=address,
                    code=err.code().name,
                    left=len(order) - position - 1,
                )
                continue
            if index != self._current:
                log.info("secrets.coordinator_switched", coordinator=address, method=method)
            self._answered(index)
            return response
        untried = [self._targets[i][0] for i in order[len(failures) :]]
        raise CoordinatorsUnreachable(failures, untried, budget)

    def _answered(self, index: int) -> None:
        self._current = index
        self._failed.discard(index)


def _error(source: SecretSource, step: str, err: grpc.aio.AioRpcError) -> SecretDeliveryError:
    """Which secret, which audience, which step, and why, in one line."""
    reason = _REASONS.get(err.code(), err.code().name.lower().replace("_", " "))
    details = err.details() or err.code().name
    return SecretDeliveryError(
        f"secret {source.secret} (audience {source.audience!r}): {step} failed: "
        f"{reason}: {details}",
        transient=err.code() in _TRANSIENT,
    )


class SecretStore:
    """Fetches secrets for this node and caches them in memory only.

    Args:
        client: The SecretsService: a :class:`CoordinatorSecrets` (the store closes it
            in :meth:`close`), or any object with the stub's two calls.
        clock: Monotonic seconds, for TTLs (injectable for tests).
        wall_clock: Unix seconds, to read the token's ``expires_at``.
        token_ttl: Lifetime to ask for when minting a token.
    """

    def __init__(
        self,
        client: SecretsClient,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        token_ttl: float = DEFAULT_TOKEN_TTL,
        rpc_timeout: float = RPC_TIMEOUT,
    ) -> None:
        self._client = client
        self._clock = clock
        self._wall_clock = wall_clock
        self._token_ttl = token_ttl
        self._timeout = rpc_timeout
        self._tokens: dict[SecretSource, _Token] = {}
        self._cache: dict[SecretSource, _Entry] = {}
        self._inflight: dict[SecretSource, asyncio.Task[SecretData]] = {}
        # Bumped by invalidate(): a fetch that started before must not fill the cache.
        self._epochs: dict[str, int] = {}

    @classmethod
    def connect(cls, addresses: str | Sequence[str], material: TLSMaterial) -> SecretStore:
        """A store on its own mTLS channels to the coordinators' agent ports (failing over
        between them in the given order), where the node certificate identifies the
        caller."""
        return cls(CoordinatorSecrets.connect(addresses, material))

    async def close(self) -> None:
        self._cache.clear()
        self._tokens.clear()
        if isinstance(self._client, CoordinatorSecrets):
            await self._client.close()

    def _coordinator(self) -> str:
        """Which coordinator calls go to now ("" when the client does not say)."""
        return self._client.current if isinstance(self._client, CoordinatorSecrets) else ""

    def cached(self, source: SecretSource) -> bool:
        entry = self._cache.get(source)
        return entry is not None and entry.expires_at > self._clock()

    async def get(self, source: SecretSource) -> SecretData:
        """The secret's data: from memory while fresh, else one shared fetch."""
        self._purge_expired()
        entry = self._cache.get(source)
        if entry is not None:
            return entry.data
        task = self._inflight.get(source)
        if task is None:
            task = asyncio.create_task(self._fetch(source), name=f"secret-{source.secret}")
            self._inflight[source] = task
            task.add_done_callback(lambda done: self._fetched(source, done))
        # Shielded: one caller giving up must not cancel the fetch the others wait for.
        return await asyncio.shield(task)

    def invalidate(self, secret: str) -> int:
        """Drop ``<namespace>/<name>`` (every audience); returns how many entries went."""
        self._epochs[secret] = self._epochs.get(secret, 0) + 1
        gone = [source for source in self._cache if source.secret == secret]
        for source in gone:
            del self._cache[source]
        return len(gone)

    def forget_all(self) -> None:
        """Drop every cached value (tokens stay valid): after a gap in the heartbeat stream,
        invalidations may have been missed."""
        for secret in {source.secret for source in self._cache}:
            self.invalidate(secret)

    def _fetched(self, source: SecretSource, task: asyncio.Task[SecretData]) -> None:
        if self._inflight.get(source) is task:
            del self._inflight[source]
        if not task.cancelled():
            task.exception()  # retrieved here, so a fetch nobody awaits any more is quiet

    def _purge_expired(self) -> None:
        """Values leave memory when their TTL ends, not when someone asks next."""
        now = self._clock()
        for source in [s for s, e in self._cache.items() if e.expires_at <= now]:
            del self._cache[source]
        for source in [s for s, t in self._tokens.items() if t.expires_at <= now]:
            del self._tokens[source]

    async def _fetch(self, source: SecretSource) -> SecretData:
        epoch = self._epochs.get(source.secret, 0)
        token, minted = await self._token(source)
        try:
            response = await self._read(source, token)
        except grpc.aio.AioRpcError as err:
            # A token minted just now and refused by the coordinator that minted it is
            # final; one minted earlier (revoked, used up) or by another coordinator (the
            # call failed over to one that does not share the token key) is replaced once.
            fresh = minted and token.issuer == self._coordinator()
            if fresh or err.code() not in _TOKEN_REJECTED:
                raise _error(source, "reading the secret", err) from err
            self._tokens.pop(source, None)
            token, _ = await self._token(source)
            try:
                response = await self._read(source, token)
            except grpc.aio.AioRpcError as retry_err:
                raise _error(source, "reading the secret", retry_err) from retry_err
        data: SecretData = MappingProxyType(dict(response.data))
        now = self._clock()
        ttl = min(response.cache_ttl_seconds, token.expires_at - now)
        if ttl > 0 and self._epochs.get(source.secret, 0) == epoch:
            self._cache[source] = _Entry(data, now + ttl)
        log.info(
            "secret.fetched",
            secret=source.secret,
            audience=source.audience,
            version=response.metadata.version,
            keys=len(data),
            cache_ttl=round(max(ttl, 0.0), 1),
        )
        return data

    async def _read(self, source: SecretSource, token: _Token) -> secrets_pb2.GetSecretResponse:
        request = secrets_pb2.GetSecretRequest(
            namespace=source.namespace, name=source.name, token=token.value
        )
        return await self._client.GetSecret(request, timeout=self._timeout)

    async def _token(self, source: SecretSource) -> tuple[_Token, bool]:
        """A token for this (secret, audience), reused until shortly before it expires;
        the flag says whether it was just minted."""
        token = self._tokens.get(source)
        if token is not None and token.renew_at > self._clock():
            return token, False
        request = secrets_pb2.GenerateAccessTokenRequest(
            namespace=source.namespace,
            name=source.name,
            audience=source.audience,
            ttl_seconds=self._token_ttl,
        )
        try:
            response = await self._client.GenerateAccessToken(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise _error(source, "minting an access token", err) from err
        now = self._clock()
        lifetime = max(0.0, response.expires_at - self._wall_clock())
        token = _Token(
            value=response.token,
            renew_at=now + lifetime - min(TOKEN_RENEW_MARGIN, lifetime / 10),
            expires_at=now + lifetime,
            issuer=self._coordinator(),
        )
        self._tokens[source] = token
        return token, True


# ---------------------------------------------------------------------------- delivery


def _sources(spec: ReplicaSpec) -> set[SecretSource]:
    sources = {SecretSource(e.ref.namespace, e.ref.name, e.ref.audience) for e in spec.secret_env}
    sources.update(SecretSource(v.namespace, v.name, v.audience) for v in spec.secret_volumes)
    return sources


def _volume_source(volume: SecretVolume) -> SecretSource:
    return SecretSource(volume.namespace, volume.name, volume.audience)


def _unique_volumes(spec: ReplicaSpec) -> dict[str, SecretVolume]:
    """One directory per volume name, even when it is mounted at several paths."""
    return {v.volume_name: v for v in spec.secret_volumes}


def _env_values(spec: ReplicaSpec, fetched: Mapping[SecretSource, SecretData]) -> dict[str, str]:
    values: dict[str, str] = {}
    for var in spec.secret_env:
        source = SecretSource(var.ref.namespace, var.ref.name, var.ref.audience)
        data = fetched[source]
        if var.ref.key not in data:
            raise SecretDeliveryError(
                f"secret {source.secret} has no key {var.ref.key!r} for env var {var.name} "
                f"(its keys: {', '.join(sorted(data)) or 'none'}); fix the secretKeyRef or add "
                "the key to the secret"
            )
        try:
            values[var.name] = data[var.ref.key].decode("utf-8")
        except UnicodeDecodeError as err:
            raise SecretDeliveryError(
                f"secret {source.secret} key {var.ref.key!r} is not UTF-8 text, so it cannot "
                f"be the env var {var.name}; mount it as a file instead"
            ) from err
    return values


class SecretDelivery:
    """Resolves a replica's secret references before each start and keeps files current.

    It remembers (references only) which replica projects which secret, so an invalidation
    can rewrite the files of running replicas. Environment variables keep their value until
    the replica restarts, as in Kubernetes.
    """

    def __init__(self, store: SecretStore, files: SecretFiles) -> None:
        self.store = store
        self.files = files
        self._projected: dict[str, ReplicaSpec] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def prepare(self, spec: ReplicaSpec, runtime: str) -> ReplicaSpec:
        """``spec`` with its secrets resolved; raises :class:`SecretDeliveryError`.

        Docker gets its env values as a tmpfs file (the engine would persist a container's
        environment to disk); exec gets them directly in the process environment.
        """
        if not spec.uses_secrets:
            return spec
        async with self._lock(spec.replica_id):
            fetched = await self._fetch(_sources(spec))
            env = _env_values(spec, fetched)
            env_file = None
            if env and capabilities(runtime).secret_env_as_file:
                env_file = str(await asyncio.to_thread(self.files.write_env, spec.replica_id, env))
            mounts = await self._write_volumes(spec, fetched)
            self._projected[spec.replica_id] = spec.without_secret_values()
        resolved = ResolvedSecrets(env=env, mounts=mounts, env_file=env_file)
        return dataclasses.replace(spec, resolved=resolved)

    def adopt(self, specs: Iterable[ReplicaSpec]) -> None:
        """Remember replicas a previous agent process started (their files are still there)."""
        for spec in specs:
            if spec.secret_volumes:
                self._projected[spec.replica_id] = spec.without_secret_values()

    def release(self, replica_id: str) -> None:
        """The replica is gone: remove its files and stop refreshing them."""
        self._projected.pop(replica_id, None)
        self._locks.pop(replica_id, None)
        self.files.remove(replica_id)

    async def invalidate(self, secrets: Sequence[str]) -> None:
        """Drop ``<namespace>/<name>`` entries and rewrite the files projected from them.

        A refresh that fails (the secret was deleted, access was revoked) leaves the old
        files in place and is logged; the next start fetches again anyway.
        """
        for secret in secrets:
            self.store.invalidate(secret)
            log.info("secret.invalidated", secret=secret)
        wanted = set(secrets)
        for replica_id, spec in list(self._projected.items()):
            if not any(v.secret in wanted for v in spec.secret_volumes):
                continue
            try:
                async with self._lock(replica_id):
                    if replica_id not in self._projected:
                        continue  # released meanwhile
                    fetched = await self._fetch(
                        {_volume_source(v) for v in spec.secret_volumes if v.secret in wanted}
                    )
                    await self._write_volumes(spec, fetched, only=wanted)
                log.info("secret.files_refreshed", replica=replica_id)
            except SecretDeliveryError as err:
                log.warning("secret.refresh_failed", replica=replica_id, error=str(err))

    def remove_stale(self, keep: Iterable[str]) -> list[str]:
        """At start-up: remove files of replicas this agent no longer runs."""
        try:
            self.files.check()
        except SecretDeliveryError as err:
            log.warning("secrets.dir_unusable", error=str(err))
            return []
        return self.files.remove_stale(set(keep))

    def _lock(self, replica_id: str) -> asyncio.Lock:
        return self._locks.setdefault(replica_id, asyncio.Lock())

    async def _fetch(self, sources: Iterable[SecretSource]) -> dict[SecretSource, SecretData]:
        ordered = sorted(sources)
        results = await asyncio.gather(*(self.store.get(s) for s in ordered))
        return dict(zip(ordered, results, strict=True))

    async def _write_volumes(
        self,
        spec: ReplicaSpec,
        fetched: Mapping[SecretSource, SecretData],
        only: set[str] | None = None,
    ) -> list[SecretMount]:
        directories: dict[str, str] = {}
        for name, volume in _unique_volumes(spec).items():
            directory = self.files.volume_dir(spec.replica_id, name)
            if only is None or volume.secret in only:
                files = projected_files(volume, fetched[_volume_source(volume)])
                await asyncio.to_thread(self.files.write_volume, spec.replica_id, volume, files)
            directories[name] = str(directory)
        return [
            SecretMount(v.volume_name, directories[v.volume_name], v.mount_path)
            for v in spec.secret_volumes
        ]
