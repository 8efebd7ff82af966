"""Plain-text explanation of a decision, for ``cloudlessctl describe`` and ``explain``.

Pure formatting over the :class:`~policies.scheduler.decide.Decision` data, so the CLI can
print it and the workload status can carry the one-line pending reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from policies.scheduler.filters import summarize

if TYPE_CHECKING:
    from policies.scheduler.decide import Decision, ScoredNode

#: Short column headings for the factor table.
FACTOR_LABELS: Mapping[str, str] = {
    "locality": "local",
    "reliability": "relia",
    "cost": "cost",
    "utilization": "util",
    "network": "net",
    "node_affinity": "naff",
    "workload_affinity": "waff",
    "topology_spread": "sprd",
    "taint_toleration": "taint",
    "replica_spread": "rspr",
}


def format_decision(decision: Decision, *, candidates: bool = True) -> list[str]:
    """Lines describing where each replica went and why, and why the rest did not fit."""
    placed = len(decision.picks)
    wanted = placed + decision.unplaced
    header = (
        f"placed {placed}/{wanted} replica(s) with {decision.strategy}: "
        f"{decision.total_nodes} nodes, {decision.feasible_nodes} feasible, "
        f"{decision.scored_nodes} scored (seed {decision.seed})"
    )
    lines = [header]
    if decision.score_gap is not None:
        lines.append(
            f"sample gap: {decision.score_gap:.2f} below the full scan's best "
            f"{decision.full_scan_best:.2f}"
        )
    if decision.node_cap is not None:
        lines.append(
            f"per-node cap: {decision.node_cap} replica(s) of this workload while other "
            "feasible nodes have fewer"
        )
    if decision.weights:
        weights = ", ".join(f"{name} {w:g}" for name, w in decision.weights.items())
        lines.append(f"weights: {weights}")
    ruled_out = {r: n for r, n in decision.filtered.items() if n}
    if ruled_out:
        lines.append("filtered: " + summarize(decision.total_nodes, ruled_out).split(": ", 1)[1])
    for i, pick in enumerate(decision.picks, start=1):
        lines.append(f"replica {i}: {pick.node_id} (score {pick.score:.2f})")
        if candidates and pick.candidates:
            lines.extend("  " + row for row in format_candidates(pick.candidates, pick.node_id))
    if decision.unplaced:
        lines.append(f"unplaced {decision.unplaced}: {decision.reason}")
    return lines


def format_candidates(nodes: tuple[ScoredNode, ...], chosen: str | None = None) -> list[str]:
    """A small table: node, total score and each factor's 0..1 value."""
    if not nodes:
        return []
    names = [n for n in FACTOR_LABELS if n in nodes[0].factors]
    width = max(len(n.node_id) for n in nodes)
    head = f"  {'node':<{width}} {'score':>6} " + " ".join(f"{FACTOR_LABELS[n]:>5}" for n in names)
    rows = [head]
    for node in nodes:
        mark = "*" if node.node_id == chosen else " "
        values = " ".join(f"{node.factors.get(n, 0.0):5.2f}" for n in names)
        rows.append(f"{mark} {node.node_id:<{width}} {node.score:6.2f} {values}")
    return rows
