"""Stable names: workflow ids users find in the Temporal UI, task queues, search attributes.

They are defined with the entity contracts (:mod:`cloudless.contracts`); this module keeps
the flat names for the code that imports them from here. New code imports the contracts.
"""

from __future__ import annotations

from cloudless.contracts import enrollment, ledger, node, rotation, secret, workload
from cloudless.contracts.names import (
    SA_KEY_VERSION,
    SA_NAMESPACE,
    SA_NODE,
    SA_PHASE,
    SA_WORKLOAD,
    SEARCH_ATTRIBUTES,
    ledger_task_queue,
    task_queue,
)

cluster_workflow_id = ledger.workflow_id
node_workflow_id = node.workflow_id
workload_workflow_id = workload.workflow_id
workload_key = workload.key
enrollment_workflow_id = enrollment.workflow_id
secret_workflow_id = secret.workflow_id
rotation_workflow_id = rotation.workflow_id
rotation_schedule_id = rotation.schedule_id

__all__ = [
    "SA_KEY_VERSION",
    "SA_NAMESPACE",
    "SA_NODE",
    "SA_PHASE",
    "SA_WORKLOAD",
    "SEARCH_ATTRIBUTES",
    "cluster_workflow_id",
    "enrollment_workflow_id",
    "ledger_task_queue",
    "node_workflow_id",
    "rotation_schedule_id",
    "rotation_workflow_id",
    "secret_workflow_id",
    "task_queue",
    "workload_key",
    "workload_workflow_id",
]
