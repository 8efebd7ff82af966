"""The audit log's pure parts: record bounds, filters, the answer's bounds, packing."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cloudless.contracts.limits import TEMPORAL_BLOB_LIMIT_BYTES, encoded_size
from cloudless.model import AuditBatch, AuditFilter, AuditRecord
from cloudless.model.audit import (
    MAX_AUDIT_FIELD_CHARS,
    MAX_AUDIT_REASON_CHARS,
    MAX_AUDIT_TARGET_CHARS,
)
from workflows.audit import MAX_PACKED_CHARS, MAX_RECORDS, matches, pack, select, unpack

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def rec(
    seconds: float = 0.0,
    *,
    actor: str = "cloudless://dev/admin/admin",
    outcome: str = "allowed",
    action: str = "UpdateWorkflowExecution",
    target: str = "workload/default/web",
    reason: str = "",
) -> AuditRecord:
    return AuditRecord.model_validate(
        {
            "time": T0 + timedelta(seconds=seconds),
            "actor": actor,
            "role": "admin",
            "source": "ipv4:127.0.0.1:5555",
            "action": action,
            "target": target,
            "message": "apply",
            "outcome": outcome,
            "reason": reason,
        }
    )


def test_fields_are_clipped_and_time_is_utc() -> None:
    r = rec(reason="x" * 1000, target="t" * 5000, actor="a" * 5000)
    assert len(r.reason) == MAX_AUDIT_REASON_CHARS and r.reason.endswith("…")
    assert len(r.target) == MAX_AUDIT_TARGET_CHARS
    assert len(r.actor) == MAX_AUDIT_FIELD_CHARS
    base = rec().model_dump()
    naive = AuditRecord.model_validate({**base, "time": datetime(2025, 1, 1)})
    assert naive.time == T0 and naive.time.tzinfo is UTC
    east = datetime(2025, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    assert AuditRecord.model_validate({**base, "time": east}).time == T0
    # Decoding clips as well: a sink without the model's constructor cannot send more.
    decoded = AuditRecord.model_validate_json(r.model_dump_json().replace("…", "…" + "y" * 900))
    assert len(decoded.reason) == MAX_AUDIT_REASON_CHARS


def test_a_record_at_every_bound_is_small() -> None:
    worst = rec(reason="r" * 999, target="t" * 9999, actor="a" * 9999, action="b" * 999)
    assert len(worst.model_dump_json()) < 2048


def test_filter_limit_is_bounded() -> None:
    with pytest.raises(ValidationError, match="less than or equal to 10000"):
        AuditFilter(limit=10_001)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        AuditFilter(limit=0)


def test_each_condition_filters() -> None:
    r = rec(10, actor="ui:Alice", outcome="denied", action="HTTP POST", target="/namespaces/x")
    assert matches(r, AuditFilter())
    assert matches(r, AuditFilter(since=T0 + timedelta(seconds=10)))
    assert not matches(r, AuditFilter(since=T0 + timedelta(seconds=11)))
    assert matches(r, AuditFilter(until=T0 + timedelta(seconds=10)))
    assert not matches(r, AuditFilter(until=T0 + timedelta(seconds=9)))
    assert matches(r, AuditFilter(actor="alice"))
    assert not matches(r, AuditFilter(actor="bob"))
    assert matches(r, AuditFilter(outcome="denied"))
    assert not matches(r, AuditFilter(outcome="allowed"))
    assert matches(r, AuditFilter(action="http post"))
    assert not matches(r, AuditFilter(action="HTTP"))  # exact, not a substring
    assert matches(r, AuditFilter(target="/namespaces/"))
    assert not matches(r, AuditFilter(target="namespaces"))  # a prefix


def test_select_is_newest_first_limited_and_says_so() -> None:
    # Arrival order is not time order: two fronts send their batches independently.
    records = [rec(5), rec(1), rec(9), rec(3)]
    got = select(records, AuditFilter(limit=2))
    assert [r.time for r in got.records] == [T0 + timedelta(seconds=s) for s in (9, 5)]
    assert got.truncated and got.retained == 4 and got.oldest == T0 + timedelta(seconds=1)
    everything = select(records, AuditFilter())
    assert len(everything.records) == 4 and not everything.truncated


def test_select_keeps_the_later_arrival_first_within_one_time() -> None:
    first, second = rec(1, target="a"), rec(1, target="b")
    assert [r.target for r in select([first, second], AuditFilter()).records] == ["b", "a"]


def test_the_answer_is_bounded_in_bytes() -> None:
    records = [rec(i, reason="r" * 300) for i in range(100)]
    one = len(records[0].model_dump_json()) + 1
    got = select(records, AuditFilter(limit=100), budget=10 * one)
    assert len(got.records) == 10 and got.truncated


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 50),
            st.sampled_from(["allowed", "denied", "failed"]),
            st.sampled_from(["ui:a", "cloudless://dev/admin/b", "cloudless://dev/node/c"]),
            st.sampled_from(["workload/default/a", "node/n1", "/api/v1"]),
        ),
        max_size=60,
    ),
    st.integers(1, 20),
    st.sampled_from([None, "allowed", "denied", "failed"]),
    st.sampled_from(["", "admin", "ui:"]),
    st.sampled_from(["", "workload/", "node/"]),
    st.one_of(st.none(), st.integers(0, 50)),
)
def test_select_properties(
    rows: list[tuple[int, str, str, str]],
    limit: int,
    outcome: str | None,
    actor: str,
    target: str,
    since: int | None,
) -> None:
    records = [rec(s, outcome=o, actor=a, target=t) for s, o, a, t in rows]
    where = AuditFilter.model_validate(
        {
            "limit": limit,
            "outcome": outcome,
            "actor": actor,
            "target": target,
            "since": None if since is None else T0 + timedelta(seconds=since),
        }
    )
    got = select(records, where)
    wanted = [r for r in records if matches(r, where)]
    assert all(matches(r, where) for r in got.records)
    assert len(got.records) == min(limit, len(wanted))
    assert got.truncated == (len(wanted) > limit)
    times = [r.time for r in got.records]
    assert times == sorted(times, reverse=True)
    # Nothing newer than the oldest answer was left out.
    if got.records:
        assert all(r.time <= times[-1] or r in got.records for r in wanted)


def test_pack_round_trips_and_compresses() -> None:
    records = [rec(i, target=f"workload/default/w{i % 50}") for i in range(MAX_RECORDS)]
    packed, kept = pack(records)
    assert kept == MAX_RECORDS
    assert unpack(packed) == records
    # A full ring of typical records is far below the budget, and the carried input fits
    # Temporal's blob limit with room to spare.
    assert len(packed) < MAX_PACKED_CHARS // 2
    assert encoded_size(packed) < TEMPORAL_BLOB_LIMIT_BYTES // 2
    assert pack([]) == ("", 0) and unpack("") == []


def test_pack_drops_the_oldest_beyond_its_budget() -> None:
    # Incompressible reasons: nothing but dropping records can meet the budget.
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    records = [
        rec(i, reason="".join(rng.choice(alphabet) for _ in range(300))) for i in range(2_000)
    ]
    budget = 64 * 1024
    packed, kept = pack(records, budget)
    assert len(packed) <= budget
    assert 0 < kept < len(records)
    assert unpack(packed) == records[-kept:]  # the newest survive


def test_a_batch_of_a_sink_fits_one_payload() -> None:
    from cloudless.contracts.limits import MAX_PAYLOAD_BYTES
    from workers.front.audit import MAX_BATCH

    worst = rec(reason="r" * 999, target="t" * 9999, actor="a" * 9999, action="b" * 999)
    assert encoded_size(AuditBatch(records=[worst] * MAX_BATCH)) < MAX_PAYLOAD_BYTES
