"""The front's audit sink against a Temporal client stand-in: batching, the buffer before
``attach``, backpressure while Temporal is down (bounded, counted, reported), refused
batches, its own writes, and a bounded stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from structlog.testing import capture_logs
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from cloudless.contracts import audit
from cloudless.contracts.names import task_queue
from cloudless.model import AuditBatch, AuditRecord, AuditWorkflowInput
from workers.front.audit import DROPPED_ACTION, AuditSink


class FakeTemporal:
    """``Client.start_workflow`` (what signal-with-start calls), recording each batch;
    ``down`` makes it fail as an unreachable server does, ``refuse`` as a bad request."""

    def __init__(self) -> None:
        self.batches: list[AuditBatch] = []
        self.calls: list[dict[str, Any]] = []
        self.down = False
        self.refuse = False
        self.changed = asyncio.Condition()

    def get_workflow_handle(self, workflow_id: str, **options: Any) -> object:
        return object()  # the sink only signals-with-start; reads use the real client

    async def start_workflow(self, name: str, arg: Any, **options: Any) -> None:
        async with self.changed:
            self.calls.append({"name": name, "arg": arg, **options})
            self.changed.notify_all()
        if self.down:
            raise RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")
        if self.refuse:
            raise RPCError("bad payload", RPCStatusCode.INVALID_ARGUMENT, b"")
        (batch,) = options["start_signal_args"]
        async with self.changed:
            self.batches.append(batch)
            self.changed.notify_all()

    @property
    def records(self) -> list[AuditRecord]:
        return [r for b in self.batches for r in b.records]

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(10), self.changed:
            await self.changed.wait_for(done)


def entry(n: int, *, role: str = "admin", target: str = "workload/default/web") -> AuditRecord:
    return AuditRecord(
        time=datetime(2025, 1, 1, tzinfo=UTC),
        actor="cloudless://dev/admin/admin",
        role=role,
        source="ipv4:127.0.0.1:5555",
        action="UpdateWorkflowExecution",
        target=target,
        message=f"m{n}",
        outcome="allowed",
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeTemporal]:
    yield FakeTemporal()


def attach(sink: AuditSink, fake: FakeTemporal, cluster: str = "c1") -> None:
    sink.attach(cast(Client, fake), cluster)


async def test_buffers_until_attached_then_signals_with_start(fake: FakeTemporal) -> None:
    sink = await AuditSink(flush_interval=3600).start()
    for n in range(3):
        sink.record(entry(n))
    assert sink.buffered == 3 and not fake.calls
    attach(sink, fake)  # sends at once, not at the next interval
    await fake.until(lambda: len(fake.records) == 3)
    call = fake.calls[0]
    assert call["name"] == audit.WORKFLOW.name
    assert call["id"] == "audit/c1"
    assert call["task_queue"] == task_queue("c1")
    assert call["start_signal"] == audit.RECORD.name
    assert call["arg"] == AuditWorkflowInput(cluster="c1")
    assert [r.message for r in fake.records] == ["m0", "m1", "m2"]
    assert sink.sent == 3 and sink.buffered == 0
    await sink.stop()


async def test_a_full_batch_goes_at_once_and_batches_are_bounded(fake: FakeTemporal) -> None:
    sink = await AuditSink(flush_interval=3600, max_batch=10, max_buffer=100).start()
    attach(sink, fake)
    for n in range(25):
        sink.record(entry(n))
    await fake.until(lambda: len(fake.records) >= 20)
    assert all(len(b.records) <= 10 for b in fake.batches)
    # The last five wait for the interval (an hour here), or for stop.
    await sink.stop()
    assert [r.message for r in fake.records] == [f"m{n}" for n in range(25)]


async def test_a_partial_batch_goes_after_the_interval(fake: FakeTemporal) -> None:
    sink = await AuditSink(flush_interval=0.05).start()
    attach(sink, fake)
    sink.record(entry(0))
    await fake.until(lambda: len(fake.records) == 1)
    await sink.stop()


async def test_temporal_down_bounds_the_buffer_counts_drops_and_reports_them(
    fake: FakeTemporal,
) -> None:
    fake.down = True
    sink = await AuditSink(
        flush_interval=0.01, retry_max_delay=0.05, max_batch=4, max_buffer=10, host="h1"
    ).start()
    attach(sink, fake)
    with capture_logs() as logs:
        for n in range(15):
            sink.record(entry(n))  # never blocks, never raises
        assert sink.buffered == 10 and sink.dropped == 5
        await fake.until(lambda: len(fake.calls) >= 2)  # it retries
        fake.down = False
        await fake.until(lambda: len(fake.records) == 11)
    dropped = [e for e in logs if e["event"] == "audit.dropped"]
    assert dropped and dropped[0]["count"] == 5 and dropped[0]["total"] == 5
    kept = [r.message for r in fake.records if r.action != DROPPED_ACTION]
    assert kept == [f"m{n}" for n in range(10)]  # the oldest are kept
    (notice,) = [r for r in fake.records if r.action == DROPPED_ACTION]
    assert notice.outcome == "failed" and notice.target == "audit/c1"
    assert notice.source == "h1" and notice.reason.startswith("5 audit record(s) lost")
    # Reported once: later batches carry no second notice.
    sink.record(entry(99))
    await sink.stop()
    assert [r.action for r in fake.records].count(DROPPED_ACTION) == 1
    assert sink.dropped == 5


async def test_a_refused_batch_is_dropped_not_retried_forever(fake: FakeTemporal) -> None:
    fake.refuse = True
    sink = await AuditSink(flush_interval=0.01, max_batch=2, max_buffer=10).start()
    attach(sink, fake)
    sink.record(entry(0))
    await fake.until(lambda: len(fake.calls) >= 1)
    fake.refuse = False
    sink.record(entry(1))
    await fake.until(lambda: any(r.action == DROPPED_ACTION for r in fake.records))
    await sink.stop()
    assert sink.dropped == 1
    assert [r.message for r in fake.records if r.action != DROPPED_ACTION] == ["m1"]


async def test_record_never_raises_and_skips_the_sinks_own_writes(fake: FakeTemporal) -> None:
    sink = await AuditSink(flush_interval=3600).start()
    sink.record(cast(AuditRecord, None))  # a caller's bug: counted, not raised
    assert sink.dropped == 1
    sink.record(entry(0, role="coordinator", target="audit/c1"))  # the sink's own signal
    assert sink.buffered == 0
    sink.record(entry(1, role="admin", target="audit/c1"))  # an admin touching the log
    assert sink.buffered == 1
    await sink.stop(timeout=0.1)  # never attached: nothing can be sent
    assert sink.dropped == 2


async def test_stop_is_bounded_while_temporal_is_down(fake: FakeTemporal) -> None:
    fake.down = True
    sink = await AuditSink(flush_interval=3600).start()
    attach(sink, fake)
    sink.record(entry(0))
    async with asyncio.timeout(5):
        await sink.stop(timeout=0.5)
    assert sink.dropped == 1 and sink.sent == 0


async def test_records_from_another_thread_wake_the_sender(fake: FakeTemporal) -> None:
    sink = await AuditSink(flush_interval=3600, max_batch=2).start()
    attach(sink, fake)

    def elsewhere() -> None:
        for n in range(2):
            sink.record(entry(n))

    await asyncio.to_thread(elsewhere)
    await fake.until(lambda: len(fake.records) == 2)
    await sink.stop()


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_buffer >= max_batch"):
        AuditSink(max_batch=10, max_buffer=5)
