"""Whether a workflow can make progress, read from Temporal rather than asked of it.

A workflow whose workflow task fails (a payload Temporal refuses, a nondeterminism error
after a code change, an input this version cannot decode) answers no query, accepts no
update and completes no delete, and Temporal retries that task forever. Nothing in the
workflow can report it; Temporal can: ``DescribeWorkflowExecution`` shows the pending
workflow task's attempt, and the history keeps the failure of its first failed attempt.
Callers (the client library's list, describe and delete; the node reconciliation) use
:func:`workflow_task_failure` to show such a workflow as Stuck with its reason instead of
failing, or waiting, on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.failure.v1 import Failure
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryReverseRequest
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowExecutionStatus
from temporalio.exceptions import FailureError

from cloudless.contracts.limits import MAX_MESSAGE_CHARS, clip

#: A pending workflow task on its second attempt or later has failed at least once.
FAILING_ATTEMPT = 2
#: An activity on this attempt or later is worth showing: it has failed for a while.
RETRYING_ATTEMPT = 5
#: The failure's share of a message (the way out follows it).
MAX_REASON_CHARS = 480
#: History events read back from the end to find the failure (signals may follow it).
MAX_EVENTS_SCANNED = 400
_PAGE = 50
#: Causes that say no more than the failure itself does.
_PLAIN_CAUSES = (
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNSPECIFIED,
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_WORKFLOW_WORKER_UNHANDLED_FAILURE,
)
_CAUSE_PREFIX = "WORKFLOW_TASK_FAILED_CAUSE_"
_DOC_LINKS = re.compile(r"For further information visit \S+")


@dataclass(frozen=True)
class TaskFailure:
    """A running workflow's workflow task fails: on which attempt, and why."""

    attempt: int
    reason: str

    def message(self, way_out: str = "") -> str:
        """One line for ``get``/``describe``: what fails, why, and (``way_out``) the fix."""
        reason = clip(self.reason, MAX_REASON_CHARS)
        text = f"workflow task failing (attempt {self.attempt}): {reason}"
        return clip(f"{text}; {way_out}" if way_out else text, MAX_MESSAGE_CHARS)


async def workflow_task_failure(
    client: Client, workflow_id: str, *, rpc_timeout: timedelta | None = None
) -> TaskFailure | None:
    """The failure of ``workflow_id``'s workflow task if it is failing, else None (also
    when the workflow is not running). Raises what Temporal raises (NOT_FOUND: no such
    workflow)."""
    desc = await client.get_workflow_handle(workflow_id).describe(rpc_timeout=rpc_timeout)
    raw = desc.raw_description
    if desc.status != WorkflowExecutionStatus.RUNNING or not raw.HasField("pending_workflow_task"):
        return None
    attempt = raw.pending_workflow_task.attempt
    if attempt < FAILING_ATTEMPT:
        return None
    reason = await _last_failure(client, workflow_id, desc.run_id, rpc_timeout)
    return TaskFailure(attempt=attempt, reason=reason)


async def retrying_activities(client: Client, description: WorkflowExecutionDescription) -> str:
    """``act failing (attempt N): why`` for each activity of the run that has been failing
    for a while ("" if none): a workflow waiting on one answers queries but does not move.
    """
    notes = []
    for pending in description.raw_description.pending_activities:
        if pending.attempt < RETRYING_ATTEMPT:
            continue
        why = ""
        if pending.HasField("last_failure"):
            why = ": " + clip(await _failure_text(client, pending.last_failure), MAX_REASON_CHARS)
        notes.append(f"{pending.activity_type.name} failing (attempt {pending.attempt}){why}")
    return "; ".join(notes)


async def _last_failure(
    client: Client, workflow_id: str, run_id: str, rpc_timeout: timedelta | None
) -> str:
    """The decoded failure of the run's latest failed workflow task, read backwards."""
    request = GetWorkflowExecutionHistoryReverseRequest(
        namespace=client.namespace,
        execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
        maximum_page_size=_PAGE,
    )
    scanned = 0
    while scanned < MAX_EVENTS_SCANNED:
        page = await client.workflow_service.get_workflow_execution_history_reverse(
            request, timeout=rpc_timeout
        )
        for event in page.history.events:
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                attrs = event.workflow_task_failed_event_attributes
                text = await _failure_text(client, attrs.failure)
                if attrs.cause not in _PLAIN_CAUSES:
                    name = WorkflowTaskFailedCause.Name(attrs.cause).removeprefix(_CAUSE_PREFIX)
                    text = f"{text} [{name}]"
                return text
        scanned += len(page.history.events)
        if not page.next_page_token or not page.history.events:
            break
        request.next_page_token = page.next_page_token
    return "the failure is not in the recent history (see the workflow in the Temporal UI)"


async def _failure_text(client: Client, failure: Failure) -> str:
    """``Type: message <- Cause: message`` of a failure, decrypted with the client's codec."""
    try:
        err = await client.data_converter.decode_failure(failure)
    except Exception as decode_error:  # a failure this process cannot decrypt
        return f"(the failure could not be decoded here: {decode_error})"
    parts: list[str] = []
    seen = 0
    current: BaseException | None = err
    while current is not None and seen < 4:
        kind = getattr(current, "type", None) or type(current).__name__
        parts.append(f"{kind}: {current.message if isinstance(current, FailureError) else current}")
        current = current.cause if isinstance(current, FailureError) else current.__cause__
        seen += 1
    text = _DOC_LINKS.sub("", " <- ".join(parts))  # pydantic's "further information" links
    return re.sub(r"\s+", " ", text).strip()


__all__ = [
    "FAILING_ATTEMPT",
    "RETRYING_ATTEMPT",
    "TaskFailure",
    "retrying_activities",
    "workflow_task_failure",
]
