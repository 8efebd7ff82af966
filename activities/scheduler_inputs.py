"""What the pure scheduler (:mod:`policies.scheduler`) is fed, translated from the kernel's
models: a workload manifest becomes a ``PlacementRequest`` (and the ledger's record of the
workload, ``LedgerWorkload``), a ledger node record a ``NodeSpec``, the cluster's scheduler
settings a ``SchedulerConfig``.

Pure functions, no state. They stay out of ``policies/`` because they read the kernel's
manifest and payload models, while ``policies`` imports only the vocabulary; the soft state
that uses them is :mod:`activities.scheduler_index`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import cast

from cloudless.model import LedgerNode, LedgerWorkload, SchedulerSettings
from cloudless.model import Resources as ModelResources
from cloudless.spec import LabelSelector as SpecSelector
from cloudless.spec import MatchExpression as SpecExpression
from cloudless.spec import Workload
from cloudless.spec import WorkloadAffinity as SpecWorkloadAffinity
from policies import scheduler as sched
from policies.scheduler.request import SampleSize, TaintEffect


def resources(r: ModelResources) -> sched.Resources:
    return sched.Resources(
        cpu_millis=r.cpu_millis,
        memory_bytes=r.memory_bytes,
        storage_bytes=r.storage_bytes,
        gpu=r.gpu,
        bandwidth_bps=r.bandwidth_bps,
    )


def node_spec(n: LedgerNode) -> sched.NodeSpec:
    return sched.NodeSpec(
        node_id=n.node_id,
        capacity=resources(n.capacity),
        allocated=resources(n.allocated),
        zone=n.zone,
        region=n.region,
        labels=dict(n.labels),
        state=n.state.value,
        runtimes=frozenset(n.runtimes),
        runtime_classes=frozenset(n.runtime_classes),
        taints=tuple(sched.Taint(t.key, t.value, cast(TaintEffect, t.effect)) for t in n.taints),
        uptime_ratio=min(1.0, max(0.0, n.uptime_ratio)),
        churn=float(max(0, n.churn)),
        cost_per_core_hour=max(0.0, n.cost_per_core_hour),
        latency_ms=max(0.0, n.latency_ms),
    )


def _expr(e: SpecExpression) -> sched.MatchExpression:
    return sched.MatchExpression(e.key, e.operator, tuple(e.values))


def _selector(s: SpecSelector) -> sched.LabelSelector:
    return sched.LabelSelector(
        match_labels=dict(s.match_labels),
        match_expressions=tuple(_expr(e) for e in s.match_expressions),
    )


def _workload_affinity(a: SpecWorkloadAffinity | None) -> sched.WorkloadAffinity:
    if a is None:
        return sched.WorkloadAffinity()
    return sched.WorkloadAffinity(
        required=tuple(
            sched.WorkloadAffinityTerm(_selector(t.label_selector), t.topology_key)
            for t in a.required
        ),
        preferred=tuple(
            sched.WeightedWorkloadAffinityTerm(
                p.weight,
                sched.WorkloadAffinityTerm(_selector(p.term.label_selector), p.term.topology_key),
            )
            for p in a.preferred
        ),
    )


def scheduler_config(settings: SchedulerSettings) -> sched.SchedulerConfig:
    """The pure scheduler's configuration from the cluster's ledger-kept settings."""
    return sched.SchedulerConfig(
        weights=sched.Weights(**settings.weights),
        sample_min=settings.sample_min,
        sample_percent=settings.sample_percent,
        top_k=settings.top_k,
    )


def placement_request(
    w: Workload,
    count: int,
    *,
    sample_size: SampleSize = "auto",
    base_weights: sched.Weights | None = None,
) -> sched.PlacementRequest:
    """The scheduler's view of ``count`` replicas of the workload (pure translation).

    The workload's own ``placement.weights`` override ``base_weights`` (the cluster's) factor
    by factor; without its own weights the request leaves them to the cluster config.
    ``replicas`` and ``minAvailable`` travel with it: they set the per-node cap (no node
    above ``replicas - minAvailable`` of the workload while others have room) and the default
    replica spreading, whatever ``count`` this decision places."""
    spec = w.spec
    p = spec.placement
    node_affinity = sched.NodeAffinity()
    if p.node_affinity is not None:
        node_affinity = sched.NodeAffinity(
            required=tuple(
                sched.NodeSelectorTerm(tuple(_expr(e) for e in t.match_expressions))
                for t in p.node_affinity.required
            ),
            preferred=tuple(
                sched.PreferredNodeTerm(
                    t.weight,
                    sched.NodeSelectorTerm(tuple(_expr(e) for e in t.preference.match_expressions)),
                )
                for t in p.node_affinity.preferred
            ),
        )
    weights = None
    if p.weights is not None:
        given = {k: v for k, v in p.weights.model_dump(by_alias=False).items() if v is not None}
        weights = replace(base_weights or sched.Weights(), **given)
    locality = sched.Locality()
    if p.locality is not None:
        locality = sched.Locality(
            zones=frozenset(p.locality.zones),
            regions=frozenset(p.locality.regions),
            labels=dict(p.locality.labels),
        )
    return sched.PlacementRequest(
        count=count,
        resources=sched.Resources(
            cpu_millis=spec.resources.cpu_millis,
            memory_bytes=spec.resources.memory_bytes,
            storage_bytes=spec.resources.storage_bytes,
            gpu=spec.resources.gpus,
            bandwidth_bps=spec.resources.bandwidth,
        ),
        workload_key=w.key,
        workload_labels=dict(w.metadata.labels),
        runtime=spec.runtime,
        runtime_class=spec.security_context.runtime_class_name,
        zones=frozenset(p.zones),
        regions=frozenset(p.regions),
        node_selector=dict(p.node_selector),
        tolerations=tuple(
            sched.Toleration(t.key, t.operator, t.value, t.effect) for t in p.tolerations
        ),
        node_affinity=node_affinity,
        workload_affinity=_workload_affinity(p.workload_affinity),
        workload_anti_affinity=_workload_affinity(p.workload_anti_affinity),
        spread=tuple(
            sched.SpreadConstraint(
                max_skew=c.max_skew,
                topology_key=c.topology_key,
                when_unsatisfiable=c.when_unsatisfiable,
                selector=_selector(c.label_selector) if c.label_selector is not None else None,
            )
            for c in p.topology_spread_constraints
        ),
        locality=locality,
        strategy=spec.strategy,
        weights=weights,
        priority=spec.effective_priority,
        sample_size=sample_size,
        replicas=spec.replicas,
        min_available=spec.min_available,
    )


def workload_meta(w: Workload) -> LedgerWorkload:
    r = w.spec.resources
    return LedgerWorkload(
        labels=dict(w.metadata.labels),
        priority=w.spec.effective_priority,
        resources=ModelResources(
            cpu_millis=r.cpu_millis,
            memory_bytes=r.memory_bytes,
            storage_bytes=r.storage_bytes,
            gpu=r.gpus,
            bandwidth_bps=r.bandwidth,
        ),
    )
