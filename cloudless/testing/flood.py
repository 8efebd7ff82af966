"""Connection floods against a Cloudless endpoint, for tests and benchmarks.

A :class:`Flood` is what one unprivileged local user can do to a listening port without
any credential: hold many idle TCP connections (never a byte sent) and keep slowloris
writers going (a request, or a TLS ClientHello, dripped a byte at a time, reconnecting
whenever the server hangs up). It runs on the caller's event loop and records what the
server did to each socket, so a test can await "the server closed them" as an event:

    async with Flood("127.0.0.1", port, idle=1000, slowloris=1) as flood:
        await flood.wait_closed(flood.idle, timeout=15)
        assert all(life < 12 for life in flood.slowloris_lifetimes)

``source`` picks the client address (any of 127.0.0.0/8 on Linux), so a second flood
from ``127.0.0.2`` shows what per-address limits do for everyone else. Every socket is
aborted when the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field

__all__ = ["HTTP_SLOWLORIS", "TLS_SLOWLORIS", "Flood", "Hold"]

#: A request head that never ends: a header line, then its value forever, a byte at a time.
HTTP_SLOWLORIS = b"GET /v1/sys/health HTTP/1.1\r\nHost: cloudless\r\nX-Slow: "
#: The start of a TLS handshake record that announces 16 KiB and never delivers it.
TLS_SLOWLORIS = b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc\x03\x03"

#: Connections opened at once while the flood builds (the server's accept queue is the
#: limit that matters, not this).
_BATCH = 100


@dataclass(eq=False)
class Hold:
    """One flood socket and what became of it."""

    opened: float
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    #: When the server closed it (monotonic seconds); None while it is open.
    closed: float | None = None
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


class Flood:
    """``idle`` silent connections plus ``slowloris`` drip-writers against ``host:port``.

    ``tls``: the slowloris writers complete a TLS handshake with this client context
    first (and then drip ``drip`` inside it); idle connections never send anything, TLS
    or not. ``drip``: what the writers send, a byte every ``interval`` seconds, then
    ``b"a"`` forever (default: :data:`HTTP_SLOWLORIS`; :data:`TLS_SLOWLORIS` against a
    TLS port without ``tls``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        idle: int = 1000,
        slowloris: int = 1,
        source: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        drip: bytes = HTTP_SLOWLORIS,
        interval: float = 0.1,
    ) -> None:
        self.host, self.port, self.source = host, port, source
        self._idle_count, self._slowloris_count = idle, slowloris
        self._tls, self._server_hostname = tls, server_hostname
        self._drip, self._interval = drip, interval
        self.idle: list[Hold] = []
        #: Seconds each slowloris connection lasted before the server closed it.
        self.slowloris_lifetimes: list[float] = []
        #: Slowloris connections the server refused or reset before they could drip.
        self.slowloris_refused = 0
        self._writers: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Flood:
        await self.open_idle(self._idle_count)
        self._writers = [
            asyncio.create_task(self._slowloris(), name=f"slowloris-{i}")
            for i in range(self._slowloris_count)
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ idle sockets

    async def open_idle(self, count: int) -> list[Hold]:
        """Open ``count`` more silent connections; each is watched for the server's close."""
        opened: list[Hold] = []
        for start in range(0, count, _BATCH):
            batch = await asyncio.gather(
                *(self._connect() for _ in range(min(_BATCH, count - start)))
            )
            opened += batch
        self.idle += opened
        return opened

    async def _connect(self) -> Hold:
        reader, writer = await asyncio.open_connection(
            self.host, self.port, local_addr=(self.source, 0)
        )
        hold = Hold(time.monotonic(), reader, writer)
        hold.watcher = asyncio.create_task(self._watch(hold))
        return hold

    async def _watch(self, hold: Hold) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while await hold.reader.read(65536):
                pass  # whatever the server says before it hangs up (a 503, a GOAWAY)
        hold.closed = time.monotonic()
        self._changed.set()

    def open_count(self, holds: list[Hold] | None = None) -> int:
        """How many of ``holds`` (default: every idle socket) the server still holds."""
        return sum(1 for h in (self.idle if holds is None else holds) if h.closed is None)

    async def wait_closed(self, holds: list[Hold], timeout: float, *, leave: int = 0) -> float:
        """Await the server closing all but ``leave`` of ``holds``; the seconds it took.

        Raises ``TimeoutError`` (saying how many are still open) after ``timeout``.
        """
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()
                    if self.open_count(holds) <= leave:
                        break
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{self.open_count(holds)} of {len(holds)} flood sockets still open after "
                f"{timeout}s (expected at most {leave})"
            ) from None
        return time.monotonic() - started

    # ------------------------------------------------------------------ slowloris

    async def _slowloris(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    local_addr=(self.source, 0),
                    ssl=self._tls,
                    server_hostname=self._server_hostname if self._tls else None,
                )
            except (ConnectionError, OSError, ssl.SSLError):
                self.slowloris_refused += 1
                await asyncio.sleep(self._interval)  # not a hot loop against a refusal
                continue
            started = time.monotonic()
            hung_up = asyncio.create_task(self._hang_up(reader))
            try:
                await self._drip_until(writer, hung_up)
            finally:
                hung_up.cancel()
                writer.transport.abort()
            self.slowloris_lifetimes.append(time.monotonic() - started)
            self._changed.set()

    async def _hang_up(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
            while await reader.read(65536):
                pass

    async def _drip_until(self, writer: asyncio.StreamWriter, hung_up: asyncio.Task[None]) -> None:
        sent = 0
        while not hung_up.done():
            byte = self._drip[sent : sent + 1] or b"a"
            try:
                writer.write(byte)
                await writer.drain()
            except (ConnectionError, OSError, ssl.SSLError):
                return
            sent += 1
            await asyncio.wait([hung_up], timeout=self._interval)

    async def wait_slowloris(self, count: int, timeout: float) -> None:
        """Await ``count`` slowloris connections ended by the server."""
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                if len(self.slowloris_lifetimes) >= count:
                    break
                await self._changed.wait()

    # ------------------------------------------------------------------ cleanup

    async def close(self) -> None:
        """Stop the writers and abort every socket (the server sees a reset)."""
        for task in self._writers:
            task.cancel()
        await asyncio.gather(*self._writers, return_exceptions=True)
        for hold in self.idle:
            hold.writer.transport.abort()
        watchers = [h.watcher for h in self.idle if h.watcher is not None]
        await asyncio.gather(*watchers, return_exceptions=True)
