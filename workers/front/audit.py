"""The front's audit sink: what the front decides, batched durably into ``audit/<cluster>``.

The front calls :meth:`AuditSink.record` for every mutating call, every failed mutating
call and every denial, on its event loop and in the middle of serving the call. So
``record`` only appends to a bounded buffer: it never blocks, never awaits and never
raises. A background task sends the buffer in batches, every :data:`FLUSH_INTERVAL`
seconds or as soon as :data:`MAX_BATCH` records wait, with signal-with-start on the
cluster's audit workflow (``cloudless.contracts.audit``), so the first batch starts it.

The coordinator's Temporal client exists only once the front serves (the coordinator
reaches Temporal through its own front), so records are buffered until :meth:`attach`.

When Temporal cannot be reached, sends are retried with backoff (up to
:data:`RETRY_MAX_DELAY` seconds apart) and the buffer holds :data:`MAX_BUFFER` records.
Beyond that, new records are dropped and counted (:attr:`AuditSink.dropped`, the log event
``audit.dropped``); once Temporal answers again, the log itself gets a record saying how
many were lost and when (action :data:`DROPPED_ACTION`), so the gap is visible where the
records are read. The oldest records are kept: the start of an outage is what explains it.

The sink leaves out its own writes: the coordinator's signals to ``audit/<cluster>`` would
otherwise add one record per batch, forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections import deque
from datetime import UTC, datetime, timedelta

import structlog
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from cloudless.contracts.audit import AuditHandle, workflow_id
from cloudless.errors import PayloadTooLargeError
from cloudless.model import AuditBatch, AuditRecord

log = structlog.get_logger("cloudless.front.audit")

#: Records sent in one signal (at 2 KiB a record at most, 400 KiB: under the payload bound).
MAX_BATCH = 200
#: Records buffered while Temporal is unreachable; new ones are dropped beyond it.
MAX_BUFFER = 10_000
#: Seconds between flushes of a buffer that did not fill a batch.
FLUSH_INTERVAL = 1.0
#: Seconds one send may take.
SEND_TIMEOUT = 5.0
#: Longest wait between retries while Temporal is unreachable.
RETRY_MAX_DELAY = 10.0
#: Seconds :meth:`AuditSink.stop` spends flushing what is buffered.
STOP_TIMEOUT = 5.0
#: The action of the record that reports dropped records.
DROPPED_ACTION = "AuditDropped"


def _permanent(err: BaseException) -> bool:
    """A send that would fail the same way again: drop the batch rather than retry it."""
    if isinstance(err, RPCError):
        return err.status == RPCStatusCode.INVALID_ARGUMENT
    return isinstance(err, PayloadTooLargeError | TypeError | ValueError)


class AuditSink:
    def __init__(
        self,
        *,
        max_buffer: int = MAX_BUFFER,
        max_batch: int = MAX_BATCH,
        flush_interval: float = FLUSH_INTERVAL,
        send_timeout: float = SEND_TIMEOUT,
        retry_max_delay: float = RETRY_MAX_DELAY,
        host: str | None = None,
    ) -> None:
        if max_batch < 2 or max_buffer < max_batch:
            raise ValueError(
                f"AuditSink needs max_batch >= 2 and max_buffer >= max_batch, got "
                f"max_batch={max_batch}, max_buffer={max_buffer}"
            )
        self.max_buffer = max_buffer
        self.max_batch = max_batch
        self.flush_interval = flush_interval
        self.send_timeout = send_timeout
        self.retry_max_delay = retry_max_delay
        self.host = host or socket.gethostname()
        #: Records dropped since the sink was made (buffer full, refused, left at stop).
        self.dropped = 0
        #: Records delivered to the audit workflow.
        self.sent = 0
        self._buffer: deque[AuditRecord] = deque()
        #: Dropped records the log has not been told of yet, and when they were dropped.
        self._unreported = 0
        self._drops_from: datetime | None = None
        self._drops_until: datetime | None = None
        self._logged_drops = 0
        self._handle: AuditHandle | None = None
        self._cluster = ""
        self._healthy = True
        self._stopping = False
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # ------------------------------------------------------------------ the front's side

    def record(self, entry: AuditRecord) -> None:
        """Buffer ``entry`` for the next batch; never blocks, never raises."""
        try:
            if entry.role == "coordinator" and entry.target.startswith(workflow_id("")):
                return  # this sink's own writes
            if len(self._buffer) >= self.max_buffer:
                self._drop(1, entry.time)
                return
            self._buffer.append(entry)
            if len(self._buffer) >= self.max_batch and self._healthy:
                self._poke()
        except Exception as err:  # a sink that raises would fail the caller's request
            self._drop(1, datetime.now(UTC))
            log.error("audit.record_failed", error=repr(err))

    def attach(self, client: Client, cluster: str) -> None:
        """Send to ``audit/<cluster>`` with ``client`` from now on (what waited, first)."""
        self._handle = AuditHandle(client, cluster)
        self._cluster = cluster
        self._poke()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> AuditSink:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="audit-sink")
        return self

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Flush what is buffered (one try, ``timeout`` seconds at most), then stop;
        what could not be sent is counted as dropped."""
        self._stopping = True
        self._poke()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        left = len(self._buffer)
        if left:
            self._buffer.clear()
            self._drop(left, datetime.now(UTC))
        self._report_drops("the coordinator stopped before they were sent")

    # ------------------------------------------------------------------ internals

    def _poke(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:  # a caller on another thread
            loop.call_soon_threadsafe(self._wake.set)

    def _drop(self, count: int, at: datetime) -> None:
        self.dropped += count
        self._unreported += count
        self._drops_from = self._drops_from or at
        self._drops_until = at

    def _report_drops(self, why: str) -> None:
        """Log ``audit.dropped`` once for the records dropped since the last report."""
        fresh = self.dropped - self._logged_drops
        if fresh:
            self._logged_drops = self.dropped
            log.warning(
                "audit.dropped",
                count=fresh,
                total=self.dropped,
                buffered=len(self._buffer),
                cluster=self._cluster,
                reason=why,
            )

    def _notice(self) -> AuditRecord | None:
        """The record that tells the log how many records it lost, if any were."""
        if not self._unreported:
            return None
        since = self._drops_from.isoformat() if self._drops_from else "?"
        return AuditRecord(
            time=self._drops_until or datetime.now(UTC),
            actor="audit-sink",
            role="coordinator",
            source=self.host,
            action=DROPPED_ACTION,
            target=workflow_id(self._cluster),
            message="",
            outcome="failed",
            reason=f"{self._unreported} audit record(s) lost since {since}: Temporal was "
            f"unreachable and the front's buffer ({self.max_buffer}) full, or it refused "
            "them (see the coordinator's audit.dropped log events)",
        )

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _run(self) -> None:
        failures = 0
        while True:
            stopping = self._stopping
            if not stopping:
                delay = self.flush_interval * 2 ** min(failures, 16)
                await self._pause(min(delay, self.retry_max_delay) if failures else delay)
            ok = await self._drain()
            failures = 0 if ok else failures + 1
            self._healthy = ok
            self._report_drops("Temporal unreachable and the buffer full, or a batch refused")
            if stopping or (self._stopping and not ok):
                return

    async def _drain(self) -> bool:
        """Send until the buffer is empty; False when a send failed or was refused."""
        while self._handle is not None and (self._buffer or self._unreported):
            notice = self._notice()
            reported = self._unreported if notice is not None else 0
            room = self.max_batch - (notice is not None)
            batch = list(itertools.islice(self._buffer, room))
            try:
                await self._handle.record(
                    AuditBatch(records=[*batch, *([notice] if notice else [])]),
                    rpc_timeout=timedelta(seconds=self.send_timeout),
                )
            except Exception as err:
                if not _permanent(err):
                    log.warning(
                        "audit.send_failed", error=str(err)[:300], buffered=len(self._buffer)
                    )
                    return False
                # Dropped, not retried; the notice waits for the next send (after a
                # pause: a refusal is never a tight loop).
                log.error("audit.batch_refused", error=str(err)[:300], records=len(batch))
                self._forget(len(batch))
                self._drop(len(batch), datetime.now(UTC))
                return False
            self._forget(len(batch))
            self.sent += len(batch)
            if reported:
                # Drops during the send stay for the next notice.
                self._unreported -= reported
                self._drops_from = self._drops_until if self._unreported else None
                self._drops_until = self._drops_until if self._unreported else None
        return True

    def _forget(self, count: int) -> None:
        for _ in range(count):
            self._buffer.popleft()


__all__ = [
    "DROPPED_ACTION",
    "FLUSH_INTERVAL",
    "MAX_BATCH",
    "MAX_BUFFER",
    "AuditSink",
]
