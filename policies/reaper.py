"""The reaper's decisions: which reservations and which running replicas nobody owns.

Two leaks can outlive the workflow that caused them:

* **Reservations.** The ledger (``cluster/<name>``) holds, per workload, what its
  replicas reserve on each node, tagged with the *owner token* of the workload workflow
  run that placed them (the ledger version at which that run claimed the workload). A run
  that is terminated, fails, times out or is deleted before it released them leaves them
  behind: capacity lost for good. :func:`workloads_to_reap` finds them.
* **Replicas.** A replica whose workload no longer places it on its node (the workload
  is gone, or moved the replica, or placed it again since) may still run there.
  :func:`orphaned_replicas` finds them in what an agent reports.

Pure code: no I/O, no clock (``now`` is passed in); the activities in
``activities/reaper.py`` gather the facts, call these functions and act on the answer.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: Reaped per run at most (each is one ledger write): bounded work per pass.
MAX_REAPS_PER_RUN = 200
#: Replicas stopped per node per run at most.
MAX_STOPS_PER_NODE = 100
#: A replica that started less than this long ago is left alone this time.
DEFAULT_GRACE_SECONDS = 60.0


class RunStatus(enum.StrEnum):
    """What Temporal says about the workload workflow that should own a reservation."""

    RUNNING = "Running"
    #: Closed: completed, failed, cancelled, terminated, continued-as-new past, timed out.
    CLOSED = "Closed"
    #: No such workflow (never started here, or its history is gone).
    ABSENT = "Absent"
    #: Running, but on another cluster's task queue: not ours to judge by.
    FOREIGN = "Foreign"


@dataclass(frozen=True, slots=True)
class HeldWorkload:
    """A workload the ledger holds reservations for, and the owner token they carry."""

    key: str  # "<namespace>/<name>"
    owner: int  # 0: placed without an owner token


@dataclass(frozen=True, slots=True)
class WorkloadRun:
    """What the reaper learnt of a workload's workflow.

    ``owner`` is the running run's owner token, when its ``status`` was asked (0: not
    asked, or a run that never claimed its workload).
    """

    status: RunStatus
    detail: str = ""  # e.g. "Terminated": said in the reap's reason
    owner: int = 0


@dataclass(frozen=True, slots=True)
class Reap:
    """Release everything ``key`` holds if it still belongs to ``owner``."""

    key: str
    owner: int
    reason: str


def reap_reason(held: HeldWorkload, run: WorkloadRun | None) -> str | None:
    """Why ``held``'s reservations belong to nobody, or None if they are (or may be) live.

    * no workflow, or a closed one, or one of another cluster: nobody will release them;
    * a running run with a newer owner token than the reservations: they were left by an
      earlier run of the same workload (it was terminated and the workload applied
      again, say) and the running run would take them over only at its next placement.
    A running run whose owner is unknown (0) or equal keeps them; one whose owner is
    *older* than the reservations cannot exist (a newer run claimed after it ended) and
    is left alone rather than guessed about.
    """
    if run is None or run.status == RunStatus.ABSENT:
        return "its workflow does not exist"
    if run.status == RunStatus.CLOSED:
        return f"its workflow is closed ({run.detail or 'not running'})"
    if run.status == RunStatus.FOREIGN:
        return f"its workflow runs for another cluster ({run.detail})"
    if run.owner > 0 and run.owner > held.owner:
        return f"left by an earlier run (owner {held.owner}, the running one is {run.owner})"
    return None


def workloads_to_reap(
    held: Iterable[HeldWorkload],
    runs: Mapping[str, WorkloadRun | None],
    *,
    limit: int = MAX_REAPS_PER_RUN,
) -> list[Reap]:
    """The reservations to release, at most ``limit``, in key order.

    ``runs`` holds what was learnt of each key's workflow; a key missing from it was not
    looked at this time (bounded work) and is never reaped.
    """
    out: list[Reap] = []
    for h in sorted(held, key=lambda h: h.key):
        if h.key not in runs:
            continue
        reason = reap_reason(h, runs[h.key])
        if reason is not None:
            out.append(Reap(h.key, h.owner, reason))
            if len(out) >= limit:
                break
    return out


# --------------------------------------------------------------------------- replicas


@dataclass(frozen=True, slots=True)
class AgentReplica:
    """One replica an agent reports (``ListReplicas``)."""

    replica_id: str
    workload: str  # "<namespace>/<name>"
    epoch: int = 0  # the placement it runs (0: unknown)
    started_at: float = 0.0  # seconds since the epoch, agent's clock (0: not started)


class OrphanKind(enum.StrEnum):
    WORKLOAD_GONE = "workload gone"
    NOT_PLACED_HERE = "not placed on this node"
    OLDER_PLACEMENT = "runs an older placement"


@dataclass(frozen=True, slots=True)
class Orphan:
    replica_id: str
    workload: str
    epoch: int
    kind: OrphanKind


#: ``assigned[key]`` is None when the workload has no running workflow.
Assigned = Mapping[str, Mapping[str, int] | None]


def orphaned_replicas(
    listed: Sequence[AgentReplica],
    assigned: Assigned,
    *,
    now: float,
    grace: float = DEFAULT_GRACE_SECONDS,
    limit: int = MAX_STOPS_PER_NODE,
) -> list[Orphan]:
    """The replicas on one node that no workload places there, to be stopped.

    ``assigned`` maps each workload key to the replica ids its running workflow places
    on this node, with their placement epochs, or to None when the workload has no
    running workflow. The caller asks the workflows *after* listing the agent: a
    workflow records a placement before it starts the replica, so a replica the agent
    listed is in its workload's answer unless the workload let go of it. A key missing
    from ``assigned`` was not learnt (a query failed) and none of its replicas is
    touched. Replicas that started less than ``grace`` seconds ago are left for the next
    run, so a start racing the listing is never killed.
    """
    out: list[Orphan] = []
    for r in sorted(listed, key=lambda r: r.replica_id):
        if r.workload not in assigned:
            continue
        if r.started_at > 0 and now - r.started_at < grace:
            continue
        placed = assigned[r.workload]
        if placed is None:
            kind = OrphanKind.WORKLOAD_GONE
        elif r.replica_id not in placed:
            kind = OrphanKind.NOT_PLACED_HERE
        elif 0 < r.epoch < placed[r.replica_id]:
            kind = OrphanKind.OLDER_PLACEMENT
        else:
            continue
        out.append(Orphan(r.replica_id, r.workload, r.epoch, kind))
        if len(out) >= limit:
            break
    return out


def least_recently_seen(
    candidates: Iterable[str], seen: Mapping[str, float], limit: int
) -> list[str]:
    """Up to ``limit`` candidates, those looked at longest ago (or never) first: how a
    bounded run still gets round every node and workload over successive runs."""
    return sorted(candidates, key=lambda c: (seen.get(c, float("-inf")), c))[:limit]


__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "MAX_REAPS_PER_RUN",
    "MAX_STOPS_PER_NODE",
    "AgentReplica",
    "Assigned",
    "HeldWorkload",
    "Orphan",
    "OrphanKind",
    "Reap",
    "RunStatus",
    "WorkloadRun",
    "least_recently_seen",
    "orphaned_replicas",
    "reap_reason",
    "workloads_to_reap",
]
