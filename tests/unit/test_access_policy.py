"""policies/access.py: who may call which Temporal method through the front."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from policies.access import is_worker_method, split_method, temporal_rpc, ui_request

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
OP = "/temporal.api.operatorservice.v1.OperatorService/"


def test_coordinators_may_run_workers_and_admins_may_not() -> None:
    for method in ("PollWorkflowTaskQueue", "RespondActivityTaskCompleted",
                   "RecordActivityTaskHeartbeat", "PollActivityTaskQueue"):  # fmt: skip
        assert temporal_rpc("coordinator", WF + method).allowed
        denied = temporal_rpc("admin", WF + method)
        assert not denied.allowed and "worker call" in denied.reason


def test_admins_operate_and_read() -> None:
    for method in ("StartWorkflowExecution", "UpdateWorkflowExecution", "ExecuteMultiOperation",
                   "DescribeWorkflowExecution", "GetWorkflowExecutionHistory", "ListSchedules",
                   "PollWorkflowExecutionUpdate", "GetSystemInfo"):  # fmt: skip
        assert temporal_rpc("admin", WF + method).allowed, method
    assert temporal_rpc("admin", OP + "ListSearchAttributes").allowed


def test_nodes_and_unknown_roles_are_refused_everything() -> None:
    for role in ("node", "viewer", "", "root"):
        decision = temporal_rpc(role, WF + "DescribeNamespace")
        assert not decision.allowed and repr(role) in decision.reason


def test_unknown_services_and_malformed_paths_are_refused_even_to_coordinators() -> None:
    for method in ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                   "WorkflowService/StartWorkflowExecution", "/a/b/c",
                   WF + "Start-Workflow", WF, ""):  # fmt: skip
        assert not temporal_rpc("coordinator", method).allowed, method


@given(st.text(max_size=80), st.sampled_from(["coordinator", "admin", "node", "x"]))
def test_decisions_are_total_and_fail_closed(method: str, role: str) -> None:
    decision = temporal_rpc(role, method)
    assert decision.reason
    if decision.allowed:
        split = split_method(method)
        assert split is not None and role in ("coordinator", "admin")
        assert role == "coordinator" or not is_worker_method(split[1])


def test_the_client_side_update_poll_is_not_a_worker_call() -> None:
    assert not is_worker_method("PollWorkflowExecutionUpdate")
    assert is_worker_method("PollNexusTaskQueue")


def test_only_admins_use_the_ui_today() -> None:
    assert ui_request("admin", "POST", "/api/v1/namespaces/default/workflows/x/terminate").allowed
    assert not ui_request("node", "GET", "/").allowed
