"""Pure membership decisions ``node/<id>`` applies to liveness signals.

Kept out of the workflow so they are unit-tested without Temporal, and deterministic by
construction (the clock is passed in): how a node's health moves and what each move costs
(reconcile first, notify after), which signals a node accepts when its stream moves
between gateways, and how long a flapping node is held back before it is Ready again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from cloudless.vocabulary import NodeHealth, ReplicaPhase

#: Flap damping: this many unplanned departures within the window hold the node back.
FLAP_WINDOW = timedelta(minutes=10)
FLAP_THRESHOLD = 3
DAMP_BASE = timedelta(seconds=10)
DAMP_MAX = timedelta(minutes=5)


def recent(churn: Sequence[datetime], now: datetime, window: timedelta) -> int:
    """Churn episodes no older than ``window``."""
    return sum(1 for t in churn if now - t <= window)


def flap_hold(churn: Sequence[datetime], now: datetime) -> timedelta | None:
    """How long to hold a node that is about to be Ready again, or None.

    ``churn`` holds one entry per *unplanned* departure from Ready (a crash, a broken
    stream, silence). A graceful restart that comes back within the TTL is not in it, so
    rolling agent upgrades never damp a node. 10 s at the threshold, doubling per further
    episode, capped at 5 minutes.
    """
    n = recent(churn, now, FLAP_WINDOW)
    if n < FLAP_THRESHOLD:
        return None
    return min(DAMP_MAX, DAMP_BASE * (1 << min(n - FLAP_THRESHOLD, 16)))


def accepts(
    *,
    owner: str,
    owner_epoch: int,
    sig_health: NodeHealth,
    sig_gateway: str,
    sig_epoch: int,
) -> bool:
    """Whether a liveness signal speaks for the node's current heartbeat stream.

    A node's stream lives on one gateway at a time, and each gateway signals from its own
    queue, so signals about an old stream can arrive after those about a newer one. The
    agent stamps every stream with an epoch that only grows; 0 means unknown (a gateway
    that adopted the node after a restart and has not seen a stream of it yet).

    - Both epochs known: the newer stream wins. A signal about an older stream is stale;
      one about the current or a newer stream is accepted from whichever gateway holds it.
    - Otherwise the gateway decides: ``Ready`` from any gateway (it takes the node over),
      ``Suspect``/``Offline`` only from the gateway that owns the node.
    """
    if sig_epoch and owner_epoch:
        return sig_epoch >= owner_epoch
    if sig_health == NodeHealth.READY:
        return True
    return not owner or sig_gateway == owner


@dataclass(frozen=True)
class HealthStep:
    """How ``node/<id>`` moves to a new health: reconcile, then record, then notify."""

    health: NodeHealth
    #: Before recording ``health``: make the agent run exactly what the control plane
    #: places on the node (``reconcile_node`` stops everything else). If that fails, the
    #: node is not Ready: it is Offline (``next_health(current, OFFLINE)``).
    reconcile: bool = False
    #: After recording ``health``: tell every workload with replicas on the node, which
    #: replaces them elsewhere (their copies here may keep running until a reconcile).
    notify: bool = False


def next_health(current: NodeHealth, observed: NodeHealth) -> HealthStep | None:
    """The step from ``current`` when ``observed`` is reported, or None (nothing changes).

    ``observed`` is what a gateway's liveness table saw (a signal), or what the workflow
    found out itself: the enrollment probe reached the agent (Ready) or did not (Offline),
    a reconcile failed (Offline).

    - **Every edge into Ready reconciles first**, wherever the node comes from. Joining: a
      device may run replicas from a previous life. Offline: its replicas were replaced
      elsewhere. Suspect: while it was away, workloads may have been deleted, scaled down or
      updated, and a stop that could not reach the agent was given up (the replica was
      released in the ledger but may still run); an agent that restarted may have come
      back with anything. Only a reconcile makes "Ready" mean "runs exactly what the
      ledger assigns it", so no transition skips it.
    - **Entering Offline notifies**: the node's replicas are written off and replaced.
    - **Offline is left only for Ready.** A Suspect reported for an Offline node (its old
      stream closing after it was written off, a late signal) changes nothing: the node's
      replicas were replaced, which "Suspect" (left alone, coming back) would hide.
    - **Joining is left only by the enrollment probe** (Ready or Offline); a liveness
      Suspect meanwhile changes nothing.
    """
    if observed == current:
        return None
    if observed == NodeHealth.READY:
        return HealthStep(NodeHealth.READY, reconcile=True)
    if observed == NodeHealth.OFFLINE:
        return HealthStep(NodeHealth.OFFLINE, notify=True)
    if observed == NodeHealth.SUSPECT and current == NodeHealth.READY:
        return HealthStep(NodeHealth.SUSPECT)
    return None  # Suspect while Offline or Joining; Joining is entered by enrollment only


class PlacedReplica(Protocol):
    """What a node's reconcile reads of a workload's replica record."""

    @property
    def replica_id(self) -> str: ...
    @property
    def node_id(self) -> str: ...
    @property
    def phase(self) -> ReplicaPhase: ...
    @property
    def epoch(self) -> int: ...  # placement epoch (0: unknown)
    @property
    def lost(self) -> bool: ...  # its node was written off: released, being replaced
    @property
    def preempted(self) -> bool: ...  # its room was given to another replica: to be stopped


@dataclass(frozen=True)
class PlacedHere:
    """What one workload places on a node, as its reconcile must enforce it."""

    #: Replica id -> placement epoch: may run there (a run of an older epoch may not).
    epochs: dict[str, int]
    #: Those the workload believes Running: if the agent lacks one, it is replaced.
    running: frozenset[str]


def placed_here(replicas: Iterable[PlacedReplica], node_id: str) -> PlacedHere:
    """The replicas a workload places on ``node_id``, from its records.

    A record that names the node is not enough: a *lost* replica (the node was written
    off; the workload releases it without a stop and places a replacement) and a
    *preempted* one (the ledger gave its room away) stay in the records until the
    workload's next pass removes them. A node reconciled in that window would otherwise
    keep them running for good, next to their replacements and outside the ledger.
    """
    here = [r for r in replicas if r.node_id == node_id and not (r.lost or r.preempted)]
    return PlacedHere(
        epochs={r.replica_id: r.epoch for r in here},
        running=frozenset(r.replica_id for r in here if r.phase == ReplicaPhase.RUNNING),
    )
