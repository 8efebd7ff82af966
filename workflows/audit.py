"""``audit/<cluster>``: the cluster's audit log, a bounded ring of records.

The coordinator's front sends what it decided (``workers/front/audit.py``) in batches,
with signal-with-start; ``cloudlessctl audit`` reads the log with the ``entries`` query.

Bounds, so no number of operations can wedge the log:

* records are clipped field by field (:mod:`cloudless.model.audit`: 2 KiB at most);
* the ring keeps the newest :data:`MAX_RECORDS` (by arrival), the oldest drop out;
* continue-as-new carries the ring compressed (:func:`pack`), at most
  :data:`MAX_PACKED_CHARS`: beyond that the oldest records drop out too (only a log of
  long, varied records gets there: 20,000 records with varied actors, addresses, targets
  and times pack to ~0.65 MiB, from ~4.6 MiB of JSON);
* an answer holds at most :data:`MAX_ANSWER_BYTES` of records, and says when it was cut.

Deterministic: no I/O, no clock; compressing is a pure function of the records.
"""

from __future__ import annotations

import base64
import zlib
from collections import deque
from collections.abc import Sequence

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from cloudless.contracts import audit
    from cloudless.contracts.limits import KIB, MAX_PAYLOAD_BYTES, MIB
    from cloudless.model import (
        AuditBatch,
        AuditEntries,
        AuditFilter,
        AuditRecord,
        AuditWorkflowInput,
    )

#: Records the log keeps at most; the oldest drop out first.
MAX_RECORDS = 20_000
#: The carried log (compressed, base64): half Temporal's 2 MiB blob limit.
MAX_PACKED_CHARS = 1 * MIB
#: One answer's records, encoded: the client's payload bound, less room for the rest.
MAX_ANSWER_BYTES = MAX_PAYLOAD_BYTES - 64 * KIB
#: History events before continue-as-new (each batch is one signal and one task).
MAX_HISTORY_EVENTS = 2_000


def matches(record: AuditRecord, where: AuditFilter) -> bool:
    """Whether ``record`` satisfies every condition of ``where``."""
    if where.since is not None and record.time < where.since:
        return False
    if where.until is not None and record.time > where.until:
        return False
    if where.actor and where.actor.casefold() not in record.actor.casefold():
        return False
    if where.outcome is not None and record.outcome != where.outcome:
        return False
    if where.action and where.action.casefold() != record.action.casefold():
        return False
    return record.target.startswith(where.target)


def select(
    records: Sequence[AuditRecord], where: AuditFilter, budget: int = MAX_ANSWER_BYTES
) -> AuditEntries:
    """The records matching ``where``, newest first (by time; equal times, the later
    arrival first), at most ``where.limit`` of them and ``budget`` bytes of JSON."""
    found = [r for r in reversed(records) if matches(r, where)]
    found.sort(key=lambda r: r.time, reverse=True)  # stable: arrival order within a time
    out: list[AuditRecord] = []
    size = 0
    for record in found:
        size += len(record.model_dump_json()) + 1
        if len(out) >= where.limit or size > budget:
            break
        out.append(record)
    return AuditEntries(
        records=out,
        truncated=len(out) < len(found),
        retained=len(records),
        oldest=min((r.time for r in records), default=None),
    )


def pack(records: Sequence[AuditRecord], budget: int = MAX_PACKED_CHARS) -> tuple[str, int]:
    """The newest of ``records`` that fit ``budget`` characters, compressed (zlib, then
    base64 so the payload stays JSON); and how many it holds. The oldest drop out."""
    kept = list(records)
    while kept:
        raw = AuditBatch(records=kept).model_dump_json().encode()
        packed = base64.b64encode(zlib.compress(raw, 6)).decode("ascii")
        if len(packed) <= budget:
            return packed, len(kept)
        # Drop the oldest share the excess suggests (with a margin), at least one.
        keep = int(len(kept) * budget / len(packed) * 0.95)
        kept = kept[len(kept) - min(keep, len(kept) - 1) :]
    return "", 0


def unpack(packed: str) -> list[AuditRecord]:
    """The records :func:`pack` packed."""
    if not packed:
        return []
    raw = zlib.decompress(base64.b64decode(packed))
    return AuditBatch.model_validate_json(raw).records


@workflow.defn(name=audit.WORKFLOW.name)
class AuditWorkflow:
    @workflow.init
    def __init__(self, inp: AuditWorkflowInput) -> None:
        self._max_records = inp.max_records or MAX_RECORDS
        self._max_history_events = inp.max_history_events or MAX_HISTORY_EVENTS
        self._ring: deque[AuditRecord] = deque(unpack(inp.packed), maxlen=self._max_records)

    @workflow.run
    async def run(self, inp: AuditWorkflowInput) -> None:
        await workflow.wait_condition(self._should_continue_as_new)
        await workflow.wait_condition(workflow.all_handlers_finished)
        packed, kept = pack(self._ring)
        if kept < len(self._ring):
            workflow.logger.warning(
                "audit log over its carried budget: the oldest %d record(s) dropped out",
                len(self._ring) - kept,
            )
        workflow.continue_as_new(
            AuditWorkflowInput(
                cluster=inp.cluster,
                packed=packed,
                max_records=inp.max_records,
                max_history_events=inp.max_history_events,
            )
        )

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() > self._max_history_events
        )

    @workflow.signal(name=audit.RECORD.name)
    def record(self, batch: AuditBatch) -> None:
        self._ring.extend(batch.records)

    @workflow.query(name=audit.ENTRIES.name)
    def entries(self, where: AuditFilter) -> AuditEntries:
        return select(self._ring, where)
