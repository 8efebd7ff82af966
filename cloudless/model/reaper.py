"""``reaper/<cluster>``: what one reaper run is asked to do and what it did."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from cloudless.model._base import _Model
from cloudless.vocabulary import Resources


class ReaperInput(_Model):
    """One reaper run (the Schedule's, or one started on demand).

    ``grace_seconds``: a replica an agent started less than this long ago is not stopped
    yet, so a start racing the reaper's look is never killed. The ``max_*`` fields bound
    the work of one run; what is left over is seen by the next one.
    """

    cluster: str
    grace_seconds: float = Field(60.0, ge=0, le=86_400)
    max_reaps: int = Field(200, ge=1, le=10_000)
    max_checks: int = Field(500, ge=1, le=50_000)
    max_nodes: int = Field(100, ge=1, le=10_000)


class ReapWorkloadsInput(_Model):
    cluster: str
    max_reaps: int
    max_checks: int


class ReapedWorkload(_Model):
    """Reservations released because nobody owned them any more."""

    workload: str
    owner: int
    reason: str
    #: node -> replicas released there.
    replicas: dict[str, int] = Field(default_factory=dict)
    freed: Resources = Field(default_factory=Resources)


class ReapWorkloadsResult(_Model):
    held: int = 0  # workloads the ledger held reservations for
    checked: int = 0  # of them, whose workflow was looked at this run
    reaped: list[ReapedWorkload] = Field(default_factory=list)


class ReapOrphansInput(_Model):
    cluster: str
    grace_seconds: float
    max_nodes: int


class StoppedReplica(_Model):
    """A replica stopped on an agent because no workload places it there."""

    node_id: str
    replica_id: str
    workload: str
    reason: str


class ReapOrphansResult(_Model):
    nodes: int = 0  # Ready nodes whose agent was asked this run
    stopped: list[StoppedReplica] = Field(default_factory=list)
    #: Nodes that could not be asked (unreachable agent, refused call), with why.
    errors: dict[str, str] = Field(default_factory=dict)


class ReapReport(_Model):
    """What a reaper run did (its result, and a summary in its memo)."""

    cluster: str
    started_at: datetime
    finished_at: datetime | None = None
    workloads: ReapWorkloadsResult = Field(default_factory=ReapWorkloadsResult)
    orphans: ReapOrphansResult = Field(default_factory=ReapOrphansResult)
