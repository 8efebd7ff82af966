"""The coordinator's batched ledger writer: concurrent writes share one Update at a time,
results come back to each writer in order, and a failed Update fails every writer in it."""

from __future__ import annotations

import asyncio

from activities.ledger_writer import MAX_ALLOCATIONS, LedgerWriter
from cloudless.model import (
    Allocation,
    CommitPlanInput,
    LedgerBatch,
    LedgerBatchResult,
    LedgerOp,
    NodeRecord,
    NodeState,
    Resources,
    UpsertNodeInput,
)
from workflows.cluster import ClusterWorkflow, Ledger


class FakeHandle:
    """A LedgerHandle that applies batches to a real :class:`Ledger` (as the workflow
    would), slowly, and records how many Updates were in flight at once."""

    def __init__(self, fail: bool = False) -> None:
        self.ledger = Ledger()
        self.batches: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail = fail

    async def apply_batch(self, batch: LedgerBatch, id: str) -> LedgerBatchResult:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        if self.fail:
            raise RuntimeError("ledger unavailable")
        self.batches.append(len(batch.ops))
        wf = ClusterWorkflow.__new__(ClusterWorkflow)
        wf._ledger = self.ledger
        return LedgerBatchResult(
            results=[wf._apply_op(op) for op in batch.ops], version=self.ledger.version
        )


def upsert(i: int) -> LedgerOp:
    return LedgerOp(
        upsert=UpsertNodeInput(
            record=NodeRecord(node_id=f"n{i}", capacity=Resources(cpu_millis=1000)),
            state=NodeState.READY,
        )
    )


def plan(pid: str, node: str, cpu: int, count: int = 1) -> LedgerOp:
    allocations = [
        Allocation(
            replica_id=f"{pid}-{k}",
            workload="ns/w",
            node_id=node,
            resources=Resources(cpu_millis=cpu),
        )
        for k in range(count)
    ]
    return LedgerOp(commit=CommitPlanInput(plan_id=pid, allocations=allocations))


async def test_concurrent_writes_are_batched_one_update_at_a_time() -> None:
    handle = FakeHandle()
    writer = LedgerWriter(lambda: handle)  # type: ignore[arg-type, return-value]
    results = await asyncio.gather(*(writer.submit(upsert(i)) for i in range(50)))
    assert handle.max_in_flight == 1
    assert len(handle.batches) < 50 and sum(handle.batches) == 50
    versions = [r.upsert.version for r in results if r.upsert is not None]
    assert sorted(versions) == list(range(1, 51))  # each writer got its own op's result


async def test_a_rejected_plan_fails_alone() -> None:
    handle = FakeHandle()
    writer = LedgerWriter(lambda: handle)  # type: ignore[arg-type, return-value]
    await writer.submit(upsert(0))
    ok, too_big, ok2 = await asyncio.gather(
        writer.submit(plan("p1", "n0", 400)),
        writer.submit(plan("p2", "n0", 700)),
        writer.submit(plan("p3", "n0", 600)),
    )
    assert ok.commit is not None and ok2.commit is not None
    assert too_big.error_type == "PlanRejected" and "over-committed on cpu" in too_big.error
    assert handle.ledger.nodes["n0"].allocated.cpu_millis == 1000


async def test_batches_are_bounded_by_allocations() -> None:
    handle = FakeHandle()
    writer = LedgerWriter(lambda: handle)  # type: ignore[arg-type, return-value]
    await writer.submit(LedgerOp(upsert=UpsertNodeInput(
        record=NodeRecord(node_id="big", capacity=Resources(cpu_millis=10**9)),
        state=NodeState.READY)))  # fmt: skip
    size = MAX_ALLOCATIONS // 2
    await asyncio.gather(*(writer.submit(plan(f"p{i}", "big", 1, size)) for i in range(4)))
    assert max(handle.batches[1:]) <= 2


async def test_a_failed_update_fails_every_writer_in_it() -> None:
    handle = FakeHandle(fail=True)
    writer = LedgerWriter(lambda: handle)  # type: ignore[arg-type, return-value]
    outcomes = await asyncio.gather(
        *(writer.submit(upsert(i)) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    handle.fail = False
    assert (await writer.submit(upsert(9))).upsert is not None  # the writer recovers
