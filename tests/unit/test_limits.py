"""The bounds at the Temporal boundary (``cloudless.contracts.limits``): the client guard
refuses before sending and names the limit; the codec's overhead is within the margin the
guard assumes; and the largest workload state the workflow can carry is measured against
its budget, so a workload at its limits never produces a payload Temporal refuses."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from temporalio.api.common.v1 import Payload
from temporalio.client import (
    OutboundInterceptor,
    QueryWorkflowInput,
    SignalWorkflowInput,
    StartWorkflowInput,
    StartWorkflowUpdateInput,
    StartWorkflowUpdateWithStartInput,
    UpdateWithStartStartWorkflowInput,
    UpdateWithStartUpdateWorkflowInput,
)

from cloudless.codec import DataKey, TransitPayloadCodec
from cloudless.contracts import limits
from cloudless.errors import PayloadTooLargeError
from cloudless.model import (
    CandidateScore,
    ReplicaPhase,
    ReplicaRecord,
    Resources,
    WorkloadState,
    WorkloadStatus,
    WorkloadWorkflowInput,
)
from cloudless.spec import EnvVar, Workload
from cloudless.spec.limits import MAX_REPLICAS
from cloudless.testing.workloads import sleeper
from cloudless.vocabulary import DEFAULT_WEIGHTS, WorkloadPhase
from policies.reschedule import AVOID_KEPT, CRASHES_KEPT, RESCHEDULES_KEPT


def big_manifest(name: str, size: int) -> Workload:
    """A manifest with one env value of ``size`` characters (built around the manifest's
    own checks, as the Temporal boundary must hold on its own)."""
    w = sleeper(name, 1)
    env = (*w.spec.container.env, EnvVar.model_construct(name="BIG", value="x" * size))
    container = w.spec.container.model_copy(update={"env": env})
    return w.model_copy(update={"spec": w.spec.model_copy(update={"container": container})})


# --------------------------------------------------------------------------- checks


def test_a_payload_over_the_bound_is_refused_with_the_limit_named() -> None:
    limits.check_payload("update 'apply' of workload/default/x", ["x" * 1000])
    with pytest.raises(PayloadTooLargeError) as err:
        limits.check_payload(
            "update 'apply' of workload/default/x", ["x" * limits.MAX_PAYLOAD_BYTES]
        )
    message = str(err.value)
    assert message.startswith("update 'apply' of workload/default/x is 1 MiB encoded")
    assert "over the 1 MiB limit" in message and "MAX_PAYLOAD_BYTES" in message
    assert "nothing was sent" in message
    assert err.value.limit == limits.MAX_PAYLOAD_BYTES > 0
    assert err.value.size > limits.MAX_PAYLOAD_BYTES


def test_a_manifest_over_its_bound_is_refused_with_the_fix() -> None:
    limits.check_manifest(big_manifest("ok", 100_000), "default/ok")
    with pytest.raises(PayloadTooLargeError) as err:
        limits.check_manifest(big_manifest("big", 1_500_000), "default/big")
    message = str(err.value)
    assert message.startswith("workload default/big: the manifest is 1.4 MiB encoded")
    assert "288 KiB limit" in message and "MAX_MANIFEST_PAYLOAD_BYTES" in message
    assert "secretKeyRef" in message


@given(st.text(max_size=300), st.integers(min_value=1, max_value=200))
def test_clip_bounds_and_keeps_short_text(text: str, limit: int) -> None:
    clipped = limits.clip(text, limit)
    assert len(clipped) <= limit
    if len(text) <= limit:
        assert clipped == text
    else:
        assert clipped.endswith("…") and text.startswith(clipped[:-1])


def test_human_sizes() -> None:
    assert limits.human(256 * 1024) == "256 KiB"
    assert limits.human(3 * 1024 * 1024 // 2) == "1.5 MiB"
    assert limits.human(12) == "12 bytes"


# --------------------------------------------------------------------------- the interceptor


class _Recorder(OutboundInterceptor):
    """The end of the chain: records what would have been sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def start_workflow(self, input: Any) -> Any:
        self.sent.append("start")

    async def signal_workflow(self, input: Any) -> None:
        self.sent.append("signal")

    async def query_workflow(self, input: Any) -> Any:
        self.sent.append("query")

    async def start_workflow_update(self, input: Any) -> Any:
        self.sent.append("update")

    async def start_update_with_start_workflow(self, input: Any) -> Any:
        self.sent.append("update-with-start")


