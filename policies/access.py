"""Who may call which Temporal API method through the front, on which workflow, and
which Temporal UI request.

The coordinator's front (``workers/front``) is the only door to Temporal. It knows the
caller from a verified cluster certificate (gRPC) or a login session (UI), reads the
call's target from the request (the workflow id, the update, signal or query name, the
workflow type started), and asks here. The *grants* come from the entity contracts:
each message and workflow type declares the least role that may send or start it
(``cloudless.contracts``), so a message name is never written twice.

Decisions fail closed:
- a service this module does not know is refused to everyone; any other method of
  Temporal's API that is not a read, a send or a termination (namespaces, schedules,
  batches, resets, and methods of later Temporal releases) is an admin's;
- a message or workflow type without a grant is the control plane's own (a node's
  ``liveness``, a workload's ``replicas_lost``): coordinators only, admins included;
- people never poll task queues: whoever polls answers the workflows' decisions.

Roles: ``coordinator`` runs the workers; people are ``viewer`` < ``operator`` <
``admin`` (:class:`~cloudless.vocabulary.AccessRole`); ``node`` and anything else may
not use Temporal (agents reach Cloudless only through the gateway).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cloudless.vocabulary import AccessRole

COORDINATOR = "coordinator"

#: The services whose methods may be called at all; anything else is refused.
SERVICES = frozenset(
    {
        "temporal.api.workflowservice.v1.WorkflowService",
        "temporal.api.operatorservice.v1.OperatorService",
        "grpc.health.v1.Health",
    }
)

#: Method name prefixes of Temporal's worker API: polling for tasks and answering them.
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
#: Reads: they change nothing (queries run read-only workflow code).
_READ_PREFIXES = ("Describe", "Get", "List", "Count", "Scan", "Check")
_READS = frozenset({"QueryWorkflow", "PollWorkflowExecutionUpdate"})
#: Calls that send a workflow a message or start one: authorized by their target.
SENDS = frozenset(
    {
        "StartWorkflowExecution",
        "SignalWorkflowExecution",
        "SignalWithStartWorkflowExecution",
        "UpdateWorkflowExecution",
        "ExecuteMultiOperation",
    }
)
#: Ending a run by force: its replicas and reservations are left for the reaper. Operators
#: may do it to workloads (``delete`` of a stuck workload does); the rest is admins'.
TERMINATIONS = frozenset({"TerminateWorkflowExecution", "RequestCancelWorkflowExecution"})
_OPERATOR_TERMINATES = "workload/"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


@dataclass(frozen=True)
class Call:
    """One Temporal API call as the front read it: the method's short name and, for
    calls on a workflow, its id, the message (update, signal or query name) and the
    workflow type it would start."""

    method: str
    workflow_id: str = ""
    messages: tuple[str, ...] = ()
    starts: str = ""


@dataclass(frozen=True)
class Grants:
    """What people may send, from the contracts: (workflow id prefix, message name) ->
    least role, and (id prefix, workflow type) -> least role to start one. A prefix is
    the id's first segment with its slash (``workload/``), so a lookup is one dict probe
    per call, not a scan of every grant."""

    messages: Mapping[tuple[str, str], AccessRole] = field(default_factory=dict)
    starts: Mapping[tuple[str, str], AccessRole] = field(default_factory=dict)

    def needed(
        self, table: Mapping[tuple[str, str], AccessRole], workflow_id: str, name: str
    ) -> AccessRole | None:
        head, slash, _ = workflow_id.partition("/")
        return table.get((head + slash, name)) if slash else None


def split_method(method: str) -> tuple[str, str] | None:
    """``/package.Service/Method`` -> (service, method); None if it is not of that form."""
    parts = method.split("/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2].isidentifier():
        return None
    return parts[1], parts[2]


def is_worker_method(name: str) -> bool:
    return name not in _CLIENT_POLLS and name.startswith(_WORKER_PREFIXES)


def is_read(name: str) -> bool:
    return name in _READS or (not is_worker_method(name) and name.startswith(_READ_PREFIXES))


def person_role(role: str) -> AccessRole | None:
    try:
        return AccessRole(role)
    except ValueError:
        return None


def temporal_rpc(
    role: str, method: str, call: Call | None = None, grants: Grants = Grants()
) -> Decision:
    """May a caller with ``role`` make this Temporal API call (gRPC path ``method``,
    its target ``call`` as the front read it)?"""
    split = split_method(method)
    if split is None or split[0] not in SERVICES:
        return Decision(False, f"{method!r} is not a Temporal API method served by the front")
    name = split[1]
    if role == COORDINATOR:
        return Decision(True, "coordinators run Cloudless' workers")
    person = person_role(role)
    if person is None:
        return Decision(
            False,
            f"role {role!r} may not use Temporal; people need a viewer, operator or admin "
            "certificate (nodes reach Cloudless only through the gateway)",
        )
    if is_worker_method(name):
        return Decision(False, f"{name} is a worker call; only coordinators run workers")
    call = call or Call(name)
    if name in SENDS:
        return _send(person, call, grants)
    if name == "QueryWorkflow":
        return _needs(person, grants.needed(grants.messages, call.workflow_id, _first(call)),
                      f"query {_first(call)!r} on {call.workflow_id!r}")  # fmt: skip
    if is_read(name):
        return Decision(True, "reads are open to every role")
    if name in TERMINATIONS and call.workflow_id.startswith(_OPERATOR_TERMINATES):
        return _needs(person, AccessRole.OPERATOR, f"{name} of {call.workflow_id!r}")
    return _needs(person, AccessRole.ADMIN, name)


def _first(call: Call) -> str:
    return call.messages[0] if call.messages else ""


def _send(person: AccessRole, call: Call, grants: Grants) -> Decision:
    """A start and/or messages on one workflow: each part needs its own grant."""
    if not call.workflow_id:
        return Decision(False, "the call names no workflow id")
    needed: list[AccessRole] = []
    if call.starts:
        role = grants.needed(grants.starts, call.workflow_id, call.starts)
        if role is None:
            return Decision(
                False,
                f"starting {call.starts} as {call.workflow_id!r} is the control plane's own",
            )
        needed.append(role)
    for message in call.messages:
        role = grants.needed(grants.messages, call.workflow_id, message)
        if role is None:
            return Decision(
                False,
                f"message {message!r} to {call.workflow_id!r} is the control plane's own "
                "(coordinators only)",
            )
        needed.append(role)
    if not needed:
        return Decision(False, "the call sends nothing the front can authorize")
    what = ", ".join([*([call.starts] if call.starts else []), *call.messages])
    return _needs(person, max(needed, key=lambda r: r.rank), f"{what} on {call.workflow_id!r}")


def _needs(person: AccessRole, needed: AccessRole | None, what: str) -> Decision:
    if needed is None:
        return Decision(False, f"{what} is the control plane's own (coordinators only)")
    if person.includes(needed):
        return Decision(True, f"{what} needs {needed.value}")
    return Decision(
        False, f"{what} needs the {needed.value} role; this certificate is {person.value}"
    )


def ui_request(role: str, http_method: str, path: str) -> Decision:
    """May a logged-in ``role`` make this request of the Temporal UI (or its API)?

    Every role browses (GET, HEAD; decoding payloads is the front's own ``/codec``).
    Everything else the UI offers (terminate, signal, reset, cancel, batch operations,
    schedules) is an admin's: its buttons act on any workflow, with any message."""
    person = person_role(role)
    if person is None:
        return Decision(False, f"role {role!r} may not use the Temporal UI")
    if http_method in ("GET", "HEAD"):
        return Decision(True, "reads are open to every role")
    return _needs(person, AccessRole.ADMIN, f"{http_method} {path}")
