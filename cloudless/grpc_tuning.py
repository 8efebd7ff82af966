"""gRPC C-core settings every Cloudless server process runs with.

gRPC reads ``GRPC_EXPERIMENTS`` once, when ``grpc`` is first imported, so :func:`apply`
runs from the ``workers`` and ``agent`` package initializers (before any of their
modules imports ``grpc``) and at the top of the test and benchmark entry points.

``-event_engine_listener``: gRPC 1.85 serves accepted connections on the EventEngine,
whose pollers hand each read to a pool of threads; the classic (iomgr) listener reads,
decrypts and parses a message on the thread that polls the completion queue. For many
connections that each carry a small message now and then (5,000 agents beating once
a second) that hand-off is most of the cost: measured with ``bench/heartbeat_ingest.py``
the coordinator drops from about 0.53 to 0.38 cores. An operator's own
``GRPC_EXPERIMENTS`` entry for the same experiment wins.
"""

from __future__ import annotations

import os
import sys
import warnings

#: Experiments (gRPC syntax: ``-name`` turns one off) merged into ``GRPC_EXPERIMENTS``.
EXPERIMENTS = ("-event_engine_listener",)


def merged(current: str, wanted: tuple[str, ...] = EXPERIMENTS) -> str:
    """``current`` (a ``GRPC_EXPERIMENTS`` value) plus each wanted experiment it does not
    already mention, on or off."""
    names = [n.strip() for n in current.split(",") if n.strip()]
    mentioned = {n.lstrip("-") for n in names}
    names += [w for w in wanted if w.lstrip("-") not in mentioned]
    return ",".join(names)


def apply() -> None:
    """Merge :data:`EXPERIMENTS` into this process's environment (children inherit it)."""
    value = merged(os.environ.get("GRPC_EXPERIMENTS", ""))
    if os.environ.get("GRPC_EXPERIMENTS") == value:
        return
    if "grpc" in sys.modules:
        warnings.warn(
            "cloudless.grpc_tuning.apply() ran after grpc was imported, so gRPC keeps its "
            f"defaults; import it first or export GRPC_EXPERIMENTS={value}",
            RuntimeWarning,
            stacklevel=2,
        )
    os.environ["GRPC_EXPERIMENTS"] = value