def _input(cls: type, **given: Any) -> Any:
    """A client input dataclass with only the fields the guard reads set."""
    return cls(**{f.name: None for f in dataclasses.fields(cls)} | given)


HUGE = "x" * (limits.MAX_PAYLOAD_BYTES + 1)


async def test_the_interceptor_refuses_every_kind_of_message_before_sending() -> None:
    end = _Recorder()
    out = limits.PayloadLimits().intercept_client(end)
    small = ["hello"]
    calls: list[tuple[Callable[[Any], Awaitable[Any]], Any, str]] = [
        (out.start_workflow, _input(StartWorkflowInput, id="w", args=small), "start"),
        (
            out.signal_workflow,
            _input(SignalWorkflowInput, id="w", signal="replicas_lost", args=small),
            "signal",
        ),
        (out.query_workflow, _input(QueryWorkflowInput, id="w", query="status", args=[]), "query"),
        (
            out.start_workflow_update,
            _input(StartWorkflowUpdateInput, id="w", update="apply", args=small),
            "update",
        ),
    ]
    for call, inp, kind in calls:
        await call(inp)
        assert end.sent[-1] == kind
    sent = len(end.sent)
    refused: list[tuple[Callable[[Any], Awaitable[Any]], Any, str]] = [
        (
            out.start_workflow,
            _input(StartWorkflowInput, id="w", args=[HUGE]),
            "input of workflow w",
        ),
        (
            out.start_workflow,
            _input(
                StartWorkflowInput,
                id="w",
                args=small,
                start_signal="replicas_lost",
                start_signal_args=[HUGE],
            ),
            "signal 'replicas_lost' to w",
        ),
        (
            out.signal_workflow,
            _input(SignalWorkflowInput, id="w", signal="replicas_lost", args=[HUGE]),
            "signal 'replicas_lost' to w",
        ),
        (
            out.query_workflow,
            _input(QueryWorkflowInput, id="w", query="status", args=[HUGE]),
            "query 'status' of w",
        ),
        (
            out.start_workflow_update,
            _input(StartWorkflowUpdateInput, id="w", update="apply", args=[HUGE]),
            "update 'apply' of w",
        ),
    ]
    for call, inp, what in refused:
        with pytest.raises(PayloadTooLargeError, match=what):
            await call(inp)
    assert len(end.sent) == sent  # nothing was sent


async def test_the_interceptor_checks_both_halves_of_an_update_with_start() -> None:
    end = _Recorder()
    out = limits.PayloadLimits().intercept_client(end)

    def both(start_args: list[Any], update_args: list[Any]) -> Any:
        return _input(
            StartWorkflowUpdateWithStartInput,
            start_workflow_input=_input(UpdateWithStartStartWorkflowInput, id="w", args=start_args),
            update_workflow_input=_input(
                UpdateWithStartUpdateWorkflowInput, update="apply", args=update_args
            ),
        )

    await out.start_update_with_start_workflow(both(["a"], ["b"]))
    with pytest.raises(PayloadTooLargeError, match="the input of workflow w"):
        await out.start_update_with_start_workflow(both([HUGE], ["b"]))
    with pytest.raises(PayloadTooLargeError, match="update 'apply' of w"):
        await out.start_update_with_start_workflow(both(["a"], [HUGE]))
    assert end.sent == ["update-with-start"]


# --------------------------------------------------------------------------- the codec margin


class _Keys:
    key_name = "cloudless-payloads"

    async def new_key(self) -> DataKey:
        # As long as Vault's wrapped data keys get (vault:v<version>:<base64 of 60 bytes>),
        # with room for a five-digit key version.
        return DataKey(b"k" * 32, "vault:v12345:" + "A" * 80)

    async def unwrap(self, wrapped: str) -> bytes:
        return b"k" * 32


