"""Pure helpers the workflows lean on: template hashes, scaling, support checks, bindings.

They run inside workflow code, so they must be deterministic and must not mutate what
they are given; these tests call them directly, without Temporal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudless.model import EnrollmentInput, NodeRecord
from cloudless.spec import ManifestError, parse_workload
from cloudless.tokens import EnrollmentClaims
from cloudless.workloads import (
    check_supported,
    replica_spec_proto,
    scaled,
    template_hash,
    view_of,
)
from workflows.enrollment import binding_error, expiry_error

Manifest = dict[str, Any]
Edit = Callable[[Manifest], None]


def manifest() -> Manifest:
    return {
        "apiVersion": "cloudless.dev/v1",
        "kind": "Workload",
        "metadata": {"name": "hello", "labels": {"app": "hello"}},
        "spec": {
            "replicas": 3,
            "minAvailable": 2,
            "strategy": "binpack",
            "container": {
                "image": "cloudless/busybox:latest",
                "command": ["httpd"],
                "args": ["-f", "-p", "8080"],
                "env": [{"name": "GREETING", "value": "hello"}],
            },
            "resources": {"cpu": "100m", "memory": "64Mi"},
        },
    }


def edited(edit: Edit) -> Manifest:
    m = manifest()
    edit(m)
    return m


def spec(m: Manifest) -> dict[str, Any]:
    s: dict[str, Any] = m["spec"]
    return s


def container(m: Manifest) -> dict[str, Any]:
    c: dict[str, Any] = m["spec"]["container"]
    return c


def secret_env(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "valueFrom": {
            "secretKeyRef": {
                "namespace": "production",
                "name": "postgres-creds",
                "key": name,
                "audience": "backend-api",
            }
        },
    }


# --------------------------------------------------------------------------- template_hash

SAME_TEMPLATE: dict[str, Edit] = {
    "more replicas": lambda m: spec(m).update(replicas=7),
    "no replicas": lambda m: spec(m).update(replicas=0, minAvailable=0),
    "minAvailable": lambda m: spec(m).update(minAvailable=1),
    "minAvailable removed": lambda m: spec(m).pop("minAvailable"),
    "min_available spelling": lambda m: spec(m).update(min_available=spec(m).pop("minAvailable")),
    "strategy": lambda m: spec(m).update(strategy="spread"),
    "all three": lambda m: spec(m).update(replicas=1, minAvailable=0, strategy="spread"),
    "metadata labels": lambda m: m["metadata"].update(labels={"app": "other"}),
    "cpu spelled in cores": lambda m: spec(m)["resources"].update(cpu="0.1"),
}

NEW_TEMPLATE: dict[str, Edit] = {
    "image tag": lambda m: container(m).update(image="cloudless/busybox:1.36"),
    "image repository": lambda m: container(m).update(image="registry.example.com/team/app"),
    "env value": lambda m: container(m)["env"][0].update(value="bonjour"),
    "env added": lambda m: container(m)["env"].append({"name": "DEBUG", "value": "1"}),
    "env removed": lambda m: container(m).update(env=[]),
    "cpu": lambda m: spec(m)["resources"].update(cpu="200m"),
    "memory": lambda m: spec(m)["resources"].update(memory="128Mi"),
    "storage": lambda m: spec(m)["resources"].update(storage="1Gi"),
    "command": lambda m: container(m).update(command=["sh"]),
    "args": lambda m: container(m).update(args=["-f"]),
}


def hash_of(m: Manifest) -> str:
    return view_of(parse_workload(m)).template_hash


@pytest.mark.parametrize("edit", SAME_TEMPLATE.values(), ids=SAME_TEMPLATE.keys())
def test_template_hash_ignores_how_many_and_where(edit: Edit) -> None:
    assert hash_of(edited(edit)) == hash_of(manifest())


@pytest.mark.parametrize("edit", NEW_TEMPLATE.values(), ids=NEW_TEMPLATE.keys())
def test_template_hash_follows_what_a_replica_is(edit: Edit) -> None:
    assert hash_of(edited(edit)) != hash_of(manifest())


def test_template_hash_is_not_the_spec_hash() -> None:
    before = view_of(parse_workload(manifest()))
    after = view_of(parse_workload(edited(SAME_TEMPLATE["more replicas"])))
    assert before.spec_hash != after.spec_hash
    assert before.template_hash == after.template_hash
    assert template_hash(parse_workload(manifest())) == before.template_hash
    assert len(before.template_hash) == 16 and int(before.template_hash, 16) >= 0


# --------------------------------------------------------------------------- scaled


@pytest.mark.parametrize(
    ("replicas", "min_available"),
    [(5, 2), (2, 2), (1, 1), (0, 0)],
    ids=["up", "down to the budget", "below the budget", "to zero"],
)
def test_scaled_sets_replicas_and_caps_min_available(replicas: int, min_available: int) -> None:
    original = parse_workload(manifest())
    out = scaled(original, replicas)
    assert original == parse_workload(manifest())  # the input is a frozen model
    assert out.spec.replicas == replicas
    assert out.spec.min_available == min_available
    view = view_of(out)
    assert view.replicas == replicas
    assert view.template_hash == hash_of(manifest())


def test_scaled_without_a_budget_adds_none() -> None:
    out = scaled(parse_workload(edited(SAME_TEMPLATE["minAvailable removed"])), 1)
    assert out.spec.min_available is None
    assert "minAvailable" not in out.to_manifest()["spec"]


def test_scaled_refuses_an_invalid_count() -> None:
    with pytest.raises(ManifestError, match="replicas"):
        scaled(parse_workload(manifest()), -1)


@settings(max_examples=60, deadline=None)
@given(
    replicas=st.integers(0, 1000),
    min_available=st.integers(0, 1000),
    target=st.integers(0, 1000),
)
def test_scaled_always_yields_a_valid_workload(
    replicas: int, min_available: int, target: int
) -> None:
    m = manifest()
    spec(m).update(replicas=max(replicas, min_available), minAvailable=min_available)
    parsed = scaled(parse_workload(m), target).spec
    assert parsed.replicas == target
    assert parsed.min_available == min(min_available, target)


# --------------------------------------------------------------------------- check_supported
# check_supported refuses what parses but cannot be delivered, rather than ignore it: today,
# security settings no runtime enforces. Accepted thus means: it does not raise, and the
# replicas' wire spec (what agents run) carries what was accepted.


def wire_env(m: Manifest) -> tuple[dict[str, str], list[tuple[str, str, str, str, str]]]:
    """A replica's plain env and secret env references, as its agent receives them."""
    spec = replica_spec_proto(parse_workload(m), replica_id="hello-1", generation=1, spec_hash="h")
    refs = [
        (e.name, e.ref.namespace, e.ref.name, e.ref.key, e.ref.audience) for e in spec.secret_env
    ]
    return dict(spec.env), refs


