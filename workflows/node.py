"""``node/<id>``: one node's identity, labels, zone, capacity and state machine.

The node entity is the source of truth for a node's facts; the ledger keeps a derived
copy for placement, refreshed by ``publish_node`` on every state change.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.agents import AgentActivities
    from activities.ledger import LedgerActivities
    from cloudless.model import (
        EnrollSignal,
        NodeRecord,
        NodeState,
        NodeStatus,
        NodeTransition,
        NodeWorkflowInput,
        UpsertNodeInput,
    )
    from cloudless.naming import SA_NODE, SA_PHASE

#: Transitions kept for ``describe node``; older ones live in earlier runs' history.
MAX_TRANSITIONS = 50
MAX_HISTORY_EVENTS = 5_000
#: How long a freshly enrolled agent has to become reachable before it is marked Offline.
PROBE_DEADLINE = timedelta(minutes=2)


@workflow.defn(name="NodeWorkflow")
class NodeWorkflow:
    @workflow.init
    def __init__(self, inp: NodeWorkflowInput) -> None:
        self._cluster = inp.cluster
        self._status: NodeStatus | None = inp.carried
        self._pending: list[NodeRecord] = []
        if inp.record is not None:
            self._pending.append(inp.record)

    @workflow.run
    async def run(self, inp: NodeWorkflowInput) -> None:
        while True:
            await workflow.wait_condition(
                lambda: bool(self._pending) or workflow.info().is_continue_as_new_suggested()
            )
            while self._pending:
                record = self._pending.pop(0)
                await self._enrolled(record)
            if (
                workflow.info().is_continue_as_new_suggested()
                or workflow.info().get_current_history_length() > MAX_HISTORY_EVENTS
            ):
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    NodeWorkflowInput(cluster=self._cluster, carried=self._status)
                )

    async def _enrolled(self, record: NodeRecord) -> None:
        # Joining is recorded first so the UI shows the node the moment it enrolls; it is
        # Ready only once the coordinator has reached the agent over mTLS.
        self._transition(record, NodeState.JOINING, "enrolled with a bootstrap token")
        await self._publish(record, NodeState.JOINING)
        try:
            runtimes = await workflow.execute_activity_method(
                AgentActivities.probe_agent,
                record,
                start_to_close_timeout=timedelta(seconds=10),
                schedule_to_close_timeout=PROBE_DEADLINE,
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(milliseconds=100),
                    backoff_coefficient=1.5,
                    maximum_interval=timedelta(seconds=5),
                    non_retryable_error_types=["AgentIdentityMismatch", "AgentAuthFailed"],
                ),
            )
        except ActivityError as err:
            reason = err.cause.message if isinstance(err.cause, ApplicationError) else str(err)
            self._transition(record, NodeState.OFFLINE, f"agent unreachable: {reason}")
            await self._publish(record, NodeState.OFFLINE)
            return
        record = record.model_copy(update={"runtimes": runtimes})
        self._transition(record, NodeState.READY, "agent reached over mTLS")
        await self._publish(record, NodeState.READY)

    async def _publish(self, record: NodeRecord, state: NodeState) -> None:
        await workflow.execute_activity_method(
            LedgerActivities.publish_node,
            UpsertNodeInput(record=record, state=state),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
        )

    def _transition(self, record: NodeRecord, state: NodeState, reason: str) -> None:
        transitions = self._status.transitions if self._status else []
        transitions = [*transitions, NodeTransition(state=state, at=workflow.now(), reason=reason)]
        self._status = NodeStatus(
            record=record, state=state, transitions=transitions[-MAX_TRANSITIONS:]
        )
        workflow.upsert_search_attributes(
            [SA_NODE.value_set([record.node_id]), SA_PHASE.value_set(state.value)]
        )

    @workflow.signal(name="enroll")
    def enroll(self, sig: EnrollSignal) -> None:
        self._pending.append(sig.record)

    @workflow.query
    def describe(self) -> NodeStatus | None:
        return self._status