@pytest.mark.parametrize("size", [0, 1_000, 300_000])
async def test_the_codec_adds_less_than_the_margin_the_guard_assumes(size: int) -> None:
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b"x" * size)
    (sealed,) = await TransitPayloadCodec(_Keys()).encode([plain])
    assert sealed.ByteSize() - plain.ByteSize() <= limits.CODEC_OVERHEAD_BYTES
    assert sealed.ByteSize() - plain.ByteSize() > 100  # the margin is not vacuous


# --------------------------------------------------------------------------- the state budget


def worst_record(i: int, explained: bool) -> ReplicaRecord:
    """A replica record with every field at the longest the workflow lets it be."""
    long_name = "n" * 63
    node = "node-" + "x" * 58
    return ReplicaRecord(
        replica_id=f"{'s' * 63}-{long_name}-{i:05d}",
        generation=2**31,
        spec_hash="0123456789abcdef",
        phase=ReplicaPhase.RUNNING,
        node_id=node,
        address="[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
        message="m" * limits.MAX_REPLICA_MESSAGE_CHARS,
        runtime_id="f" * 64,
        started_at=datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        resources=Resources(
            cpu_millis=2**40,
            memory_bytes=2**60,
            storage_bytes=2**60,
            gpu=2**20,
            bandwidth_bps=2**50,
        ),
        lost=True,
        evicting=True,
        preempted=True,
        score=99.99,
        candidates=[
            CandidateScore(node_id=node, score=99.99, factors={k: 0.123 for k in DEFAULT_WEIGHTS})
        ]
        * 3
        if explained
        else [],
        ready=False,
        ready_message="r" * limits.MAX_REPLICA_MESSAGE_CHARS,
        epoch=2**40,
        released=True,
    )


def test_a_workload_at_every_limit_fits_its_state_budget() -> None:
    """MAX_REPLICAS current replicas and as many outdated ones (a rollout), every text at
    its clip length, the newest MAX_EXPLAINED_REPLICAS with placement explanations, and
    a manifest just under its bound: the continue-as-new input and the status answer
    both stay under MAX_STATE_BYTES, itself well below Temporal's blob limit."""
    manifest = big_manifest("w" * 63, limits.MAX_MANIFEST_PAYLOAD_BYTES - 4 * 1024)
    limits.check_manifest(manifest, "default/w")  # just under its bound
    count = 2 * MAX_REPLICAS
    records = [worst_record(i, i >= count - limits.MAX_EXPLAINED_REPLICAS) for i in range(count)]
    state = WorkloadState(
        manifest=manifest,
        replicas=records,
        message="w" * limits.MAX_MESSAGE_CHARS,
        preempted_by=["p" * 36] * 64,
        blocked="b" * limits.MAX_MESSAGE_CHARS,
    )
    carried = WorkloadWorkflowInput(cluster="c" * 63, state=state)
    status = WorkloadStatus(
        namespace="s" * 63,
        name="w" * 63,
        generation=2**31,
        spec_hash="0" * 64,
        desired=MAX_REPLICAS,
        ready=MAX_REPLICAS,
        phase=WorkloadPhase.PROGRESSING,
        message=state.message,
        replicas=records,
        manifest=manifest,
        epoch=2**40,
    )
    assert limits.MAX_STATE_BYTES <= limits.TEMPORAL_BLOB_LIMIT_BYTES - 128 * 1024
    # Untrimmed it would not fit: the trimming is what keeps it under.
    assert limits.encoded_size(carried) > limits.MAX_STATE_BYTES
    size = limits.trim_state(state, limits.encoded_size)
    assert size <= limits.MAX_STATE_BYTES, limits.human(size)
    assert all(r.node_id and r.epoch and r.replica_id for r in state.replicas)  # kept
    status = status.model_copy(update={"replicas": state.replicas})
    for value in (WorkloadWorkflowInput(cluster="c" * 63, state=state), status):
        size = limits.encoded_size(value)
        assert size <= limits.MAX_STATE_BYTES + 1024, limits.human(size)


