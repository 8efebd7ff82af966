"""The coordinator's garbage-collector policy: thresholds, periodic freeze, reclaim."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from workers.gcpolicy import GcPolicy


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_apply_sets_thresholds_and_freezes_survivors() -> None:
    policy = GcPolicy(thresholds=(10_000, 15, 15))
    keep = [Cycle() for _ in range(100)]
    policy.apply()
    assert gc.get_threshold() == (10_000, 15, 15)
    assert gc.get_freeze_count() >= len(keep)


def test_reclaim_collects_cycles_that_died_while_frozen() -> None:
    policy = GcPolicy()
    doomed = [Cycle() for _ in range(1000)]
    policy.apply()
    frozen = gc.get_freeze_count()
    del doomed  # unreachable cycles, but frozen: no collection sees them
    assert gc.collect() < 1000
    policy.reclaim()
    assert gc.get_freeze_count() <= frozen - 1000  # gone, not refrozen


def test_intervals_are_validated() -> None:
    with pytest.raises(ValueError, match="freeze_interval must be > 0"):
        GcPolicy(freeze_interval=0)
    with pytest.raises(ValueError, match="reclaim_interval >= it"):
        GcPolicy(freeze_interval=60, reclaim_interval=30)


async def test_run_freezes_periodically_until_cancelled() -> None:
    policy = GcPolicy(freeze_interval=0.01, reclaim_interval=0.02)
    task = asyncio.create_task(policy.run())
    await asyncio.sleep(0.1)
    assert gc.get_threshold() == policy.thresholds
    assert gc.get_freeze_count() > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
