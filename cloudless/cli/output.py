"""Rendering for ``-o table|json|yaml``: tables for people, JSON/YAML for scripts."""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Sequence
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloudless.client import NodeDetails
from cloudless.model import (
    CandidateScore,
    LedgerNode,
    ReplicaPhase,
    ReplicaRecord,
    RescheduleEvent,
    WorkloadStatus,
)
from cloudless.quantity import format_bytes, format_cpu
from cloudless.workloads import readiness_gated

#: Piped output is for scripts and logs: never truncate columns to an assumed 80.
console = Console() if sys.stdout.isatty() else Console(width=250)


def fail(message: str) -> typer.Exit:
    """Print a one-line (or, for manifests, one-line-per-problem) reason; exit 1."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


def approx_bytes(n: int) -> str:
    """Exact binary units when they fit (``32Mi``), else one decimal (``79.0Gi``)."""
    exact = format_bytes(n)
    if (exact[-2:] in ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei") and n % 2**20 == 0) or n < 2**20:
        return exact
    for unit, size in (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return exact


class Output(enum.StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


def emit_data(data: Any, output: Output) -> None:
    if output == Output.JSON:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(yaml.safe_dump(data, sort_keys=False).rstrip())


def _known(w: WorkloadStatus) -> bool:
    """Whether its workflow answered (a Stuck/Unknown status made for one that did not
    has generation 0: none of its state is known)."""
    return w.generation > 0


def workloads_table(items: Sequence[WorkloadStatus]) -> Table:
    table = Table(box=None, pad_edge=False)
    for col in ("NAMESPACE", "NAME", "READY", "PHASE", "GENERATION", "NODES", "MESSAGE"):
        table.add_column(col)
    for w in items:
        nodes = sorted({r.node_id for r in w.replicas if r.node_id})
        table.add_row(
            w.namespace,
            w.name,
            f"{w.ready}/{w.desired}" if _known(w) else "?",
            w.phase.value,
            str(w.generation) if _known(w) else "?",
            ",".join(nodes) or "-",
            escape(w.message or ""),  # messages quote errors: "[...]" is not markup
        )
    return table


def _gated(w: WorkloadStatus) -> bool:
    """Whether the workload's replicas are ready only once a probe passed."""
    return w.manifest is not None and readiness_gated(w.manifest)


def replica_readiness(r: ReplicaRecord, gated: bool) -> tuple[str, str]:
    """The READY cell and the probe's reason when a Running replica is not ready."""
    if r.phase != ReplicaPhase.RUNNING:
        return "-", ""
    ready = r.ready if r.ready is not None else not gated
    if ready:
        return "yes", ""
    return "no", f"not ready: {r.ready_message or 'no probe result yet'}"


def replicas_table(w: WorkloadStatus) -> Table:
    table = Table(box=None, pad_edge=False)
    for col in ("REPLICA", "PHASE", "READY", "NODE", "SCORE", "GENERATION", "MESSAGE"):
        table.add_column(col)
    gated = _gated(w)
    for r in w.replicas:
        score = "-" if r.score is None else f"{r.score:.2f}"
        ready, why = replica_readiness(r, gated)
        message = "; ".join(m for m in (why, r.message) if m)
        table.add_row(
            r.replica_id,
            r.phase.value,
            ready,
            r.node_id or "-",
            score,
            str(r.generation),
            escape(message),
        )
    return table


