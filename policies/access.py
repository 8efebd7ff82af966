"""Who may call which Temporal API method through the front, and which UI request.

The coordinator's front (``workers/front``) is the only door to Temporal; it knows the
caller from a verified cluster certificate (gRPC) or a login session (UI), and asks
here. Decisions fail closed: a method this table does not know is refused to every
role but the coordinator (whose workers need Temporal's whole worker API).

Roles are strings (the certificate's role): ``coordinator`` runs workflows, ``admin``
operates the cluster; ``node`` never talks to Temporal (agents reach Cloudless only
through the gateway), and any other role is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

COORDINATOR = "coordinator"
ADMIN = "admin"

#: Method name prefixes of Temporal's worker API: polling for tasks and answering them.
#: Only coordinators run workers; an operator who could poll would steal and answer
#: workflow tasks, i.e. run arbitrary "workflow code" decisions.
_WORKER_PREFIXES = (
    "Poll",
    "Respond",
    "RecordActivityTaskHeartbeat",
    "RecordWorkerHeartbeat",
    "ResetStickyTaskQueue",
    "ShutdownWorker",
    "UpdateWorkerBuildIdCompatibility",
    "UpdateWorkerVersioningRules",
    "SetWorkerDeployment",
    "UpdateWorkerDeployment",
)
#: A client reading an update's outcome uses this "Poll": it is not a worker call.
_CLIENT_POLLS = frozenset({"PollWorkflowExecutionUpdate"})

#: The services whose methods may be called at all; anything else is refused.
SERVICES = frozenset(
    {
        "temporal.api.workflowservice.v1.WorkflowService",
        "temporal.api.operatorservice.v1.OperatorService",
        "grpc.health.v1.Health",
    }
)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def split_method(method: str) -> tuple[str, str] | None:
    """``/package.Service/Method`` -> (service, method); None if it is not of that form."""
    parts = method.split("/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2].isidentifier():
        return None
    return parts[1], parts[2]


def is_worker_method(name: str) -> bool:
    return name not in _CLIENT_POLLS and name.startswith(_WORKER_PREFIXES)


def temporal_rpc(role: str, method: str) -> Decision:
    """May a caller with ``role`` call the Temporal API ``method`` (gRPC path)?"""
    split = split_method(method)
    if split is None or split[0] not in SERVICES:
        return Decision(False, f"{method!r} is not a Temporal API method served by the front")
    _, name = split
    if role == COORDINATOR:
        return Decision(True, "coordinators run Cloudless' workers")
    if role != ADMIN:
        return Decision(
            False,
            f"role {role!r} may not use Temporal; operators need an admin certificate "
            "(nodes reach Cloudless only through the gateway)",
        )
    if is_worker_method(name):
        return Decision(False, f"{name} is a worker call; only coordinators run workers")
    return Decision(True, "admins operate the cluster")


def ui_request(role: str, http_method: str, path: str) -> Decision:
    """May a logged-in ``role`` make this request of the Temporal UI (or its API)?"""
    if role != ADMIN:
        return Decision(False, f"role {role!r} may not use the Temporal UI")
    return Decision(True, "admins operate the cluster")