def crash_looping(r: ReplicaRecord, last_crash: float) -> ReplicaRecord:
    """``r`` with every crash-loop field at the longest the workflow keeps."""
    r.crash_times = [last_crash - i for i in reversed(range(CRASHES_KEPT))]
    r.crashes_reported = 2**31
    r.crash_exit_code = -(2**31)
    r.crash_reason = "c" * limits.MAX_REPLICA_MESSAGE_CHARS
    r.reschedule_times = [last_crash - i for i in reversed(range(RESCHEDULES_KEPT))]
    r.avoid_nodes = ["node-" + "y" * 58] * AVOID_KEPT
    r.replaces = r.replica_id
    r.rescheduled = True
    r.crash_loop = "l" * limits.MAX_REPLICA_MESSAGE_CHARS
    return r


@pytest.mark.parametrize("count", [2 * MAX_REPLICAS, MAX_REPLICAS])
def test_a_workload_whose_every_replica_crash_loops_still_fits(count: int) -> None:
    """The worst case above (or MAX_REPLICAS outside a rollout), and every replica also
    carries a full crash history: histories are forgotten, the oldest first, until the
    state fits; never a flag, id or node. In mid-rollout at every limit nothing else
    has room, so every history goes; outside one, the newest stay."""
    manifest = big_manifest("w" * 63, limits.MAX_MANIFEST_PAYLOAD_BYTES - 4 * 1024)
    base = 1_796_745_600.123456
    records = [
        crash_looping(worst_record(i, i >= count - limits.MAX_EXPLAINED_REPLICAS), base + i)
        for i in range(count)
    ]
    state = WorkloadState(manifest=manifest, replicas=records, message="w" * 1024)
    size = limits.trim_state(state, limits.encoded_size)
    assert size <= limits.MAX_STATE_BYTES, limits.human(size)
    assert all(r.rescheduled and r.node_id and r.epoch for r in state.replicas)
    assert all(r.crashes_reported == 2**31 for r in state.replicas)
    kept = [r for r in state.replicas if r.crash_times]
    forgot = [r for r in state.replicas if not r.crash_times]
    assert all(not (r.reschedule_times or r.avoid_nodes or r.crash_loop) for r in forgot)
    assert all(len(r.crash_times) == CRASHES_KEPT and r.avoid_nodes for r in kept)
    if count == MAX_REPLICAS:
        assert len(kept) > count // 4, len(kept)
        newest_forgotten = max(base + int(r.replica_id[-5:]) for r in forgot)
        assert newest_forgotten < min(r.crash_times[-1] for r in kept)


def test_trimming_stops_as_soon_as_the_state_fits() -> None:
    records = [worst_record(i, True) for i in range(10)]
    state = WorkloadState(manifest=sleeper("t", 10), replicas=records)
    untouched = limits.encoded_size(state)
    assert limits.trim_state(state, limits.encoded_size, budget=untouched) == untouched
    assert all(r.candidates for r in state.replicas)  # under budget: nothing shed
    explained = limits.encoded_size(state)
    size = limits.trim_state(state, limits.encoded_size, budget=explained - 1)
    assert not any(r.candidates for r in state.replicas)
    assert all(len(r.message) == limits.MAX_REPLICA_MESSAGE_CHARS for r in state.replicas)
    assert size < explained - 1  # explanations alone were enough
    limits.trim_state(state, limits.encoded_size, budget=1)
    assert all(len(r.message) <= limits.TRIMMED_MESSAGE_CHARS for r in state.replicas)
    assert all(not r.ready_message and not r.runtime_id for r in state.replicas)


def test_a_continue_as_new_input_carries_the_manifest_once() -> None:
    manifest = big_manifest("once", 100_000)
    carried = WorkloadWorkflowInput(cluster="c", state=WorkloadState(manifest=manifest))
    assert limits.encoded_size(carried) < limits.encoded_size(manifest) + 2_000
    assert carried.first_manifest == manifest
    with pytest.raises(ValueError, match="a manifest or a carried state"):
        WorkloadWorkflowInput(cluster="c")