def test_check_supported_accepts_plain_values() -> None:
    m = manifest()
    check_supported(view_of(parse_workload(m)))
    assert wire_env(m) == ({"GREETING": "hello"}, [])


def test_check_supported_accepts_secret_refs() -> None:
    # Agents fetch and inject secrets now (docs/design/secrets.md), so apply accepts them.
    m = manifest()
    container(m)["env"] += [secret_env("DB_PASSWORD"), {"name": "A", "value": "b"}]
    check_supported(view_of(parse_workload(m)))
    env, refs = wire_env(m)
    assert env == {"GREETING": "hello", "A": "b"}  # a reference is never sent as a value
    assert refs == [("DB_PASSWORD", "production", "postgres-creds", "DB_PASSWORD", "backend-api")]


def test_check_supported_accepts_working_dir_and_carries_it_to_the_agent() -> None:
    m = manifest()
    container(m)["workingDir"] = "/srv/app"
    check_supported(view_of(parse_workload(m)))
    spec = replica_spec_proto(parse_workload(m), replica_id="hello-1", generation=1, spec_hash="h")
    assert spec.working_dir == "/srv/app"


def test_check_supported_accepts_settings_that_ask_for_nothing() -> None:
    m = manifest()
    m["spec"]["security_context"] = {
        "privileged": False,
        "run_as_non_root": False,
        "read_only_root_filesystem": False,
        "capabilities_drop": [],
        "host_network": False,
        "runtime_class_name": "runc",
        "linux": {},
    }
    check_supported(view_of(parse_workload(m)))


