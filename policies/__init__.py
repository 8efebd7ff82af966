"""Pure decision logic: placement and (later) admission. Imports nothing of Cloudless' I/O."""

from policies.placement import (
    Demand,
    NodeView,
    PlacementDecision,
    PlacementRequest,
    place,
)

__all__ = ["Demand", "NodeView", "PlacementDecision", "PlacementRequest", "place"]
