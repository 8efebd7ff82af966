"""Garbage-collector policy for the long-running coordinator process.

Why: the coordinator holds a large, mostly long-lived heap (a record, an index row and a
channel per node, Temporal's workflow cache) and churns through short-lived objects at a
high rate (a protobuf, a payload and a few futures per RPC). CPython's defaults suit
neither: a young collection every 700 net allocations promotes every object that is
merely in flight across an ``await``, promoted objects count towards the next full
collection, and each full collection walks the whole heap while holding the GIL. At
5,000 nodes that was five full collections of ~0.9 s each inside a 14 s placement burst
(``bench/placement_throughput.py`` reports ``gc_seconds_burst``).

The policy:

- larger young generations, so in-flight objects die before a collection sees them;
- every ``freeze_interval`` a young collection then ``gc.freeze()``: what survived is
  moved to the permanent generation, which full collections skip. The node table and
  caches built up since the last freeze stop being walked again and again;
- every ``reclaim_interval`` ``gc.unfreeze()`` and one full collection, so reference
  cycles that died while frozen are reclaimed after all (one pause an hour, not many a
  minute). Memory freed by reference counting is never delayed by any of this.
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

#: (generation 0, 1, 2) thresholds; CPython's are (700, 10, 10).
THRESHOLDS = (50_000, 20, 20)


@dataclass
class GcPolicy:
    freeze_interval: float = 60.0
    reclaim_interval: float = 3600.0
    thresholds: tuple[int, int, int] = THRESHOLDS

    def __post_init__(self) -> None:
        if self.freeze_interval <= 0 or self.reclaim_interval < self.freeze_interval:
            raise ValueError(
                "gc policy: freeze_interval must be > 0 and reclaim_interval >= it, got "
                f"{self.freeze_interval} and {self.reclaim_interval}"
            )

    def apply(self) -> None:
        """Set the thresholds and freeze what start-up built (imports, configuration)."""
        gc.set_threshold(*self.thresholds)
        self.freeze()

    def freeze(self) -> None:
        gc.collect(1)  # young garbage is not frozen
        gc.freeze()

    def reclaim(self) -> float:
        """Unfreeze, collect everything, freeze again; returns the pause in seconds."""
        began = time.perf_counter()
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        pause = time.perf_counter() - began
        log.info("gc.reclaimed", collected=collected, pause_ms=round(pause * 1000, 1))
        return pause

    async def run(self) -> None:
        """Freeze periodically and reclaim now and then; cancel to stop."""
        self.apply()
        last_reclaim = time.monotonic()
        while True:
            await asyncio.sleep(self.freeze_interval)
            if time.monotonic() - last_reclaim >= self.reclaim_interval:
                self.reclaim()
                last_reclaim = time.monotonic()
            else:
                self.freeze()
