"""What every ledger activity shares: the coordinator's handle on ``cluster/<name>``, its
batched writer, its scheduler soft state, and the wake-up and eviction signals that
follow a committed write."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities.ledger_writer import LedgerWriter
from activities.scheduler_index import SchedulerState
from cloudless.contracts import (
    LedgerHandle,
    Signal,
    WorkloadHandle,
    signal_unless_gone,
    workload,
)
from cloudless.model import (
    AwaitCapacityInput,
    CapacityAvailable,
    CommitPlanInput,
    CommitPlanResult,
    LedgerOp,
    Resources,
)
from cloudless.revocation import RevocationList

I = TypeVar("I")  # noqa: E741  (a message's input type)

#: Tries of a wake-up or eviction signal before giving up on it.
SIGNAL_ATTEMPTS = 5


class PlanRejected(Exception):
    """The ledger refused a plan (it would over-commit a node, or a node is not Ready)."""


class LedgerBase:
    """Bound to one Temporal client and cluster by the coordinator worker; holds the
    coordinator's scheduler soft state."""

    def __init__(self, client: Client, cluster: str) -> None:
        self._client = client
        self._cluster = cluster
        self.ledger = LedgerHandle(client, cluster)
        self.scheduler = SchedulerState(self.ledger.snapshot)
        self.scheduler.poll_version = self.ledger.version
        self.writer = LedgerWriter(lambda: self.ledger)
        #: This process's list of revoked certificates: a node removed through it is
        #: refused here at once (the others reload it from the ledger within seconds).
        self.revocations: RevocationList | None = None

    async def commit(self, plan: CommitPlanInput) -> CommitPlanResult:
        """Commit through the batched writer; raises :class:`PlanRejected` as the ledger's
        validator would (the ledger deduplicates retried plans by ``plan_id``)."""
        result = await self.writer.submit(LedgerOp(commit=plan))
        if result.error_type == "PlanRejected":
            raise PlanRejected(result.error)
        if result.error_type or result.commit is None:
            # A plan of a run that is over (StaleOwner) will never be accepted.
            raise ApplicationError(
                result.error,
                type=result.error_type or "LedgerError",
                non_retryable=result.error_type == "StaleOwner",
            )
        if result.commit.applied:  # apply_batch does not echo a freshly applied plan
            return result.commit.model_copy(update={"allocations": plan.allocations})
        return result.commit

    async def _await_capacity(self, workload_key: str, res: Resources, version: int) -> bool:
        result = await self.writer.submit(
            LedgerOp(
                await_capacity=AwaitCapacityInput(
                    workload=workload_key, resources=res, version=version
                )
            )
        )
        return bool(result.registered)

    async def _signal_workload(self, key: str, signal: Signal[I], arg: I) -> None:
        """Signal a workload, retrying briefly; never fails the caller.

        The write that prompted the signal is committed already, and a failed activity
        would be retried against the ledger's plan cache, which does not signal again. A
        lost wake-up costs the workload its retry backoff; a lost eviction is logged. A
        deleted workload needs no wake-up or eviction.
        """
        handle = WorkloadHandle.of(self._client, key).handle
        try:
            await signal_unless_gone(handle, signal, arg, attempts=SIGNAL_ATTEMPTS)
        except RPCError as err:
            activity.logger.warning("could not signal %s to %s: %s", signal.name, key, err)

    async def wake(self, keys: list[str], reason: str) -> None:
        """Tell pending workloads that room may have appeared (a write elsewhere freed it)."""
        await self._wake(keys, reason)

    async def _wake(self, keys: list[str], reason: str) -> None:
        """Tell pending workloads that room may have appeared (instead of them polling)."""
        await asyncio.gather(
            *(
                self._signal_workload(
                    k, workload.CAPACITY_AVAILABLE, CapacityAvailable(reason=reason)
                )
                for k in keys
            )
        )
