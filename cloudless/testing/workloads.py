"""Small workload manifests for tests and benchmarks."""

from __future__ import annotations

from typing import Any

from cloudless.spec import Workload, parse_workload


def sleeper(
    name: str,
    replicas: int,
    *,
    cpu: str = "50m",
    memory: str = "8Mi",
    strategy: str = "spread",
    **spec: Any,
) -> Workload:
    """A workload of plain ``sleep`` processes (exec runtime): starts in milliseconds, so
    control-plane behaviour is not blurred by container start times. ``spec`` adds or
    overrides fields of ``spec`` (e.g. ``minAvailable=2``, ``placement={...}``)."""
    return parse_workload(
        {
            "apiVersion": "cloudless.dev/v1",
            "kind": "Workload",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "runtime": "exec",
                "strategy": strategy,
                "container": {"command": ["sleep"], "args": ["3600"]},
                "resources": {"cpu": cpu, "memory": memory},
                **spec,
            },
        }
    )