#: Short headings for the placement factors (same as the scheduler's explanation).
FACTOR_LABELS = {
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


def candidates_lines(candidates: Sequence[CandidateScore], chosen: str) -> list[str]:
    """The top candidates of one placement: node, total 0..100 and each factor 0..1."""
    if not candidates:
        return []
    names = [n for n in FACTOR_LABELS if n in candidates[0].factors]
    width = max(4, *(len(c.node_id) for c in candidates))
    lines = [
        f"    {'node':<{width}} {'score':>6} " + " ".join(f"{FACTOR_LABELS[n]:>5}" for n in names)
    ]
    for c in candidates:
        mark = "*" if c.node_id == chosen else " "
        values = " ".join(f"{c.factors.get(n, 0.0):5.2f}" for n in names)
        lines.append(f"  {mark} {c.node_id:<{width}} {c.score:6.2f} {values}")
    return lines


def nodes_table(items: Sequence[LedgerNode]) -> Table:
    table = Table(box=None, pad_edge=False)
    for col in (
        "NAME",
        "STATE",
        "ZONE",
        "CPU (alloc/cap)",
        "MEMORY (alloc/cap)",
        "REPLICAS",
        "RUNTIMES",
        "ADDRESS",
    ):
        table.add_column(col)
    for n in items:
        table.add_row(
            n.node_id,
            n.state.value,
            n.zone,
            f"{format_cpu(n.allocated.cpu_millis)}/{format_cpu(n.capacity.cpu_millis)}",
            f"{approx_bytes(n.allocated.memory_bytes)}/{approx_bytes(n.capacity.memory_bytes)}",
            str(n.replicas),
            ",".join(n.runtimes),
            n.address,
        )
    return table


def reschedule_lines(events: Sequence[RescheduleEvent]) -> list[str]:
    """One line per crash loop the workload acted on, oldest first, e.g.
    ``12:00:03Z  web-x1 crashed on n1 (exit 1) 3 times in 4.2s → rescheduled to n2 (web-y2)``.
    """
    lines = []
    for e in events:
        code = "" if e.exit_code is None else f" (exit {e.exit_code})"
        times = "once" if e.crashes == 1 else f"{e.crashes} times"
        crashed = f"{e.replica_id} crashed on {e.node_id}{code} {times}"
        if e.crashes > 1:
            crashed += f" in {e.over_seconds:.1f}s"
        if e.held:
            outcome = f"not rescheduled: {e.held}"
        elif e.to_node:
            outcome = f"rescheduled to {e.to_node} ({e.replacement})"
        else:
            outcome = f"rescheduling ({e.replacement} not placed yet)"
        when = e.at.strftime("%Y-%m-%d %H:%M:%SZ")
        lines.append(f"  {when}  {crashed} → {outcome}")
        if e.reason:
            lines.append(f"      last crash: {e.reason.splitlines()[0][:160]}")
    return lines


def print_workload(w: WorkloadStatus) -> None:
    console.print(f"[bold]Name:[/bold]       {w.namespace}/{w.name}")
    console.print(f"[bold]Phase:[/bold]      {w.phase.value}")
    if not _known(w):  # its workflow did not answer: only why is known
        console.print("[bold]Reason:[/bold]     ", end="")
        console.print(w.message, markup=False, highlight=False)
        console.print(f"[bold]Workflow:[/bold]   workload/{w.namespace}/{w.name}")
        return
    console.print(f"[bold]Ready:[/bold]      {w.ready}/{w.desired}")
    console.print(f"[bold]Generation:[/bold] {w.generation}   [bold]Spec:[/bold] {w.spec_hash}")
    if w.message:
        console.print("[bold]Message:[/bold]    ", end="")
        console.print(w.message, markup=False, highlight=False)
    console.print(f"[bold]Workflow:[/bold]   workload/{w.namespace}/{w.name}")
    console.print()
    console.print(replicas_table(w))
    explained = [r for r in w.replicas if r.candidates or (r.phase == ReplicaPhase.PENDING)]
    if explained:
        console.print()
        console.print("[bold]Placement:[/bold] (top candidates; * = chosen, factors 0..1)")
    for r in explained:
        if r.candidates:
            console.print(f"  {r.replica_id} -> {r.node_id} (score {r.score or 0:.2f})")
            for line in candidates_lines(r.candidates, r.node_id):
                console.print(line, markup=False, highlight=False)
        else:
            console.print(f"  {r.replica_id}: pending: {r.message or 'not placed yet'}")
    if w.reschedules:
        console.print()
        console.print("[bold]Crash loops:[/bold] (spec.reschedule)")
        for line in reschedule_lines(w.reschedules):
            console.print(line, markup=False, highlight=False)


def print_node(d: NodeDetails) -> None:
    n = d.node
    console.print(f"[bold]Name:[/bold]      {n.node_id}")
    console.print(f"[bold]State:[/bold]     {n.state.value}")
    console.print(
        f"[bold]Zone:[/bold]      {n.zone}" + (f"  region {n.region}" if n.region else "")
    )
    console.print(f"[bold]Address:[/bold]   {n.address}")
    console.print(f"[bold]Runtimes:[/bold]  {', '.join(n.runtimes)}")
    labels = ", ".join(f"{k}={v}" for k, v in sorted(n.labels.items())) or "-"
    console.print(f"[bold]Labels:[/bold]    {labels}")
    console.print(
        f"[bold]Capacity:[/bold]  cpu {format_cpu(n.capacity.cpu_millis)}, "
        f"memory {approx_bytes(n.capacity.memory_bytes)}, "
        f"storage {approx_bytes(n.capacity.storage_bytes)}"
    )
    console.print(
        f"[bold]Allocated:[/bold] cpu {format_cpu(n.allocated.cpu_millis)}, "
        f"memory {approx_bytes(n.allocated.memory_bytes)} in {n.replicas} replica(s)"
    )
    console.print(f"[bold]Workloads:[/bold] {', '.join(d.workloads) or '-'}")
    taints = ", ".join(f"{t.key}={t.value}:{t.effect}" for t in n.taints) or "-"
    console.print(
        f"[bold]Scheduling:[/bold] runtime classes {', '.join(n.runtime_classes)}; "
        f"taints {taints}; "
        f"uptime {n.uptime_ratio:.2%}, churn {n.churn} (last hour); "
        f"cost {n.cost_per_core_hour:g}/core-hour; latency {n.latency_ms:g} ms"
    )
    if d.status is not None:
        if d.status.record.certificate_not_after:
            console.print(
                f"[bold]Cert until:[/bold] {d.status.record.certificate_not_after.isoformat()}"
            )
        console.print("[bold]Transitions:[/bold]")
        for t in d.status.transitions:
            console.print(f"  {t.at.isoformat()}  {t.state.value:<9} {t.reason}")
