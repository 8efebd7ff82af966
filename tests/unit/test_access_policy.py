"""policies/access.py: who may call which Temporal method through the front, on what."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cloudless.contracts import ledger, node, secret, workload
from cloudless.vocabulary import AccessRole
from policies.access import (
    Call,
    Grants,
    is_read,
    is_worker_method,
    split_method,
    temporal_rpc,
    ui_request,
)
from workers.front.calls import contract_grants

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
OP = "/temporal.api.operatorservice.v1.OperatorService/"
GRANTS = contract_grants()
PEOPLE = ("viewer", "operator", "admin")


def decide(role: str, name: str, **target: object) -> bool:
    return temporal_rpc(role, WF + name, Call(name, **target), GRANTS).allowed  # type: ignore[arg-type]


def test_only_coordinators_run_workers() -> None:
    for method in ("PollWorkflowTaskQueue", "RespondActivityTaskCompleted",
                   "RecordActivityTaskHeartbeat", "PollActivityTaskQueue"):  # fmt: skip
        assert decide("coordinator", method)
        for role in PEOPLE:
            denied = temporal_rpc(role, WF + method, Call(method), GRANTS)
            assert not denied.allowed and "worker call" in denied.reason


def test_every_person_reads() -> None:
    for method in (
        "DescribeWorkflowExecution", "GetWorkflowExecutionHistory", "ListSchedules",
        "ListWorkflowExecutions", "PollWorkflowExecutionUpdate", "GetSystemInfo",
    ):  # fmt: skip
        assert all(decide(role, method) for role in PEOPLE), method
    assert temporal_rpc("viewer", OP + "ListSearchAttributes").allowed
    assert decide(
        "viewer", "QueryWorkflow", workflow_id="workload/default/web", messages=("status",)
    )


def test_workloads_and_nodes_are_operated_by_operators() -> None:
    apply = {"workflow_id": "workload/default/web", "messages": (workload.APPLY.name,)}
    start = {**apply, "starts": workload.WORKFLOW.name}
    for name, target in (("UpdateWorkflowExecution", apply), ("ExecuteMultiOperation", start)):
        assert not decide("viewer", name, **target)
        assert decide("operator", name, **target) and decide("admin", name, **target)
    drain = {"workflow_id": "node/edge-1", "messages": (node.ADMIN.name,)}
    assert not decide("viewer", "UpdateWorkflowExecution", **drain)
    assert decide("operator", "UpdateWorkflowExecution", **drain)
    wait = {"workflow_id": "workload/default/web", "messages": (workload.WAIT_SETTLED.name,)}
    assert decide("viewer", "UpdateWorkflowExecution", **wait)


def test_scheduler_settings_are_admins() -> None:
    target = {"workflow_id": "cluster/dev", "messages": (ledger.SET_SCHEDULER_SETTINGS.name,)}
    assert not decide("operator", "UpdateWorkflowExecution", **target)
    assert decide("admin", "UpdateWorkflowExecution", **target)
    assert decide("viewer", "UpdateWorkflowExecution", workflow_id="cluster/dev",
                  messages=(ledger.WAIT_NODE.name,))  # fmt: skip


def test_the_control_planes_own_messages_are_refused_to_every_person() -> None:
    """The attacks of the issue: a forged ``liveness`` signal, a forged lost-replicas
    signal, reading a secret's sealed record, committing a plan to the ledger."""
    for workflow_id, message, method in (
        ("node/edge-1", node.LIVENESS.name, "SignalWorkflowExecution"),
        ("workload/default/web", workload.REPLICAS_LOST.name, "SignalWorkflowExecution"),
        ("secret/default/db", secret.VIEW.name, "QueryWorkflow"),
        ("cluster/dev", ledger.COMMIT_PLAN.name, "UpdateWorkflowExecution"),
        ("cluster/dev", ledger.APPLY_BATCH.name, "UpdateWorkflowExecution"),
    ):
        for role in PEOPLE:
            decision = temporal_rpc(
                role, WF + method, Call(method, workflow_id, (message,)), GRANTS
            )
            assert not decision.allowed and "control plane" in decision.reason, decision
        assert decide("coordinator", method, workflow_id=workflow_id, messages=(message,))


