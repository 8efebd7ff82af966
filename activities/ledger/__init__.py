"""Activities that read and write the ``cluster/<name>`` ledger and node entities.

Workflows cannot query or update other workflows, so these activities do it with the
Temporal client on their behalf. Placement runs here too: the scheduler decides on the
coordinator's long-lived node index (:mod:`activities.scheduler_index`), which would be far too
large to pass through workflow history, and commits through the ledger.

One module per concern, all sharing :class:`~activities.ledger.base.LedgerBase` (the
ledger handle, batched writer and scheduler soft state of one coordinator):

- :mod:`~activities.ledger.placement`: deciding and committing placements, preemption,
  the dry-run explanation;
- :mod:`~activities.ledger.writes`: releases and node state the workflows publish;
- :mod:`~activities.ledger.enrollment`: enrollment tokens and node registration.

:class:`LedgerActivities` is all of them on one object, which the coordinator registers
and the workflows name their activities by.
"""

from __future__ import annotations

from activities.ledger.base import SIGNAL_ATTEMPTS, LedgerBase, PlanRejected
from activities.ledger.enrollment import EnrollmentActivities
from activities.ledger.placement import MAX_PLAN_ATTEMPTS, MAX_PREEMPTIONS, PlacementActivities
from activities.ledger.writes import LedgerWriteActivities


class LedgerActivities(PlacementActivities, LedgerWriteActivities, EnrollmentActivities):
    """Every ledger activity, bound to one Temporal client and cluster."""


__all__ = [
    "MAX_PLAN_ATTEMPTS",
    "MAX_PREEMPTIONS",
    "SIGNAL_ATTEMPTS",
    "EnrollmentActivities",
    "LedgerActivities",
    "LedgerBase",
    "LedgerWriteActivities",
    "PlacementActivities",
    "PlanRejected",
]