@pytest.mark.parametrize("runtime", ["docker", "exec"])
def test_check_supported_refuses_each_unenforced_setting_by_name(runtime: str) -> None:
    m = manifest()
    m["spec"]["runtime"] = runtime
    container(m)["command"] = ["sleep", "60"]
    m["spec"]["securityContext"] = {  # camelCase is accepted; paths are reported canonically
        "privileged": True,
        "runAsUser": 0,
        "runAsGroup": 1000,
        "runAsNonRoot": False,
        "readOnlyRootFilesystem": True,
        "capabilitiesDrop": ["ALL"],
        "capabilitiesAdd": ["NET_ADMIN"],
        "hostNetwork": True,
        "hostPid": True,
        "hostIpc": True,
        "linux": {
            "seccompProfile": {"type": "RuntimeDefault"},
            "apparmorProfile": {"type": "Localhost", "localhostProfile": "cloudless-default"},
            "selinuxOptions": {"level": "s0:c1,c2"},
        },
        "runtimeClassName": "gvisor",
    }
    view = view_of(parse_workload(m))
    with pytest.raises(ManifestError) as caught:
        check_supported(view)
    refused = {issue.path: issue.message for issue in caught.value.issues}
    prefix = "spec.security_context."
    assert set(refused) == {
        prefix + name
        for name in (
            "privileged",
            "run_as_user",
            "run_as_group",
            "read_only_root_filesystem",
            "capabilities_drop",
            "capabilities_add",
            "host_network",
            "host_pid",
            "host_ipc",
            "linux.seccomp_profile",
            "linux.apparmor_profile",
            "linux.selinux_options",
            "runtime_class_name",
        )
    }
    assert refused[prefix + "runtime_class_name"] == (
        f'runtime_class_name is set to "gvisor", but the {runtime} runtime does not enforce it '
        "yet: the replica would run without it"
    )
    assert "run_as_user is set to 0" in refused[prefix + "run_as_user"]
    text = str(caught.value)
    assert text.startswith("workload default/hello: 13 problems in manifest")
    assert "no runtime does yet" in text and "docs/concepts.md" in text


def test_check_supported_names_a_runtime_that_enforces_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import policies.admission

    monkeypatch.setattr(
        policies.admission, "ENFORCED", {"docker": frozenset(), "exec": frozenset({"privileged"})}
    )
    m = manifest()
    m["spec"]["security_context"] = {"privileged": True}
    with pytest.raises(ManifestError, match="or set runtime: exec, which enforces it"):
        check_supported(view_of(parse_workload(m)))
    m["spec"]["runtime"] = "exec"
    container(m)["command"] = ["sleep", "60"]
    check_supported(view_of(parse_workload(m)))


# --------------------------------------------------------------------------- binding_error

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def enrollment(
    node_id: str = "edge-1",
    labels: Mapping[str, str] | None = None,
    *,
    bound_name: str | None = None,
    bound_labels: Mapping[str, str] | None = None,
) -> EnrollmentInput:
    return EnrollmentInput(
        cluster="prod",
        jti="jti-1",
        token_expires_at=NOW + timedelta(hours=1),
        bound_node_name=bound_name,
        bound_labels=dict(bound_labels or {}),
        csr_pem="-----BEGIN CERTIFICATE REQUEST-----",
        record=NodeRecord(node_id=node_id, zone="eu-west", labels=dict(labels or {})),
    )


@pytest.mark.parametrize(
    "inp",
    [
        enrollment(),
        enrollment(labels={"zone": "eu-west"}),
        enrollment(bound_name="edge-1"),
        enrollment(labels={"zone": "eu-west", "extra": "ok"}, bound_labels={"zone": "eu-west"}),
        enrollment(
            labels={"zone": "eu-west"}, bound_name="edge-1", bound_labels={"zone": "eu-west"}
        ),
    ],
    ids=["unbound", "unbound with labels", "name", "labels subset", "name and labels"],
)
def test_binding_accepts_a_matching_node(inp: EnrollmentInput) -> None:
    assert binding_error(inp) is None


