"""Names every entity shares: the cluster's task queues and the custom search attributes.

Pure definitions (no I/O) so workflows, activities, workers and the CLI agree on them.
The per-entity names (workflow types, id schemes, messages) are in the entity modules.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey


def task_queue(cluster: str) -> str:
    """The task queue a cluster's coordinators poll for workflows and activities.

    One queue per cluster lets several clusters share a Temporal namespace without a
    worker of one cluster ever running another cluster's activities.
    """
    return f"cloudless-{cluster}"


def ledger_task_queue(cluster: str) -> str:
    """The ``cluster/<name>`` ledger's own task queue.

    The ledger is the one serialization point of placement: every plan and node change of
    the cluster is an Update on it. On its own queue, served by a worker that runs nothing
    else, its tasks never wait behind the thousands of node and workload workflows, and
    those can never push it out of a workflow cache (which would cost a full replay of its
    history, plan payloads and all, before the next Update).
    """
    return f"cloudless-{cluster}-ledger"


SA_NAMESPACE = SearchAttributeKey.for_keyword("CloudlessNamespace")
SA_WORKLOAD = SearchAttributeKey.for_keyword("CloudlessWorkload")
SA_NODE = SearchAttributeKey.for_keyword_list("CloudlessNode")
SA_PHASE = SearchAttributeKey.for_keyword("CloudlessPhase")
#: Master-key version wrapping a secret's data key: rotation finds what to rewrap with it.
SA_KEY_VERSION = SearchAttributeKey.for_int("CloudlessKeyVersion")

#: Every custom search attribute, registered at bootstrap so the UI can filter on them.
SEARCH_ATTRIBUTES = (SA_NAMESPACE, SA_WORKLOAD, SA_NODE, SA_PHASE, SA_KEY_VERSION)

__all__ = [
    "SA_KEY_VERSION",
    "SA_NAMESPACE",
    "SA_NODE",
    "SA_PHASE",
    "SA_WORKLOAD",
    "SEARCH_ATTRIBUTES",
    "ledger_task_queue",
    "task_queue",
]
