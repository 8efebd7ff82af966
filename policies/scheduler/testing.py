"""Builders for hand-made clusters, for our tests and for anyone testing their own policies.

Terse on purpose: ``cluster(node("a", zone="z1"), node("b", memory=2 * GI))`` reads like the
table rows of a Kubernetes plugin test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cloudless.vocabulary import Resources
from policies.scheduler.index import READY, NodeIndex, NodeSpec
from policies.scheduler.request import Taint

MI = 1024**2
GI = 1024**3


def node(
    node_id: str,
    *,
    zone: str = "zone-a",
    region: str = "region-1",
    labels: Mapping[str, str] | None = None,
    cpu: int = 4000,
    memory: int = 4 * GI,
    storage: int = 10 * GI,
    gpu: int = 0,
    bandwidth: int = 0,
    cpu_used: int = 0,
    memory_used: int = 0,
    storage_used: int = 0,
    state: str = READY,
    runtimes: Iterable[str] = ("docker", "exec"),
    runtime_classes: Iterable[str] = ("runc",),
    taints: Iterable[Taint] = (),
    uptime: float = 1.0,
    churn: float = 0.0,
    cost: float = 0.0,
    latency: float = 0.0,
) -> NodeSpec:
    return NodeSpec(
        node_id=node_id,
        capacity=Resources(cpu, memory, storage, gpu, bandwidth),
        allocated=Resources(cpu_used, memory_used, storage_used),
        zone=zone,
        region=region,
        labels=dict(labels or {}),
        state=state,
        runtimes=frozenset(runtimes),
        runtime_classes=frozenset(runtime_classes),
        taints=tuple(taints),
        uptime_ratio=uptime,
        churn=churn,
        cost_per_core_hour=cost,
        latency_ms=latency,
    )


def cluster(
    *nodes: NodeSpec,
    workloads: Mapping[str, Mapping[str, str]] | None = None,
    replicas: Iterable[tuple[str, str]] = (),
) -> NodeIndex:
    """An index of ``nodes``; ``workloads`` maps key -> labels and ``replicas`` lists
    ``(node_id, workload_key)`` pairs counted without using any resources."""
    index = NodeIndex(nodes)
    for key, labels in (workloads or {}).items():
        index.register_workload(key, labels)
    for node_id, key in replicas:
        index.allocate(node_id, Resources(), workload_key=key)
    return index
