"""This coordinator's view of the secret workflows: records, data keys and use leases, cached.

The hot read path (GetSecret with a warm cache) touches neither Temporal nor transit:
records, unwrapped data keys and decrypted values live in this process's memory,
invalidated by local writes and bounded by :data:`RECORD_TTL` for writes made through
another coordinator.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from temporalio.client import Client
from temporalio.service import RPCError

from cloudless.contracts import SecretHandle, gone
from cloudless.errors import SecretError
from cloudless.secrets.access import AccessClaims
from cloudless.secrets.envelope import open_sealed, seal
from cloudless.secrets.masterkey import MasterKey
from cloudless.secrets.model import ReserveUsesInput, SecretView

#: How long a record read from Temporal is trusted without re-reading it. Local writes
#: invalidate at once; this bounds staleness after writes through another coordinator.
RECORD_TTL = 5.0
#: Uses of a use-limited token reserved durably at a time (fail safe: a crash loses them).
USE_BLOCK = 16
DATA_KEY_CACHE = 10_000
RPC_TIMEOUT = timedelta(seconds=15)


def expired_message(key: str, expires_at: float) -> str:
    """The refusal for a secret past its TTL, whichever operation asked."""
    when = datetime.fromtimestamp(expires_at, UTC).isoformat(timespec="seconds")
    return (
        f"secret {key} expired at {when} (it was created with a TTL); "
        "create it again to use the name"
    )


@dataclass
class Entry:
    """A cached secret: record and revocations as Temporal last said, values once opened."""

    view: SecretView
    loaded_at: float
    data: dict[str, bytes] | None = None


@dataclass
class _Lease:
    remaining: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SecretStore:
    def __init__(
        self, client: Client, master: MasterKey, clock: Callable[[], float] = time.time
    ) -> None:
        self._client = client
        self._master = master
        self._clock = clock
        self.entries: dict[str, Entry] = {}
        #: Unwrapped data keys by wrapped key (least recently added dropped first).
        self.data_keys: OrderedDict[str, bytes] = OrderedDict()
        self._leases: dict[str, _Lease] = {}

    def handle(self, namespace: str, name: str) -> SecretHandle:
        return SecretHandle(self._client, namespace, name)

    def forget(self, namespace: str, name: str) -> None:
        """Drop the cached record (a local write changed it)."""
        self.entries.pop(f"{namespace}/{name}", None)

    def forget_lease(self, token_id: str) -> None:
        self._leases.pop(token_id, None)

    async def load(self, namespace: str, name: str, *, fresh: bool = False) -> Entry:
        """The secret's cached entry, re-read from its workflow when stale or ``fresh``.

        :class:`SecretError` (NOT_FOUND) if it does not exist or has expired: expiry is
        checked here, against this coordinator's clock, for every operation and whether the
        entry is cached or not, so a secret is refused from its ``expires_at`` on even
        before its workflow's timer has ended it.
        """
        key = f"{namespace}/{name}"
        entry = self.entries.get(key)
        now = self._clock()
        if entry is None or fresh or now - entry.loaded_at >= RECORD_TTL:
            try:
                view = await self.handle(namespace, name).view(rpc_timeout=RPC_TIMEOUT)
            except RPCError as err:
                if gone(err):
                    view = None
                else:
                    raise
            if view is None:
                self.entries.pop(key, None)
                raise SecretError(await self._missing(namespace, name, now), "NOT_FOUND")
            data = entry.data if entry and entry.view.record == view.record else None
            entry = Entry(view=view, loaded_at=now, data=data)
            self.entries[key] = entry
        expires_at = entry.view.record.expires_at
        if expires_at and now >= expires_at:
            self.entries.pop(key, None)
            raise SecretError(expired_message(key, expires_at), "NOT_FOUND")
        return entry

    async def _missing(self, namespace: str, name: str, now: float) -> str:
        """Why there is no secret: its last run ended at its expiry (its memo keeps the
        metadata), or it does not exist (never created, deleted, or long gone)."""
        key = f"{namespace}/{name}"
        try:
            described = await self.handle(namespace, name).handle.describe(rpc_timeout=RPC_TIMEOUT)
            meta = (await described.memo()).get("metadata")
        except RPCError:
            meta = None
        expires_at = meta.get("expires_at") if isinstance(meta, dict) else None
        closed = described.close_time if meta is not None else None
        if (
            isinstance(expires_at, int | float)
            and 0 < expires_at <= now
            and closed is not None
            and closed.timestamp() >= expires_at - 1.0  # ended by its timer, not a delete
        ):
            return expired_message(key, float(expires_at))
        return f"secret {key} does not exist"

    async def _data_key(self, wrapped: str) -> bytes:
        key = self.data_keys.get(wrapped)
        if key is None:
            key = await asyncio.to_thread(self._master.unwrap, wrapped)
            self.data_keys[wrapped] = key
            if len(self.data_keys) > DATA_KEY_CACHE:
                self.data_keys.popitem(last=False)
        return key

    async def open(self, entry: Entry) -> dict[str, bytes]:
        """The entry's values (decrypted once, then kept with the entry)."""
        if entry.data is None:
            rec = entry.view.record
            key = await self._data_key(rec.wrapped_key)
            entry.data = open_sealed(
                key, rec.ciphertext, namespace=rec.namespace, name=rec.name, version=rec.version
            )
        return entry.data

    async def sealed(
        self, namespace: str, name: str, version: int, data: Mapping[str, bytes]
    ) -> tuple[str, str, int]:
        """(ciphertext, wrapped data key, key version) of ``data`` under a fresh data key."""
        dk = await asyncio.to_thread(self._master.datakey)
        self.data_keys[dk.wrapped] = dk.plaintext
        ciphertext = seal(dk.plaintext, data, namespace=namespace, name=name, version=version)
        return ciphertext, dk.wrapped, dk.version

    async def take_use(self, claims: AccessClaims) -> None:
        """Spend one use of a use-limited token, reserving a block durably when needed."""
        lease = self._leases.setdefault(claims.token_id, _Lease())
        async with lease.lock:
            if lease.remaining <= 0:
                granted = await self.handle(claims.namespace, claims.name).reserve_uses(
                    ReserveUsesInput(
                        token_id=claims.token_id,
                        max_uses=claims.max_uses,
                        expires_at=claims.expires_at,
                        want=min(USE_BLOCK, claims.max_uses),
                    ),
                    rpc_timeout=RPC_TIMEOUT,
                )
                lease.remaining = granted
            if lease.remaining <= 0:
                raise SecretError(
                    f"access token {claims.token_id} has used all {claims.max_uses} of its "
                    "uses; mint a new one",
                    "RESOURCE_EXHAUSTED",
                )
            lease.remaining -= 1
