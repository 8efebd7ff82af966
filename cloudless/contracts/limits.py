"""The bounds at the Temporal boundary, in one place, each with its reason.

Temporal refuses a payload over its blob limit (2 MiB by default, the server's
``limit.blobSize.error``). A client call that carries one fails at once, which is the
good case; a *workflow* that produces one (a continue-as-new input, an activity input, a
query answer) cannot complete its workflow task, and Temporal retries that task forever:
the workflow stops answering queries, updates and deletes. So every value is bounded
before it reaches Temporal, with room to spare:

* what a client sends (workflow inputs, updates, signals, query arguments) is measured
  encoded by :class:`PayloadLimits`, a client interceptor every Cloudless client carries,
  and refused over :data:`MAX_PAYLOAD_BYTES` with an error naming the limit;
* a workload manifest travels in several of its workflow's payloads, each time beside the
  replica records, so it has its own, smaller bound, :data:`MAX_MANIFEST_PAYLOAD_BYTES`, checked
  by the client before it sends and again by the workflow's validator (a client without
  the interceptor cannot wedge it either);
* what a workflow keeps and answers grows with its replicas: free text is clipped
  (:data:`MAX_MESSAGE_CHARS`, :data:`MAX_REPLICA_MESSAGE_CHARS`), placement explanations
  are kept for the newest :data:`MAX_EXPLAINED_REPLICAS` replicas only, and a workload
  state that still outgrows :data:`MAX_STATE_BYTES` sheds what only explains, then the
  oldest crash histories (:func:`trim_state`), so a workload at ``MAX_REPLICAS`` in
  mid-rollout, every text at its longest and every replica crash-looping, still fits
  (``tests/unit/test_limits.py`` builds those cases and measures).

The operator-facing table is in ``docs/operations.md`` ("Limits").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from temporalio import client as temporal_client
from temporalio.client import (
    OutboundInterceptor,
    QueryWorkflowInput,
    SignalWorkflowInput,
    StartWorkflowInput,
    StartWorkflowUpdateInput,
    StartWorkflowUpdateWithStartInput,
    WorkflowHandle,
    WorkflowUpdateHandle,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import PayloadConverter

from cloudless.errors import PayloadTooLargeError
from cloudless.model import WorkloadState

KIB: Final = 1024
MIB: Final = 1024 * KIB

#: Temporal's default blob limit (``limit.blobSize.error``): one payload over it is refused.
TEMPORAL_BLOB_LIMIT_BYTES: Final = 2 * MIB
#: One payload a Cloudless client sends: half the blob limit. Ample for every message
#: Cloudless sends (a ledger batch of 4,000 allocations is ~600 KiB), and what a workflow
#: derives from one input still fits beside its own state.
MAX_PAYLOAD_BYTES: Final = 1 * MIB
#: One workload manifest, encoded. It rides in the workflow's start input, each apply,
#: its carried state and status answers (with up to 2 x MAX_REPLICAS replica records), and
#: every placement and start batch. Large data belongs in a secret or the image. A little
#: above the manifest loader's own bound (256 KiB of canonical JSON, ``cloudless.spec``),
#: so any manifest the loader accepts gets through; this is the backstop for manifests
#: that reach the client library or a workflow without passing the loader.
MAX_MANIFEST_PAYLOAD_BYTES: Final = 288 * KIB
#: What the payload codec adds to a payload (nonce, tag, wrapped data key, metadata);
#: measured at ~230 bytes, see ``tests/unit/test_limits.py``.
CODEC_OVERHEAD_BYTES: Final = 512
#: A workload's carried state (and its status answer), encoded. Only a workload at every
#: limit at once comes near it; the last 128 KiB of the blob limit are margin (the codec,
#: the status fields around the state).
MAX_STATE_BYTES: Final = 15 * MIB // 8
#: Below this many replica records a state cannot approach its budget (records are at
#: most ~1.4 KiB, 64 explanations ~1 KiB more each, plus the manifest): not measured.
TRIM_FROM_REPLICAS: Final = 256
#: What is left of a replica's message once an oversized state was trimmed.
TRIMMED_MESSAGE_CHARS: Final = 48
#: A workload's message, as kept in its state and shown by ``describe``.
MAX_MESSAGE_CHARS: Final = 1024
#: A replica's message and readiness message (agents and probes report them).
MAX_REPLICA_MESSAGE_CHARS: Final = 256
#: Replicas that keep their placement explanation (top candidates with factor scores,
#: ~1 KiB each): the newest placements; older replicas keep their score only.
MAX_EXPLAINED_REPLICAS: Final = 64

#: Where each bound is defined, for error messages.
_WHERE = "cloudless/contracts/limits.py"


def human(n: int) -> str:
    """``256 KiB``, ``1.4 MiB``: sizes as the limits are written."""
    if n >= MIB:
        return f"{n / MIB:.1f} MiB".replace(".0 MiB", " MiB")
    if n >= KIB:
        return f"{n / KIB:.1f} KiB".replace(".0 KiB", " KiB")
    return f"{n} bytes"


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis marks the cut)."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def trim_state(
    state: WorkloadState, size: Callable[[WorkloadState], int], budget: int = MAX_STATE_BYTES
) -> int:
    """Shed what only explains until ``state`` encodes within ``budget``; its final size.

    In order, each step only while still over: every placement explanation (scores
    stay); then replica messages, crash reasons and crash-loop notes (clipped to
    :data:`TRIMMED_MESSAGE_CHARS`), readiness messages and runtime ids; last, the crash
    histories of the replicas that crashed longest ago (see
    :func:`_forget_stalest_crashes`). Ids, nodes, phases, epochs, resources and flags
    are never touched. Mutates ``state``; deterministic, so a workflow may call it.
    """
    current = size(state)
    if current <= budget:
        return current
    for r in state.replicas:
        r.candidates = []
    current = size(state)
    if current <= budget:
        return current
    for r in state.replicas:
        r.message = clip(r.message, TRIMMED_MESSAGE_CHARS)
        r.crash_reason = clip(r.crash_reason, TRIMMED_MESSAGE_CHARS)
        r.crash_loop = clip(r.crash_loop, TRIMMED_MESSAGE_CHARS)
        r.ready_message = ""
        r.runtime_id = ""
    current = size(state)
    if current <= budget:
        return current
    _forget_stalest_crashes(state, current - budget)
    return size(state)


def _forget_stalest_crashes(state: WorkloadState, excess: int) -> None:
    """Clear crash histories, the replica whose last crash is oldest first, until about
    ``excess`` bytes are gone. Only hundreds of replicas crash-looping at once get here
    (a full history is ~1.4 KiB against a record's ~0.9 KiB). Forgetting errs one way:
    a replica that forgot its crashes (and the verdict on them, ``crash_loop``) counts
    them again, so a crash loop is acted on later, never sooner; its ``rescheduled``
    flag and report counter stay, so a move under way completes and no report counts
    twice.
    """
    crashed = [r for r in state.replicas if r.crash_times or r.reschedule_times or r.avoid_nodes]
    crashed.sort(key=lambda r: (r.crash_times[-1] if r.crash_times else 0.0, r.replica_id))
    for r in crashed:
        if excess <= 0:
            return
        before = len(r.model_dump_json())
        r.crash_times, r.reschedule_times, r.avoid_nodes = [], [], []
        r.crash_exit_code, r.crash_reason, r.replaces, r.crash_loop = None, "", "", ""
        excess -= before - len(r.model_dump_json())


def encoded_size(value: Any, converter: PayloadConverter | None = None) -> int:
    """Bytes ``value`` takes as one Temporal payload, codec included (with margin)."""
    conv = converter or pydantic_data_converter.payload_converter
    (payload,) = conv.to_payloads([value])
    return payload.ByteSize() + CODEC_OVERHEAD_BYTES


def check_payload(
    what: str, values: Sequence[Any], converter: PayloadConverter | None = None
) -> None:
    """Raise :class:`PayloadTooLargeError` if any of ``values`` is over the payload bound."""
    for value in values:
        size = encoded_size(value, converter)
        if size > MAX_PAYLOAD_BYTES:
            raise PayloadTooLargeError(
                f"{what} is {human(size)} encoded, over the {human(MAX_PAYLOAD_BYTES)} limit "
                f"on one payload sent to Temporal (MAX_PAYLOAD_BYTES in {_WHERE}; Temporal "
                f"refuses payloads over {human(TEMPORAL_BLOB_LIMIT_BYTES)}); nothing was sent",
                size=size,
                limit=MAX_PAYLOAD_BYTES,
            )


def check_manifest(manifest: Any, key: str, converter: PayloadConverter | None = None) -> None:
    """Raise :class:`PayloadTooLargeError` if workload ``key``'s manifest is over its bound."""
    size = encoded_size(manifest, converter)
    if size > MAX_MANIFEST_PAYLOAD_BYTES:
        raise PayloadTooLargeError(
            f"workload {key}: the manifest is {human(size)} encoded, over the "
            f"{human(MAX_MANIFEST_PAYLOAD_BYTES)} limit on a workload manifest "
            f"(MAX_MANIFEST_PAYLOAD_BYTES in {_WHERE}: it travels in every payload of its "
            "workflow, beside the replica records); keep large data out of it (a secret "
            "through valueFrom.secretKeyRef, or the image); nothing was sent",
            size=size,
            limit=MAX_MANIFEST_PAYLOAD_BYTES,
        )


class PayloadLimits(temporal_client.Interceptor):
    """Client interceptor: refuse, before sending, any workflow input, update, signal or
    query argument over :data:`MAX_PAYLOAD_BYTES` (measured with the client's payload
    converter, plus the codec's overhead)."""

    def __init__(self, converter: PayloadConverter | None = None) -> None:
        self.converter = converter or pydantic_data_converter.payload_converter

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _Outbound(next, self.converter)


class _Outbound(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, converter: PayloadConverter) -> None:
        super().__init__(next)
        self._converter = converter

    def _check(self, what: str, values: Sequence[Any]) -> None:
        check_payload(what, values, self._converter)

    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        self._check(f"the input of workflow {input.id}", input.args)
        if input.start_signal:
            self._check(f"signal {input.start_signal!r} to {input.id}", input.start_signal_args)
        return await super().start_workflow(input)

    async def signal_workflow(self, input: SignalWorkflowInput) -> None:
        self._check(f"signal {input.signal!r} to {input.id}", input.args)
        await super().signal_workflow(input)

    async def query_workflow(self, input: QueryWorkflowInput) -> Any:
        self._check(f"query {input.query!r} of {input.id}", input.args)
        return await super().query_workflow(input)

    async def start_workflow_update(
        self, input: StartWorkflowUpdateInput
    ) -> WorkflowUpdateHandle[Any]:
        self._check(f"update {input.update!r} of {input.id}", input.args)
        return await super().start_workflow_update(input)

    async def start_update_with_start_workflow(
        self, input: StartWorkflowUpdateWithStartInput
    ) -> WorkflowUpdateHandle[Any]:
        start, update = input.start_workflow_input, input.update_workflow_input
        self._check(f"the input of workflow {start.id}", start.args)
        self._check(f"update {update.update!r} of {start.id}", update.args)
        return await super().start_update_with_start_workflow(input)


__all__ = [
    "CODEC_OVERHEAD_BYTES",
    "MAX_EXPLAINED_REPLICAS",
    "MAX_MANIFEST_PAYLOAD_BYTES",
    "MAX_MESSAGE_CHARS",
    "MAX_PAYLOAD_BYTES",
    "MAX_REPLICA_MESSAGE_CHARS",
    "MAX_STATE_BYTES",
    "TEMPORAL_BLOB_LIMIT_BYTES",
    "TRIMMED_MESSAGE_CHARS",
    "TRIM_FROM_REPLICAS",
    "PayloadLimits",
    "check_manifest",
    "check_payload",
    "clip",
    "encoded_size",
    "human",
    "trim_state",
]
