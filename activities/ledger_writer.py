"""One coordinator's ledger writes, funnelled into one ``apply_batch`` Update at a time.

Why: Temporal allows at most 10 in-flight Updates per workflow, and every Update costs the
``cluster/<name>`` workflow a task and a few history events. A burst of node enrollments
or placements (hundreds of concurrent activities) would hit the limit, get Updates refused
or aborted, and spend the ledger's history on bookkeeping. Here concurrent writers queue
their op; while one batch is in flight the next one fills up, so under load each Update
carries many writes and the ledger sees a steady, bounded stream. The latency cost when
idle is nothing: a lone write is sent at once, as a batch of one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from cloudless.contracts import LedgerHandle
from cloudless.model import LedgerBatch, LedgerOp, LedgerOpResult

#: Bounds per Update: the ops, and the allocations in them (≈ 150 bytes each on the wire,
#: well under Temporal's 2 MB payload limit).
MAX_OPS = 256
MAX_ALLOCATIONS = 4_000


def _weight(op: LedgerOp) -> int:
    if op.commit is None:
        return 1
    return 1 + len(op.commit.allocations) + len(op.commit.releases)


class LedgerWriter:
    def __init__(self, handle: Callable[[], LedgerHandle]) -> None:
        self._handle = handle
        self._queue: list[tuple[LedgerOp, asyncio.Future[LedgerOpResult]]] = []
        self._pump: asyncio.Task[None] | None = None
        self.batches = 0
        self.ops = 0

    async def submit(self, op: LedgerOp) -> LedgerOpResult:
        """Apply ``op`` in the next batch; raises what the batch's Update raised."""
        future: asyncio.Future[LedgerOpResult] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run(), name="ledger-writer")
        return await future

    def _take(self) -> list[tuple[LedgerOp, asyncio.Future[LedgerOpResult]]]:
        taken: list[tuple[LedgerOp, asyncio.Future[LedgerOpResult]]] = []
        weight = 0
        while self._queue and len(taken) < MAX_OPS:
            w = _weight(self._queue[0][0])
            if taken and weight + w > MAX_ALLOCATIONS:
                break
            taken.append(self._queue.pop(0))
            weight += w
        return taken

    async def _run(self) -> None:
        while self._queue:
            batch = [(op, f) for op, f in self._take() if not f.cancelled()]
            if not batch:
                continue
            try:
                result = await self._handle().apply_batch(
                    LedgerBatch(ops=[op for op, _ in batch]), id=f"batch-{uuid.uuid4()}"
                )
            except Exception as err:  # every writer in the batch sees the failure
                for _, f in batch:
                    if not f.done():
                        f.set_exception(err)
                continue
            self.batches += 1
            self.ops += len(batch)
            for (_, f), r in zip(batch, result.results, strict=True):
                if not f.done():
                    f.set_result(r)