def test_starting_is_granted_per_workflow_type_and_id() -> None:
    explain = {"workflow_id": "explain/default/web/1234", "starts": "ExplainPlacementWorkflow"}
    assert decide("viewer", "StartWorkflowExecution", **explain)
    # The type must be the one the id's prefix belongs to.
    assert not decide("admin", "StartWorkflowExecution", workflow_id="workload/default/x",
                      starts="ExplainPlacementWorkflow")  # fmt: skip
    assert not decide("admin", "StartWorkflowExecution", workflow_id="node/x",
                      starts="NodeWorkflow")  # fmt: skip
    assert not decide("operator", "StartWorkflowExecution", workflow_id="reaper/dev-1",
                      starts="ReaperWorkflow")  # fmt: skip
    assert decide("admin", "StartWorkflowExecution", workflow_id="reaper/dev-1",
                  starts="ReaperWorkflow")  # fmt: skip
    assert not decide("admin", "StartWorkflowExecution")  # no target read: refused


def test_terminations_and_the_rest_of_the_api() -> None:
    assert decide("operator", "TerminateWorkflowExecution", workflow_id="workload/default/x")
    assert not decide("operator", "TerminateWorkflowExecution", workflow_id="node/x")
    assert decide("admin", "TerminateWorkflowExecution", workflow_id="node/x")
    for method in ("DeleteWorkflowExecution", "CreateSchedule", "StartBatchOperation",
                   "UpdateNamespace", "ResetWorkflowExecution"):  # fmt: skip
        assert not decide("operator", method) and decide("admin", method), method


def test_nodes_and_unknown_roles_are_refused_everything() -> None:
    for role in ("node", "", "root", "Admin"):
        decision = temporal_rpc(role, WF + "DescribeNamespace", Call("DescribeNamespace"), GRANTS)
        assert not decision.allowed and repr(role) in decision.reason


def test_unknown_services_and_malformed_paths_are_refused_even_to_coordinators() -> None:
    for method in ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                   "WorkflowService/StartWorkflowExecution", "/a/b/c",
                   WF + "Start-Workflow", WF, ""):  # fmt: skip
        assert not temporal_rpc("coordinator", method).allowed, method


ROLES = st.sampled_from(["coordinator", "admin", "operator", "viewer", "node", "x"])
NAMES = st.sampled_from(
    ["StartWorkflowExecution", "UpdateWorkflowExecution", "SignalWorkflowExecution",
     "QueryWorkflow", "TerminateWorkflowExecution", "PollActivityTaskQueue",
     "DescribeWorkflowExecution", "DeleteNamespace", "Frobnicate"]
)  # fmt: skip
TABLE = st.dictionaries(
    st.tuples(st.sampled_from(["a/", "b/"]), st.sampled_from(["m", "n"])),
    st.sampled_from(list(AccessRole)),
    max_size=4,
)


@given(ROLES, NAMES, st.sampled_from(["", "a/1", "b/2", "c/3"]),
       st.lists(st.sampled_from(["m", "n", "o"]), max_size=2), TABLE, TABLE)  # fmt: skip
def test_decisions_are_total_monotonic_and_fail_closed(
    role: str,
    name: str,
    wid: str,
    messages: list[str],
    sends: dict[tuple[str, str], AccessRole],
    starts: dict[tuple[str, str], AccessRole],
) -> None:
    grants = Grants(messages=sends, starts=starts)
    call = Call(name, wid, tuple(messages), "m" if name == "StartWorkflowExecution" else "")
    decision = temporal_rpc(role, WF + name, call, grants)
    assert decision.reason
    if decision.allowed and role != "coordinator":
        assert role in PEOPLE and not is_worker_method(name)
        # A role that may do something lets every higher role do it too.
        higher = [r for r in PEOPLE if AccessRole(r).includes(AccessRole(role))]
        assert all(temporal_rpc(r, WF + name, call, grants).allowed for r in higher)
        if name in ("Frobnicate", "DeleteNamespace"):  # neither a read, a send nor ending a run
            assert role == "admin"


def test_worker_and_read_classification() -> None:
    assert not is_worker_method("PollWorkflowExecutionUpdate")
    assert is_worker_method("PollNexusTaskQueue")
    assert is_read("GetSystemInfo") and not is_read("PollActivityTaskQueue")
    assert split_method(WF + "GetSystemInfo") == (WF.strip("/"), "GetSystemInfo")


def test_the_ui_is_browsed_by_every_person_and_driven_by_admins() -> None:
    terminate = "/api/v1/namespaces/default/workflows/x/terminate"
    assert ui_request("viewer", "GET", "/namespaces/default/workflows").allowed
    assert not ui_request("operator", "POST", terminate).allowed
    assert ui_request("admin", "POST", terminate).allowed
    assert not ui_request("node", "GET", "/").allowed