@pytest.mark.parametrize(
    ("inp", "expected"),
    [
        (
            enrollment("edge-2", bound_name="edge-1"),
            "token is bound to node 'edge-1', not 'edge-2'",
        ),
        (
            enrollment(labels={"zone": "us-east"}, bound_labels={"zone": "eu-west"}),
            "token requires label zone=eu-west, but the node has zone=us-east",
        ),
        (
            enrollment(labels={"tier": "edge"}, bound_labels={"zone": "eu-west"}),
            "token requires label zone=eu-west, but the node has no 'zone' label",
        ),
        (
            enrollment(labels={"zone": ""}, bound_labels={"zone": "eu-west"}),
            "token requires label zone=eu-west, but the node has zone=",
        ),
        (
            enrollment(bound_labels={"zone": "eu-west", "disk": "ssd"}),
            "token requires label disk=ssd, but the node has no 'disk' label; "
            "token requires label zone=eu-west, but the node has no 'zone' label",
        ),
        (
            enrollment(
                "edge-9", {"zone": "us-east"}, bound_name="edge-1", bound_labels={"zone": "x"}
            ),
            "token is bound to node 'edge-1', not 'edge-9'; "
            "token requires label zone=x, but the node has zone=us-east",
        ),
    ],
    ids=[
        "other name",
        "label value differs",
        "label missing",
        "empty label value",
        "every missing key, in sorted order",
        "name first, then labels",
    ],
)
def test_binding_refuses_a_mismatched_node(inp: EnrollmentInput, expected: str) -> None:
    assert binding_error(inp) == expected


names = st.sampled_from(["edge-1", "edge-2", "core-1"])
label_maps = st.dictionaries(st.sampled_from(["zone", "tier", "disk"]), st.sampled_from(["a", "b"]))


@settings(max_examples=60, deadline=None)
@given(
    node=names,
    labels=label_maps,
    bound_name=st.one_of(st.none(), names),
    bound_labels=label_maps,
)
def test_binding_agrees_with_the_gateway_check(
    node: str, labels: dict[str, str], bound_name: str | None, bound_labels: dict[str, str]
) -> None:
    """The workflow re-checks durably what the gateway checked on the verified claims."""
    claims = EnrollmentClaims(
        jti="jti-1",
        cluster="prod",
        issued_at=NOW,
        expires_at=NOW + timedelta(hours=1),
        node_name=bound_name,
        labels=bound_labels,
        ca_pem="",
    )
    inp = enrollment(node, labels, bound_name=bound_name, bound_labels=bound_labels)
    assert binding_error(inp) == claims.binding_error(node, labels)


# --------------------------------------------------------------------------- expiry_error


def test_workflow_expiry_leeway_is_capped_at_the_token_lifetime() -> None:
    """Issue 10: the workflow re-checked expiry with a flat 30 s leeway, so a 1 s token that
    passed the gateway still enrolled half a minute later. It now applies the gateway's rule."""
    short = enrollment().model_copy(
        update={"token_issued_at": NOW, "token_expires_at": NOW + timedelta(seconds=1)}
    )
    assert expiry_error(short, NOW + timedelta(milliseconds=1999)) is None
    for late in (2, 3, 20):
        message = expiry_error(short, NOW + timedelta(seconds=late))
        assert message is not None and "token expired at 2025-01-01T00:00:01Z" in message
    hour = enrollment().model_copy(update={"token_issued_at": NOW})
    assert expiry_error(hour, NOW + timedelta(hours=1, seconds=4)) is None
    assert expiry_error(hour, NOW + timedelta(hours=1, seconds=5)) is not None
    # An input without the issue time (from an older gateway) gets no leeway at all.
    assert expiry_error(enrollment(), NOW + timedelta(hours=1)) is not None
    assert expiry_error(enrollment(), NOW + timedelta(minutes=59)) is None
