"""The generic descriptors every entity contract is made of.

A descriptor holds a message's registered name and its one input and one result type, and
sends the message through a :class:`temporalio.client.WorkflowHandle` with those types, so
a caller can neither misspell the name nor decode the result as the wrong model. The
workflows register their handlers under the same names (``@workflow.update(name=X.name)``)
and a conformance test holds both sides to the contract.

``input`` is ``None`` for a message that takes no argument; the typed methods then take
none either (``await STATUS.query(handle)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Generic, TypeVar, overload

from temporalio import workflow
from temporalio.client import (
    Client,
    ScheduleActionStartWorkflow,
    WithStartWorkflowOperation,
    WorkflowHandle,
    WorkflowUpdateHandle,
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from cloudless.vocabulary import AccessRole

I = TypeVar("I")  # noqa: E741  (the conventional name of an input type variable)
R = TypeVar("R")
S = TypeVar("S")


#: How often an Update refused with ``WorkflowNotReady`` is sent again (~2 s in all).
NOT_READY_RETRIES = 3
_NOT_READY = "temporal.api.errordetails.v1.WorkflowNotReadyFailure"


def not_ready(err: RPCError) -> bool:
    """Temporal refused the call because the workflow's last task failed: nothing was
    admitted, and the same call can be made again."""
    if err.status != RPCStatusCode.FAILED_PRECONDITION:
        return False
    try:
        details = err.grpc_status.details
    except Exception:  # an unparsable status is not this one
        return False
    return any(d.type_url.endswith(_NOT_READY) for d in details)


def _args(input_type: object, arg: object) -> list[object]:
    return [] if input_type is None else [arg]


class Update(Generic[I, R]):
    """A Temporal Update: ``name``, its input type (``None``: no argument), its result,
    and the least role that may send it from outside (``sender``; None: coordinators
    only, which the front enforces)."""

    __slots__ = ("input", "name", "result", "sender")

    def __init__(
        self, name: str, input: Any, result: Any, *, sender: AccessRole | None = None
    ) -> None:
        self.name = name
        self.input = input
        self.result = result
        self.sender = sender

    def __repr__(self) -> str:
        return f"Update({self.name!r})"

    @overload
    async def execute(
        self: Update[None, R],
        handle: WorkflowHandle[Any, Any],
        *,
        id: str | None = None,
        rpc_timeout: timedelta | None = None,
    ) -> R: ...

    @overload
    async def execute(
        self,
        handle: WorkflowHandle[Any, Any],
        arg: I,
        *,
        id: str | None = None,
        rpc_timeout: timedelta | None = None,
    ) -> R: ...

    async def execute(
        self,
        handle: WorkflowHandle[Any, Any],
        arg: Any = None,
        *,
        id: str | None = None,
        rpc_timeout: timedelta | None = None,
    ) -> Any:
        """Send the Update and wait for its result (``id`` makes a retry idempotent).

        An Update refused because the workflow's task had just failed (Temporal's
        ``WorkflowNotReady``: it was not admitted, so nothing happened) is sent again, a
        few times: the task is retried by the server and the workflow is soon ready."""
        for attempt in itertools.count():
            try:
                return await handle.execute_update(
                    self.name,
                    args=_args(self.input, arg),
                    id=id,
                    result_type=self.result,
                    rpc_timeout=rpc_timeout,
                )
            except RPCError as err:
                if not not_ready(err) or attempt >= NOT_READY_RETRIES:
                    raise
                await asyncio.sleep(0.25 * 2**attempt)
        raise AssertionError("unreachable")

    async def start(
        self,
        handle: WorkflowHandle[Any, Any],
        arg: I,
        *,
        wait_for_stage: WorkflowUpdateStage = WorkflowUpdateStage.ACCEPTED,
        id: str | None = None,
        rpc_timeout: timedelta | None = None,
    ) -> WorkflowUpdateHandle[R]:
        """Send the Update; return its handle once it reached ``wait_for_stage``."""
        started: WorkflowUpdateHandle[R] = await handle.start_update(
            self.name,
            args=_args(self.input, arg),
            wait_for_stage=wait_for_stage,
            id=id,
            result_type=self.result,
            rpc_timeout=rpc_timeout,
        )
        return started

    async def execute_with_start(
        self,
        client: Client,
        arg: I,
        *,
        start: WithStartWorkflowOperation[Any, Any],
        id: str | None = None,
        rpc_timeout: timedelta | None = None,
    ) -> R:
        """Update-with-start: start the workflow unless it runs, then send the Update."""
        try:
            result: R = await client.execute_update_with_start_workflow(
                self.name,
                args=_args(self.input, arg),
                start_workflow_operation=start,
                id=id,
                result_type=self.result,
                rpc_timeout=rpc_timeout,
            )
        except Exception:
            # The start half failed with it: take that error, or asyncio logs "exception
            # never retrieved" when the operation is collected, and under CPython 3.11 that
            # late traceback can break an import running at the time (SystemError).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(start.workflow_handle(), timeout=0.1)
            raise
        return result


class Query(Generic[I, R]):
    """A Temporal Query: ``name``, its input type (``None``: no argument), its result."""

    __slots__ = ("input", "name", "result", "sender")

    def __init__(
        self, name: str, input: Any, result: Any, *, sender: AccessRole | None = AccessRole.VIEWER
    ) -> None:
        self.name = name
        self.input = input
        self.result = result
        #: Queries only read: viewers may send them unless a contract says otherwise.
        self.sender = sender

    def __repr__(self) -> str:
        return f"Query({self.name!r})"

    @overload
    async def query(
        self: Query[None, R],
        handle: WorkflowHandle[Any, Any],
        *,
        rpc_timeout: timedelta | None = None,
    ) -> R: ...

    @overload
    async def query(
        self,
        handle: WorkflowHandle[Any, Any],
        arg: I,
        *,
        rpc_timeout: timedelta | None = None,
    ) -> R: ...

    async def query(
        self,
        handle: WorkflowHandle[Any, Any],
        arg: Any = None,
        *,
        rpc_timeout: timedelta | None = None,
    ) -> Any:
        return await handle.query(
            self.name, args=_args(self.input, arg), result_type=self.result, rpc_timeout=rpc_timeout
        )


class Signal(Generic[I]):
    """A Temporal Signal: ``name`` and its one input type."""

    __slots__ = ("input", "name", "sender")

    def __init__(self, name: str, input: Any, *, sender: AccessRole | None = None) -> None:
        self.name = name
        self.input = input
        #: Signals are the control plane's own reports (liveness, lost replicas): None
        #: (coordinators only) unless a contract opens one to people.
        self.sender = sender

    def __repr__(self) -> str:
        return f"Signal({self.name!r})"

    async def send(
        self, handle: WorkflowHandle[Any, Any], arg: I, *, rpc_timeout: timedelta | None = None
    ) -> None:
        """Signal the workflow; a missing one raises (see :func:`signal_unless_gone`)."""
        await handle.signal(self.name, args=_args(self.input, arg), rpc_timeout=rpc_timeout)

    async def send_external(self, workflow_id: str, arg: I) -> None:
        """From inside a workflow: signal another workflow by id."""
        await workflow.get_external_workflow_handle(workflow_id).signal(
            self.name, args=_args(self.input, arg)
        )


def gone(err: RPCError) -> bool:
    """Whether a call failed because the workflow does not exist or has completed.

    Temporal answers NOT_FOUND to both a workflow id it never saw and a signal, query or
    update addressed to a run that already completed.
    """
    return err.status == RPCStatusCode.NOT_FOUND


async def signal_unless_gone(
    handle: WorkflowHandle[Any, Any],
    signal: Signal[I],
    arg: I,
    *,
    attempts: int | None = 1,
    delay: float = 0.1,
    max_delay: float = 5.0,
    on_retry: Callable[[RPCError], None] | None = None,
) -> bool:
    """Deliver ``signal`` unless its workflow is gone; True if delivered.

    A workflow that does not exist or has completed is not an error (False): a deleted
    workload needs no wake-up, a stray certificate's node has nothing to update. Other
    RPC faults are retried with exponential backoff (``delay`` doubling up to
    ``max_delay``, ``on_retry`` told of each) up to ``attempts`` tries in all (``None``:
    until delivered), then raised.
    """
    for attempt in itertools.count():
        try:
            await signal.send(handle, arg)
            return True
        except RPCError as err:
            if gone(err):
                return False
            if attempts is not None and attempt + 1 >= attempts:
                raise
            if on_retry is not None:
                on_retry(err)
        await asyncio.sleep(min(max_delay, delay * 2**attempt))
    raise AssertionError("unreachable")


Message = Update[Any, Any] | Query[Any, Any] | Signal[Any]


class WorkflowType(Generic[I, R]):
    """A workflow type: its registered name, run input and result, task queue and messages.

    ``task_queue`` maps a cluster name to the queue the type's workers poll, so a caller
    that starts one never chooses the queue itself. ``id_prefix`` starts every id of this
    type (``workload/``); ``starter`` is the least role that may start one from outside
    (None: coordinators only). The front authorizes by both (``workers/front``).
    """

    __slots__ = ("id_prefix", "input", "messages", "name", "result", "starter", "task_queue")

    def __init__(
        self,
        name: str,
        input: Any,
        result: Any,
        *,
        task_queue: Callable[[str], str],
        id_prefix: str,
        messages: Sequence[Message] = (),
        starter: AccessRole | None = None,
    ) -> None:
        if not id_prefix.endswith("/") or id_prefix.count("/") != 1:
            raise ValueError(
                f"{name}: id_prefix must be one segment ending with '/' (the front looks "
                f"grants up by it), got {id_prefix!r}"
            )
        self.name = name
        self.input = input
        self.result = result
        self.task_queue = task_queue
        self.id_prefix = id_prefix
        self.starter = starter
        self.messages = tuple(messages)
        names = [m.name for m in self.messages]
        if len(set(names)) != len(names):
            raise ValueError(f"{name}: a message name is declared twice: {sorted(names)}")

    def __repr__(self) -> str:
        return f"WorkflowType({self.name!r})"

    @property
    def updates(self) -> dict[str, Update[Any, Any]]:
        return {m.name: m for m in self.messages if isinstance(m, Update)}

    @property
    def signals(self) -> dict[str, Signal[Any]]:
        return {m.name: m for m in self.messages if isinstance(m, Signal)}

    @property
    def queries(self) -> dict[str, Query[Any, Any]]:
        return {m.name: m for m in self.messages if isinstance(m, Query)}

    def handle(self, client: Client, workflow_id: str) -> WorkflowHandle[Any, R]:
        """A handle on the latest run of ``workflow_id`` whose result decodes as ``R``."""
        return client.get_workflow_handle(workflow_id, result_type=self.result)

    async def start(
        self,
        client: Client,
        arg: I,
        *,
        id: str,
        cluster: str,
        start_signal: Signal[S] | None = None,
        start_signal_arg: S | None = None,
        **options: Any,
    ) -> WorkflowHandle[Any, R]:
        """Start a run on the cluster's queue (``options``: Client.start_workflow's).

        With ``start_signal`` this is signal-with-start: the signal is delivered to the
        running workflow, or to a new one started with ``arg``.
        """
        if start_signal is not None:
            options["start_signal"] = start_signal.name
            options["start_signal_args"] = _args(start_signal.input, start_signal_arg)
        handle: WorkflowHandle[Any, R] = await client.start_workflow(
            self.name,
            arg,
            id=id,
            task_queue=self.task_queue(cluster),
            result_type=self.result,
            **options,
        )
        return handle

    async def execute(self, client: Client, arg: I, *, id: str, cluster: str, **options: Any) -> R:
        """Start a run and wait for its result (``options``: Client.execute_workflow's)."""
        result: R = await client.execute_workflow(
            self.name,
            arg,
            id=id,
            task_queue=self.task_queue(cluster),
            result_type=self.result,
            **options,
        )
        return result

    async def execute_now(
        self, client: Client, arg: I, *, id_base: str, cluster: str, timeout: timedelta
    ) -> R:
        """A run on demand beside the scheduled ones: id ``<id_base>/now-<random>``, so it
        never collides with a Schedule's run (whose ids are ``<id_base>-<time>``)."""
        return await self.execute(
            client,
            arg,
            id=f"{id_base}/now-{uuid.uuid4().hex[:12]}",
            cluster=cluster,
            execution_timeout=timeout,
        )

    def with_start(
        self,
        arg: I,
        *,
        id: str,
        cluster: str,
        id_conflict_policy: WorkflowIDConflictPolicy = WorkflowIDConflictPolicy.USE_EXISTING,
        **options: Any,
    ) -> WithStartWorkflowOperation[Any, R]:
        """The start half of an update-with-start (see :meth:`Update.execute_with_start`)."""
        return WithStartWorkflowOperation(
            self.name,
            arg,
            id=id,
            task_queue=self.task_queue(cluster),
            id_conflict_policy=id_conflict_policy,
            result_type=self.result,
            **options,
        )

    def schedule_action(
        self, arg: I, *, id: str, cluster: str, **options: Any
    ) -> ScheduleActionStartWorkflow:
        """A Temporal Schedule action that starts this workflow."""
        return ScheduleActionStartWorkflow(
            self.name,
            arg,
            id=id,
            task_queue=self.task_queue(cluster),
            **options,
        )

    def visibility_query(self, *conditions: str) -> str:
        """A visibility (list) query for this type's workflows, with extra conditions."""
        return " AND ".join([f"WorkflowType = '{self.name}'", *conditions])
