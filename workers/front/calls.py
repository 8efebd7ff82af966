"""What a Temporal API call targets, read from its request, and what people may send.

The front authorizes a call by its target (``policies.access``): the workflow id and the
messages or workflow type a request carries. Only those fields are read; payloads stay
sealed (the front never needs to decode one). The grants come from the contracts, where
each message and workflow type declares the least role that may send or start it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError
from temporalio.api.workflowservice.v1 import (
    ExecuteMultiOperationRequest,
    QueryWorkflowRequest,
    RequestCancelWorkflowExecutionRequest,
    SignalWithStartWorkflowExecutionRequest,
    SignalWorkflowExecutionRequest,
    StartWorkflowExecutionRequest,
    TerminateWorkflowExecutionRequest,
    UpdateWorkflowExecutionRequest,
)

from cloudless.contracts import WORKFLOW_TYPES
from cloudless.vocabulary import AccessRole
from policies.access import Call, Grants


def contract_grants() -> Grants:
    """Every message and workflow type a contract opens to people, with its least role."""
    messages: dict[tuple[str, str], AccessRole] = {}
    starts: dict[tuple[str, str], AccessRole] = {}
    for workflow in WORKFLOW_TYPES.values():
        for message in workflow.messages:
            if message.sender is not None:
                messages[(workflow.id_prefix, message.name)] = message.sender
        if workflow.starter is not None:
            starts[(workflow.id_prefix, workflow.name)] = workflow.starter
    return Grants(messages=messages, starts=starts)


def _start(r: StartWorkflowExecutionRequest) -> Call:
    return Call("StartWorkflowExecution", r.workflow_id, starts=r.workflow_type.name)


def _signal(r: SignalWorkflowExecutionRequest) -> Call:
    return Call("SignalWorkflowExecution", r.workflow_execution.workflow_id, (r.signal_name,))


def _signal_with_start(r: SignalWithStartWorkflowExecutionRequest) -> Call:
    return Call(
        "SignalWithStartWorkflowExecution",
        r.workflow_id,
        (r.signal_name,),
        starts=r.workflow_type.name,
    )


def _update(r: UpdateWorkflowExecutionRequest) -> Call:
    return Call(
        "UpdateWorkflowExecution", r.workflow_execution.workflow_id, (r.request.input.name,)
    )


def _multi(r: ExecuteMultiOperationRequest) -> Call:
    """Update-with-start: one workflow, a start and an update (Temporal checks the ids
    agree; so does this, so a call cannot be authorized on one id and act on another)."""
    ids: set[str] = set()
    starts, messages = "", []
    for op in r.operations:
        if op.HasField("start_workflow"):
            ids.add(op.start_workflow.workflow_id)
            starts = op.start_workflow.workflow_type.name
        elif op.HasField("update_workflow"):
            ids.add(op.update_workflow.workflow_execution.workflow_id)
            messages.append(op.update_workflow.request.input.name)
        else:
            return Call("ExecuteMultiOperation")  # an operation kind this front does not know
    if len(ids) != 1:
        return Call("ExecuteMultiOperation")
    return Call("ExecuteMultiOperation", ids.pop(), tuple(messages), starts)


def _query(r: QueryWorkflowRequest) -> Call:
    return Call("QueryWorkflow", r.execution.workflow_id, (r.query.query_type,))


def _terminate(r: TerminateWorkflowExecutionRequest) -> Call:
    return Call("TerminateWorkflowExecution", r.workflow_execution.workflow_id)


def _cancel(r: RequestCancelWorkflowExecutionRequest) -> Call:
    return Call("RequestCancelWorkflowExecution", r.workflow_execution.workflow_id)


_READERS: dict[str, tuple[Any, Callable[[Any], Call]]] = {
    "StartWorkflowExecution": (StartWorkflowExecutionRequest, _start),
    "SignalWorkflowExecution": (SignalWorkflowExecutionRequest, _signal),
    "SignalWithStartWorkflowExecution": (
        SignalWithStartWorkflowExecutionRequest,
        _signal_with_start,
    ),
    "UpdateWorkflowExecution": (UpdateWorkflowExecutionRequest, _update),
    "ExecuteMultiOperation": (ExecuteMultiOperationRequest, _multi),
    "QueryWorkflow": (QueryWorkflowRequest, _query),
    "TerminateWorkflowExecution": (TerminateWorkflowExecutionRequest, _terminate),
    "RequestCancelWorkflowExecution": (RequestCancelWorkflowExecutionRequest, _cancel),
}


def read_call(name: str, request: bytes) -> Call:
    """The call's target; a request that does not parse names no target (and so is
    refused wherever a target is needed)."""
    reader = _READERS.get(name)
    if reader is None:
        return Call(name)
    message_type, read = reader
    try:
        return read(message_type.FromString(request))
    except DecodeError:
        return Call(name)
