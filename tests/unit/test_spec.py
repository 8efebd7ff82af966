"""Workload manifests: what is accepted, how every rejection reads, and round-trip properties."""

from __future__ import annotations

import copy
import json
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic.alias_generators import to_camel, to_snake

from cloudless.spec import (
    ContainerSpec,
    ManifestError,
    ManifestIssue,
    ObjectMeta,
    ResourceRequirements,
    SecurityContext,
    Workload,
    WorkloadSpec,
    load_manifest_file,
    load_manifests,
    parse_workload,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MI = 1024**2

Manifest = dict[str, Any]


def minimal() -> Manifest:
    return {
        "apiVersion": "cloudless.dev/v1",
        "kind": "Workload",
        "metadata": {"name": "web"},
        "spec": {"container": {"image": "cloudless/busybox:latest"}},
    }


def full() -> Manifest:
    """Every field of the product docs' shape, all valid."""
    return {
        "apiVersion": "cloudless.dev/v1",
        "kind": "Workload",
        "metadata": {"name": "hello", "namespace": "default", "labels": {"app": "hello"}},
        "spec": {
            "replicas": 3,
            "runtime": "docker",
            "restartPolicy": "Always",
            "strategy": "binpack",
            "minAvailable": 1,
            "maxUnavailable": "25%",
            "container": {
                "image": "cloudless/busybox:latest",
                "command": ["httpd"],
                "args": ["-f", "-p", "8080"],
                "workingDir": "/",
                "env": [
                    {"name": "GREETING", "value": "hello"},
                    {
                        "name": "DB_PASSWORD",
                        "valueFrom": {
                            "secretKeyRef": {
                                "namespace": "production",
                                "name": "postgres-creds",
                                "key": "DB_PASSWORD",
                                "audience": "backend-api",
                            }
                        },
                    },
                ],
                "ports": [
                    {"name": "http", "containerPort": 8080, "protocol": "TCP", "hostPort": 18080}
                ],
            },
            "resources": {"cpu": "100m", "memory": "32Mi", "storage": 0},
            "placement": {"nodeSelector": {"disk": "ssd"}, "zones": ["zone-a", "zone-b"]},
            "security_context": {
                "privileged": False,
                "run_as_non_root": True,
                "run_as_user": 1000,
                "run_as_group": 1000,
                "read_only_root_filesystem": True,
                "capabilities_drop": ["ALL"],
                "capabilities_add": ["NET_BIND_SERVICE"],
                "host_network": False,
                "host_pid": False,
                "host_ipc": False,
                "linux": {
                    "seccomp_profile": {"type": "RuntimeDefault"},
                    "apparmor_profile": {
                        "type": "Localhost",
                        "localhost_profile": "cloudless-default",
                    },
                    "selinux_options": {
                        "user": "system_u",
                        "role": "system_r",
                        "type": "container_t",
                        "level": "s0:c100,c200",
                    },
                },
                "runtime_class_name": "runc",
            },
        },
    }


def issues_of(manifest: object) -> list[ManifestIssue]:
    """Load ``manifest`` as YAML text and return the issues it raises (must raise)."""
    with pytest.raises(ManifestError) as caught:
        load_manifests(yaml.safe_dump(manifest, sort_keys=False), source="test.yaml")
    assert caught.value.issues, "a ManifestError always carries at least one issue"
    for issue in caught.value.issues:
        assert issue.message.strip() and issue.fix.strip()
    return caught.value.issues


def put(manifest: Manifest, path: str, value: object) -> Manifest:
    """Set ``a.b[0].c`` in a copy of the manifest; ``...`` as value deletes the key."""
    result = copy.deepcopy(manifest)
    node: Any = result
    parts: list[str | int] = []
    for piece in path.split("."):
        name, _, rest = piece.partition("[")
        parts.append(name)
        if rest:
            parts.extend(int(i) for i in rest.rstrip("]").split("]["))
    for part in parts[:-1]:
        if isinstance(part, str) and part not in node:
            node[part] = {}
        node = node[part]
    if value is Ellipsis:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return result


# --------------------------------------------------------------------------------------------
# Accepted input
# --------------------------------------------------------------------------------------------


def test_example_hello_loads() -> None:
    [workload] = load_manifest_file(EXAMPLES / "hello.yaml")
    assert workload.key == "default/hello"
    spec = workload.spec
    assert spec.replicas == 3
    assert spec.runtime == "docker"
    assert spec.container.image == "cloudless/busybox:latest"
    assert spec.resources.cpu_millis == 100
    assert spec.resources.memory_bytes == 32 * MI
    assert [env.name for env in spec.container.env] == ["GREETING"]
    assert spec.container.ports[0].container_port == 8080
    assert "httpd" in " ".join(spec.container.command + spec.container.args)


def test_defaults() -> None:
    workload = parse_workload(minimal())
    assert workload.metadata.namespace == "default"
    assert workload.metadata.labels == {}
    spec = workload.spec
    assert (spec.replicas, spec.runtime, spec.restart_policy, spec.strategy) == (
        1,
        "docker",
        "Always",
        "binpack",
    )
    assert spec.min_available is None
    assert spec.max_unavailable is None
    assert spec.resources == ResourceRequirements(cpu="100m", memory="64Mi", storage="0")
    assert (spec.resources.cpu_millis, spec.resources.memory_bytes) == (100, 64 * MI)
    assert spec.resources.storage_bytes == 0
    assert spec.security_context == SecurityContext()
    assert spec.security_context.runtime_class_name == "runc"
    assert spec.placement.zones == ()


def test_full_product_shape_parses() -> None:
    workload = parse_workload(full())
    container = workload.spec.container
    secret = container.env[1].value_from
    assert secret is not None
    assert secret.secret_key_ref.audience == "backend-api"
    assert container.ports[0].host_port == 18080
    security = workload.spec.security_context
    assert security.capabilities_drop == ("ALL",)
    assert security.linux is not None
    assert security.linux.apparmor_profile is not None
    assert security.linux.apparmor_profile.localhost_profile == "cloudless-default"
    assert security.linux.selinux_options is not None
    assert security.linux.selinux_options.level == "s0:c100,c200"
    assert workload.spec.placement.node_selector == {"disk": "ssd"}


def test_snake_and_camel_spellings_are_equivalent() -> None:
    camel = full()
    snake = copy.deepcopy(camel)
    snake["api_version"] = snake.pop("apiVersion")
    snake["spec"]["restart_policy"] = snake["spec"].pop("restartPolicy")
    snake["spec"]["min_available"] = snake["spec"].pop("minAvailable")
    snake["spec"]["max_unavailable"] = snake["spec"].pop("maxUnavailable")
    snake["spec"]["container"]["working_dir"] = snake["spec"]["container"].pop("workingDir")
    port = snake["spec"]["container"]["ports"][0]
    port["container_port"] = port.pop("containerPort")
    env = snake["spec"]["container"]["env"][1]
    env["value_from"] = {"secret_key_ref": env.pop("valueFrom")["secretKeyRef"]}
    snake["spec"]["securityContext"] = snake["spec"].pop("security_context")
    snake["spec"]["securityContext"]["runAsNonRoot"] = snake["spec"]["securityContext"].pop(
        "run_as_non_root"
    )
    assert parse_workload(snake) == parse_workload(camel)


def test_to_manifest_is_canonical() -> None:
    manifest = parse_workload(full()).to_manifest()
    spec = manifest["spec"]
    assert "restartPolicy" in spec and "minAvailable" in spec
    assert spec["maxUnavailable"] == "25%"
    assert spec["container"]["ports"][0]["containerPort"] == 8080
    assert spec["resources"] == {"cpu": "100m", "memory": "32Mi", "storage": "0"}
    security = spec["security_context"]
    assert security["run_as_non_root"] is True
    assert security["linux"]["seccomp_profile"] == {"type": "RuntimeDefault"}
    assert parse_workload(manifest) == parse_workload(full())


@pytest.mark.parametrize(
    ("path", "value", "check"),
    [
        ("spec.resources.cpu", 2, lambda w: w.spec.resources.cpu_millis == 2000),
        ("spec.resources.cpu", "0.5", lambda w: w.spec.resources.cpu_millis == 500),
        ("spec.resources.memory", "1Gi", lambda w: w.spec.resources.memory_bytes == 1024**3),
        ("spec.resources.memory", "512M", lambda w: w.spec.resources.memory_bytes == 512 * 10**6),
        ("spec.resources.storage", "1Pi", lambda w: w.spec.resources.storage_bytes == 1024**5),
        ("spec.resources.gpu", 2, lambda w: w.spec.resources.gpus == 2),
        ("spec.resources.bandwidth", "10Mbps", lambda w: w.spec.resources.bandwidth == 10**7),
        ("spec.resources.bandwidth", "1.5G", lambda w: w.spec.resources.bandwidth == 15 * 10**8),
        ("spec.replicas", 0, lambda w: w.spec.replicas == 0),
        ("spec.replicas", 1000, lambda w: w.spec.replicas == 1000),
        ("spec.runtime", "exec", None),
        ("spec.strategy", "spread", lambda w: w.spec.strategy == "spread"),
        (
            "spec.securityContext",
            {"capabilities_add": ["CAP_NET_ADMIN"], "capabilitiesDrop": ["CAP_ALL"]},
            lambda w: (
                w.spec.security_context.capabilities_add == ("NET_ADMIN",)
                and w.spec.security_context.capabilities_drop == ("ALL",)
            ),
        ),
        (
            "metadata.labels",
            {"example.com/tier": "web", "empty": "", "v": "1.2_3-a"},
            lambda w: w.metadata.labels["example.com/tier"] == "web",
        ),
        ("spec.container.image", "localhost:5000/team/app:1.0", None),
        ("spec.container.image", "nginx@sha256:" + "ab" * 32, None),
        ("spec.container.image", "registry.example.com/a/b_c/d-e:v1.2.3", None),
        (
            "spec.container.ports",
            [{"containerPort": 53}, {"containerPort": 53, "protocol": "UDP"}],
            None,
        ),
        ("spec.container.env", [{"name": "EMPTY", "value": ""}], None),
        ("spec.security_context.linux.selinux_options.level", "s0-s0:c0.c1023", None),
        ("spec.minAvailable", 1, lambda w: w.spec.min_available == 1),
        ("spec.maxUnavailable", 0, lambda w: w.spec.max_unavailable == 0),
        ("spec.maxUnavailable", 1000, lambda w: w.spec.max_unavailable == 1000),
        ("spec.maxUnavailable", "0%", lambda w: w.spec.max_unavailable == "0%"),
        ("spec.maxUnavailable", "25%", lambda w: w.spec.max_unavailable == "25%"),
        ("spec.maxUnavailable", "100%", lambda w: w.spec.max_unavailable == "100%"),
        ("spec.max_unavailable", 2, lambda w: w.spec.max_unavailable == 2),
    ],
)
def test_accepts(path: str, value: object, check: Callable[[Workload], bool] | None) -> None:
    manifest = put(minimal(), path, value)
    if path == "spec.runtime":
        manifest = put(manifest, "spec.container", {"command": ["/bin/true"]})
    [workload] = load_manifests(yaml.safe_dump(manifest))
    assert check is None or check(workload)


def test_json_documents_and_arrays() -> None:
    [one] = load_manifests(json.dumps(minimal()))
    other = put(minimal(), "metadata.name", "api")
    both = load_manifests(json.dumps([minimal(), other]))
    assert [w.key for w in both] == ["default/web", "default/api"]
    assert one == both[0]
    flow = "{apiVersion: cloudless.dev/v1, kind: Workload, metadata: {name: web},"
    assert load_manifests(flow + " spec: {container: {image: x}}}")[0].key == "default/web"


def test_multiple_documents_in_order_and_empty_ones_skipped() -> None:
    second = put(minimal(), "metadata.name", "second")
    text = "---\n" + yaml.safe_dump(minimal()) + "---\n---\n" + yaml.safe_dump(second) + "---\n"
    assert [w.metadata.name for w in load_manifests(text)] == ["web", "second"]


def test_python_construction_uses_snake_case_and_units() -> None:
    workload = Workload(
        metadata=ObjectMeta(name="x"),
        spec=WorkloadSpec(
            restart_policy="Never",
            container=ContainerSpec(image="busybox"),
            resources=ResourceRequirements.from_units(cpu_millis=250, memory_bytes=128 * MI),
        ),
    )
    assert workload.spec.resources.cpu_millis == 250
    assert workload.to_manifest()["spec"]["resources"]["memory"] == "128Mi"
    assert parse_workload(workload.to_manifest()) == workload


def test_models_are_frozen() -> None:
    workload = parse_workload(minimal())
    with pytest.raises(ValidationError):
        workload.spec.replicas = 5  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Rejections: one table row per rule; the path, the message and the fix are all checked
# --------------------------------------------------------------------------------------------

# Path prefixes, to keep the table one row per line.
BOX = "spec.container"
ENV = "spec.container.env"
PORTS = "spec.container.ports"
REF = "spec.container.env[0].valueFrom.secretKeyRef"
RES = "spec.resources"
SEC = "spec.security_context"
LINUX = "spec.security_context.linux"
SECRET = {"namespace": "production", "name": "db", "key": "PASSWORD", "audience": "api"}

# (row id, path to set, value (... deletes it), suffix of the reported path, expected text in
# the message or the fix). The reported path is the set path plus the suffix.
REJECTIONS: list[tuple[str, str, object, str, str]] = [
    ("name-dns", "metadata.name", "Hello_World", "", "DNS-1123"),
    ("name-long", "metadata.name", "a" * 64, "", "64 characters"),
    ("name-dash", "metadata.name", "-web", "", "start and end"),
    ("name-empty", "metadata.name", "", "", "empty"),
    ("name-missing", "metadata.name", ..., "", "required"),
    ("name-number", "metadata.name", 7, "", "quotes"),
    ("namespace", "metadata.namespace", "Prod", "", "DNS-1123"),
    ("label-key", "metadata.labels", {"bad key": "x"}, '["bad key"]', "63"),
    ("label-prefix", "metadata.labels", {"Ex_/a": "x"}, '["Ex_/a"]', "prefix"),
    ("label-value", "metadata.labels", {"a": "-x"}, ".a", "63"),
    ("label-type", "metadata.labels", {"tier": 1}, ".tier", "quotes"),
    ("labels-list", "metadata.labels", ["a"], "", "mapping"),
    ("replicas-high", "spec.replicas", 1001, "", "between 0 and 1000"),
    ("replicas-neg", "spec.replicas", -1, "", "between 0 and 1000"),
    ("replicas-str", "spec.replicas", "3", "", "whole number"),
    ("replicas-float", "spec.replicas", 2.5, "", "whole number"),
    ("replicas-bool", "spec.replicas", True, "", "whole number"),
    ("runtime", "spec.runtime", "podman", "", "docker, exec"),
    ("restart-case", "spec.restartPolicy", "always", "", "'Always'"),
    ("strategy", "spec.strategy", "random", "", "binpack, spread"),
    ("min-available-neg", "spec.minAvailable", -1, "", "between"),
    ("min-available-high", "spec.minAvailable", 2, "", "must not exceed"),
    ("max-unavailable-neg", "spec.maxUnavailable", -1, "", "between 0 and 1000"),
    ("max-unavailable-high", "spec.maxUnavailable", 1001, "", "between 0 and 1000"),
    ("max-unavailable-bool", "spec.maxUnavailable", True, "", '"25%"'),
    ("max-unavailable-float", "spec.maxUnavailable", 0.5, "", "whole number of replicas"),
    ("max-unavailable-pct-high", "spec.maxUnavailable", "150%", "", "0% to 100%"),
    ("max-unavailable-pct-frac", "spec.maxUnavailable", "12.5%", "", "whole percentage"),
    ("max-unavailable-pct-space", "spec.maxUnavailable", "25 %", "", "e.g. \"25%\""),
    ("max-unavailable-digits", "spec.maxUnavailable", "2", "", "without quotes"),
    ("max-unavailable-snake", "spec.max_unavailable", "x", "", "percentage"),
    ("container-missing", BOX, ..., "", "required"),
    ("container-str", BOX, "busybox", "", "mapping"),
    ("image-missing", f"{BOX}.image", ..., "", "runtime is docker"),
    ("image-space", f"{BOX}.image", "busy box", "", "whitespace"),
    ("image-upper", f"{BOX}.image", "BusyBox", "", "lower-case"),
    ("image-scheme", f"{BOX}.image", "https://x/y", "", "scheme"),
    ("image-shape", f"{BOX}.image", "a//b", "", "reference"),
    ("image-empty", f"{BOX}.image", "", "", "empty"),
    ("command-str", f"{BOX}.command", "httpd -f", "", "list"),
    ("command-empty", f"{BOX}.command", [""], "[0]", "empty"),
    ("args-int", f"{BOX}.args", ["-p", 8080], "[1]", '"8080"'),
    ("workdir", f"{BOX}.workingDir", "app", "", "absolute"),
    ("env-name", ENV, [{"name": "1X", "value": "v"}], "[0].name", "C identifier"),
    ("env-none", ENV, [{"name": "X"}], "[0]", "exactly one"),
    ("env-both", ENV, [{"name": "X", "value": "a", "valueFrom": {"secretKeyRef": SECRET}}],
     "[0].valueFrom", "cannot be combined"),
    ("env-dup", ENV, [{"name": "X", "value": "a"}, {"name": "X", "value": ""}], "[1].name",
     "unique"),
    ("env-int", ENV, [{"name": "PORT", "value": 80}], "[0].value", "quotes"),
    ("port-zero", PORTS, [{"containerPort": 0}], "[0].containerPort", "between 1 and 65535"),
    ("port-high", PORTS, [{"containerPort": 70000}], "[0].containerPort", "65535"),
    ("port-missing", PORTS, [{"name": "http"}], "[0].containerPort", "required"),
    ("port-proto", PORTS, [{"containerPort": 1, "protocol": "tcp"}], "[0].protocol", "'TCP'"),
    ("port-name", PORTS, [{"containerPort": 1, "name": "a-long-port-name"}], "[0].name", "15"),
    ("port-dup", PORTS, [{"containerPort": 80}, {"containerPort": 80, "protocol": "TCP"}],
     "[1].containerPort", "80/TCP is already used by ports[0]"),
    ("host-port-dup", PORTS, [{"containerPort": 80, "hostPort": 8080},
                              {"containerPort": 81, "hostPort": 8080}],
     "[1].hostPort", "unique per protocol"),
    ("port-name-dup", PORTS, [{"containerPort": 80, "name": "web"},
                              {"containerPort": 81, "name": "web"}], "[1].name", "unique"),
    ("host-port-high", PORTS, [{"containerPort": 80, "hostPort": 65536}], "[0].hostPort",
     "65535"),
    ("secret-ns", f"{REF}.namespace", "Prod", "", "DNS-1123"),
    ("secret-name", f"{REF}.name", "Creds!", "", "subdomain"),
    ("secret-key", f"{REF}.key", "a b", "", "letters"),
    ("secret-aud-star", f"{REF}.audience", "*", "", "'*'"),
    ("secret-aud-empty", f"{REF}.audience", "", "", "non-empty"),
    ("secret-aud-missing", f"{REF}.audience", ..., "", "required"),
    ("cpu-neg", f"{RES}.cpu", "-1", "", "negative"),
    ("cpu-fraction", f"{RES}.cpu", "0.0001", "", "millicore"),
    ("cpu-zero", f"{RES}.cpu", "0", "", "at least 1m"),
    ("cpu-huge", f"{RES}.cpu", 2000, "", "at most 1024"),
    ("cpu-garbage", f"{RES}.cpu", "fast", "", "100m"),
    ("cpu-list", f"{RES}.cpu", [1], "", "CPU quantity"),
    ("memory-neg", f"{RES}.memory", "-5Mi", "", "'-5Mi'"),
    ("memory-small", f"{RES}.memory", "1Mi", "", "at least 6Mi"),
    ("memory-huge", f"{RES}.memory", "17Ti", "", "at most 16Ti"),
    ("memory-unit", f"{RES}.memory", "32MB", "", "32Mi"),
    ("memory-exp", f"{RES}.memory", "1e9", "", "exponent"),
    ("storage-huge", f"{RES}.storage", "2Pi", "", "at most 1Pi"),
    ("gpu-str", f"{RES}.gpu", "two", "", "whole number of GPUs"),
    ("gpu-bool", f"{RES}.gpu", True, "", "whole number of GPUs"),
    ("gpu-huge", f"{RES}.gpu", 65, "", "between 0 and 64"),
    ("bandwidth-bytes", f"{RES}.bandwidth", "10MBps", "", "bytes/s are not accepted"),
    ("bandwidth-slash", f"{RES}.bandwidth", "10Mb/s", "", "10Mbps"),
    ("bandwidth-huge", f"{RES}.bandwidth", "1Tbps", "", "at most 400Gbps"),
    ("resources-int-name", f"{RES}.cpu_millis", 100, "", "unknown field"),
    ("selector", "spec.placement.nodeSelector", {"disk": "s s"}, ".disk", "63"),
    ("zone-bad", "spec.placement.zones", ["Zone_A"], "[0]", "DNS-1123"),
    ("zone-dup", "spec.placement.zones", ["a", "a"], "[1]", "unique"),
    ("priv-nonroot", SEC, {"privileged": True, "run_as_non_root": True}, ".privileged",
     "run_as_non_root"),
    ("root-nonroot", SEC, {"run_as_user": 0, "run_as_non_root": True}, ".run_as_user", "root"),
    ("uid-range", f"{SEC}.run_as_user", 2**31, "", "between 0 and 2147483647"),
    ("gid-neg", f"{SEC}.run_as_group", -1, "", "between"),
    ("bool-str", f"{SEC}.privileged", "false", "", "true or false"),
    ("cap-lower", f"{SEC}.capabilities_add", ["net_admin"], "[0]", "NET_ADMIN"),
    ("cap-typo", f"{SEC}.capabilities_add", ["NET_BIND_SERVCE"], "[0]", "NET_BIND_SERVICE"),
    ("cap-dup", f"{SEC}.capabilities_drop", ["ALL", "CAP_ALL"], "[1]", "unique"),
    ("seccomp-type", f"{LINUX}.seccomp_profile", {"type": "Default"}, ".type", "RuntimeDefault"),
    ("seccomp-needs-path", f"{LINUX}.seccomp_profile", {"type": "Localhost"},
     ".localhost_profile", "required"),
    ("seccomp-forbids-path", f"{LINUX}.seccomp_profile",
     {"type": "Unconfined", "localhost_profile": "x"}, ".localhost_profile", "only allowed"),
    ("apparmor-dotdot", f"{LINUX}.apparmor_profile",
     {"type": "Localhost", "localhost_profile": "../etc"}, ".localhost_profile", ".."),
    ("apparmor-abs", f"{LINUX}.apparmor_profile",
     {"type": "Localhost", "localhost_profile": "/etc/x"}, ".localhost_profile", "relative"),
    ("apparmor-runtime", f"{LINUX}.apparmor_profile",
     {"type": "RuntimeDefault", "localhost_profile": "p"}, ".localhost_profile", "Localhost"),
    ("selinux-level", f"{LINUX}.selinux_options", {"level": "high"}, ".level", "s0:c100,c200"),
    ("selinux-user", f"{LINUX}.selinux_options", {"user": "a b"}, ".user", "SELinux"),
    ("runtime-class", f"{SEC}.runtime_class_name", "gvizor", "", "'gvisor'"),
    ("api-version", "apiVersion", "v1", "", "cloudless.dev/v1"),
    ("api-missing", "apiVersion", ..., "", "required"),
    ("kind-unknown", "kind", "Service", "", "Workload"),
    ("kind-case", "kind", "workload", "", "did you mean 'Workload'"),
    ("kind-missing", "kind", ..., "", "required"),
    ("spec-missing", "spec", ..., "", "required"),
    ("spec-null", "spec", None, "", "mapping"),
    ("unknown-typo", "spec.replcas", 3, "", "did you mean 'replicas'?"),
    ("unknown-snake-typo", "spec.restart_polcy", "Never", "", "did you mean 'restart_policy'?"),
    ("unknown-misplaced", "spec.image", "x", "", "spec.container.image"),
    ("unknown-other", f"{BOX}.zzz", 1, "", "allowed here"),
    ("unknown-top", "status", {}, "", "unknown field"),
    ("unknown-two", f"{SEC}.capabilities", {"drop": ["ALL"]}, "",
     "did you mean 'capabilities_add' or 'capabilities_drop'?"),
    ("unknown-case", "spec.Replicas", 2, "", "did you mean 'replicas'?"),
    ("unknown-moved", "spec.nodeSelector", {}, "", "spec.placement.nodeSelector"),
    ("both-spellings", "spec.restart_policy", "Always", "", "twice"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value", "suffix", "text"),
    [row[1:] for row in REJECTIONS],
    ids=[row[0] for row in REJECTIONS],
)
def test_rejects(path: str, value: object, suffix: str, text: str) -> None:
    base = minimal()
    if path.startswith(REF):  # start from one valid secret reference
        base = put(base, ENV, [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": SECRET}}])
    if path == "spec.minAvailable":
        base = put(base, "spec.replicas", 1)
    if path == "spec.restart_policy":  # the camelCase spelling is already there
        base = put(base, "spec.restartPolicy", "Always")
    issues = issues_of(put(base, path, value))
    assert [issue.path for issue in issues] == [path + suffix], issues
    [issue] = issues
    assert text in f"{issue.message} (fix: {issue.fix})", issue
    assert issue.document == 0


def test_three_distinct_errors_are_all_reported() -> None:
    manifest = put(minimal(), "metadata.name", "Bad_Name")
    manifest = put(manifest, "spec.resources.memory", "-5Mi")
    manifest = put(manifest, "spec.replicaz", 2)
    issues = issues_of(manifest)
    by_path = {issue.path: issue for issue in issues}
    assert set(by_path) == {"metadata.name", "spec.resources.memory", "spec.replicaz"}
    assert "DNS-1123" in by_path["metadata.name"].message
    assert "'-5Mi'" in by_path["spec.resources.memory"].message
    assert "64Mi" in by_path["spec.resources.memory"].fix
    assert "unknown field 'replicaz'" in by_path["spec.replicaz"].message
    assert by_path["spec.replicaz"].fix == "did you mean 'replicas'?"


def test_cross_field_checks_run_alongside_field_errors() -> None:
    manifest = put(minimal(), "spec.replicas", 1)
    manifest = put(manifest, "spec.minAvailable", 3)
    manifest = put(manifest, "spec.container.ports", [{"containerPort": "http"}])
    manifest = put(
        manifest,
        "spec.security_context",
        {"privileged": True, "run_as_non_root": True, "host_pid": "no"},
    )
    paths = {issue.path for issue in issues_of(manifest)}
    assert paths == {
        "spec.minAvailable",
        "spec.container.ports[0].containerPort",
        "spec.security_context.privileged",
        "spec.security_context.host_pid",
    }


def test_paths_use_the_users_spelling() -> None:
    manifest = put(minimal(), "spec.restart_policy", "sometimes")
    manifest = put(manifest, "spec.securityContext", {"runAsUser": -4})
    manifest = put(manifest, "spec.container.ports", [{"container_port": 0}])
    paths = {issue.path for issue in issues_of(manifest)}
    assert paths == {
        "spec.restart_policy",
        "spec.securityContext.runAsUser",
        "spec.container.ports[0].container_port",
    }


def test_yaml_syntax_error_has_line_and_column() -> None:
    text = "apiVersion: cloudless.dev/v1\nkind: Workload\nmetadata:\n  name: [web\n"
    with pytest.raises(ManifestError) as caught:
        load_manifests(text, source="broken.yaml")
    [issue] = caught.value.issues
    assert "line " in issue.message and "column " in issue.message
    assert "YAML" in issue.message and issue.fix


def test_yaml_duplicate_keys_and_tabs_are_rejected() -> None:
    with pytest.raises(ManifestError, match="duplicate key 'kind'"):
        load_manifests("kind: Workload\nkind: Workload\n")
    with pytest.raises(ManifestError) as caught:
        load_manifests("kind: Workload\n\tspec: {}\n")
    assert "tabs" in caught.value.issues[0].fix


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "---\n---\n"])
def test_no_documents_is_an_error(text: str) -> None:
    with pytest.raises(ManifestError, match="no manifest found"):
        load_manifests(text)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_document_must_be_a_mapping(text: str) -> None:
    with pytest.raises(ManifestError, match="must be a mapping"):
        load_manifests(text)


def test_issues_across_documents_carry_their_index() -> None:
    bad = put(minimal(), "spec.replicas", -1)
    other = put(minimal(), "metadata.name", "other")
    text = yaml.safe_dump_all([minimal(), bad, other, {"kind": "Nope"}])
    with pytest.raises(ManifestError) as caught:
        load_manifests(text, source="many.yaml")
    assert [(issue.document, issue.path) for issue in caught.value.issues] == [
        (1, "spec.replicas"),
        (3, "apiVersion"),
        (3, "kind"),
    ]
    rendered = str(caught.value)
    assert rendered.splitlines()[0] == "many.yaml: 3 problems in manifest"
    assert "(document 2)" in rendered


def test_duplicate_workloads_in_one_file() -> None:
    text = yaml.safe_dump_all([minimal(), put(minimal(), "spec.replicas", 2)])
    with pytest.raises(ManifestError) as caught:
        load_manifests(text)
    [issue] = caught.value.issues
    assert issue.document == 1 and "default/web" in issue.message


def test_same_name_in_other_namespace_is_fine() -> None:
    text = yaml.safe_dump_all([minimal(), put(minimal(), "metadata.namespace", "prod")])
    assert [w.key for w in load_manifests(text)] == ["default/web", "prod/web"]


def test_error_string_format() -> None:
    error = ManifestError(
        [ManifestIssue(path="spec.replicas", message="replicas is bad", fix="use 3", document=0)],
        source="app.yaml",
    )
    assert (
        str(error)
        == "app.yaml: 1 problem in manifest\n  spec.replicas: replicas is bad (fix: use 3)"
    )
    clone = pickle.loads(pickle.dumps(error))
    assert clone.issues == error.issues and clone.source == "app.yaml"


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifest_file(tmp_path / "missing.yaml")
    assert caught.value.source.endswith("missing.yaml")
    assert "cannot read" in caught.value.issues[0].message
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest_file(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ManifestError, match="UTF-8"):
        load_manifest_file(binary)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(minimal()))
    assert load_manifest_file(str(good))[0].key == "default/web"


def test_parse_workload_reports_its_document_and_source() -> None:
    with pytest.raises(ManifestError) as caught:
        parse_workload(put(minimal(), "spec.replicas", "x"), source="api", document=4)
    assert caught.value.source == "api"
    assert [issue.document for issue in caught.value.issues] == [4]


# --------------------------------------------------------------------------------------------
# spec_hash
# --------------------------------------------------------------------------------------------


def test_spec_hash_ignores_metadata_and_implicit_defaults() -> None:
    base = parse_workload(minimal())
    relabelled = parse_workload(put(minimal(), "metadata.labels", {"team": "x"}))
    explicit = put(minimal(), "spec.replicas", 1)
    explicit = put(explicit, "spec.resources", {"cpu": "0.1", "memory": 64 * MI})
    explicit = put(explicit, "spec.security_context", {"runtime_class_name": "runc"})
    assert len(base.spec_hash()) == 16
    assert int(base.spec_hash(), 16) >= 0
    assert base.spec_hash() == relabelled.spec_hash() == parse_workload(explicit).spec_hash()
    assert base.spec_hash() != parse_workload(put(minimal(), "spec.replicas", 2)).spec_hash()


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

names = st.from_regex(r"[a-z]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
label_keys = st.builds(
    lambda prefix, name: prefix + name,
    st.sampled_from(["", "example.com/", "cloudless.dev/"]),
    st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,8}[A-Za-z0-9])?", fullmatch=True),
)
label_values = st.from_regex(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,8}[A-Za-z0-9])?)?", fullmatch=True)
labels = st.dictionaries(label_keys, label_values, max_size=3)
env_names = st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True)
text_values = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12
)


@st.composite
def env_lists(draw: st.DrawFn) -> list[Manifest]:
    result: list[Manifest] = []
    for name in draw(st.lists(env_names, unique=True, max_size=3)):
        if draw(st.booleans()):
            result.append({"name": name, "value": draw(text_values)})
        else:
            ref = {
                "namespace": draw(names),
                "name": draw(names),
                "key": draw(env_names),
                "audience": draw(names),
            }
            result.append({"name": name, "valueFrom": {"secretKeyRef": ref}})
    return result


@st.composite
def port_lists(draw: st.DrawFn) -> list[Manifest]:
    numbers = draw(st.lists(st.integers(1, 65535), unique=True, max_size=3))
    result: list[Manifest] = []
    for index, number in enumerate(numbers):
        port: Manifest = {"containerPort": number}
        if draw(st.booleans()):
            port["protocol"] = draw(st.sampled_from(["TCP", "UDP"]))
        if draw(st.booleans()):
            port["name"] = f"p{index}"
        if draw(st.booleans()):
            port["hostPort"] = 10000 + index
        result.append(port)
    return result


def cpu_texts(millis: int) -> st.SearchStrategy[str | int]:
    options: list[str | int] = [f"{millis}m"]
    if millis % 1000 == 0:
        options += [millis // 1000, str(millis // 1000)]
    return st.sampled_from(options)


@st.composite
def security_contexts(draw: st.DrawFn) -> Manifest:
    non_root = draw(st.sampled_from([None, True, False]))
    context: Manifest = {
        "privileged": draw(st.booleans()) if non_root is not True else False,
        "capabilities_drop": draw(st.lists(st.sampled_from(["ALL", "NET_RAW"]), unique=True)),
        "capabilities_add": draw(
            st.lists(st.sampled_from(["NET_BIND_SERVICE", "CHOWN"]), unique=True)
        ),
        "runtime_class_name": draw(st.sampled_from(["runc", "gvisor", "kata", "firecracker"])),
    }
    if non_root is not None:
        context["run_as_non_root"] = non_root
    if draw(st.booleans()):
        context["run_as_user"] = draw(st.integers(1, 2**31 - 1))
    profile = draw(st.sampled_from(["RuntimeDefault", "Localhost", "Unconfined"]))
    seccomp: Manifest = {"type": profile}
    if profile == "Localhost":
        seccomp["localhost_profile"] = "profiles/" + draw(names) + ".json"
    context["linux"] = {
        "seccomp_profile": seccomp,
        "selinux_options": {"type": "container_t", "level": "s0:c1,c2"},
    }
    return context


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    replicas = draw(st.integers(0, 50))
    millis = draw(st.integers(1, 64_000))
    spec: Manifest = {
        "replicas": replicas,
        "runtime": draw(st.sampled_from(["docker", "exec"])),
        "restartPolicy": draw(st.sampled_from(["Always", "OnFailure", "Never"])),
        "strategy": draw(st.sampled_from(["binpack", "spread"])),
        "container": {
            "image": draw(st.sampled_from(["busybox", "cloudless/busybox:latest", "r.io:5/a/b:1"])),
            "command": draw(st.lists(names, min_size=1, max_size=3)),
            "args": draw(st.lists(text_values, max_size=3)),
            "env": draw(env_lists()),
            "ports": draw(port_lists()),
        },
        "resources": {
            "cpu": draw(cpu_texts(millis)),
            "memory": draw(st.integers(6, 4096).map(lambda n: f"{n}Mi")),
            "storage": draw(st.integers(0, 10**12)),
            **draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "gpu": st.integers(0, 64),
                        "bandwidth": st.integers(0, 4 * 10**11),
                    },
                )
            ),
        },
        "placement": {
            "nodeSelector": draw(labels),
            "zones": draw(st.lists(names, unique=True, max_size=3)),
        },
        "security_context": draw(security_contexts()),
    }
    if draw(st.booleans()):
        spec["minAvailable"] = draw(st.integers(0, replicas))
    if draw(st.booleans()):
        spec["maxUnavailable"] = draw(
            st.integers(0, 1000) | st.integers(0, 100).map(lambda n: f"{n}%")
        )
    return {
        "apiVersion": "cloudless.dev/v1",
        "kind": "Workload",
        "metadata": {"name": draw(names), "namespace": draw(names), "labels": draw(labels)},
        "spec": spec,
    }


# Maps whose keys are user data, not field names: never respell them.
DATA_MAPS = {"labels", "nodeSelector", "node_selector"}


def respell(value: object, rng: random.Random) -> object:
    """Randomly switch every field name between camelCase and snake_case and shuffle order."""
    if isinstance(value, list):
        return [respell(item, rng) for item in value]
    if not isinstance(value, dict):
        return value
    items = list(value.items())
    rng.shuffle(items)
    result: dict[str, object] = {}
    for key, item in items:
        spelled = rng.choice([to_camel(key), to_snake(key)])
        result[spelled] = item if key in DATA_MAPS else respell(item, rng)
    return result


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(manifests())
def test_round_trip_through_to_manifest(manifest: Manifest) -> None:
    workload = parse_workload(manifest)
    canonical = workload.to_manifest()
    assert parse_workload(canonical) == workload
    assert load_manifests(yaml.safe_dump(canonical)) == [workload]
    assert parse_workload(canonical).spec_hash() == workload.spec_hash()


@FAST
@given(manifests(), st.randoms(use_true_random=False))
def test_spec_hash_stable_under_spelling_and_order(manifest: Manifest, rng: random.Random) -> None:
    original = parse_workload(manifest)
    variant_data = respell(manifest, rng)
    assert isinstance(variant_data, dict)
    variant = parse_workload(variant_data)
    assert variant == original
    assert variant.spec_hash() == original.spec_hash()


@FAST
@given(manifests(), st.integers(0, 50))
def test_spec_hash_changes_with_the_spec(manifest: Manifest, replicas: int) -> None:
    assume(replicas != manifest["spec"]["replicas"])
    manifest["spec"].pop("minAvailable", None)
    original = parse_workload(manifest)
    changed = parse_workload(put(manifest, "spec.replicas", replicas))
    assert changed.spec_hash() != original.spec_hash()
    assert changed.key == original.key


def test_max_unavailable_is_not_part_of_the_template() -> None:
    """Changing the disruption budget changes the spec (a new generation) but no replica:
    it is about how replicas are replaced, not what one is."""
    from cloudless.workloads import template_hash

    base = parse_workload(minimal())
    with_budget = parse_workload(put(minimal(), "spec.maxUnavailable", "25%"))
    assert with_budget.spec_hash() != base.spec_hash()
    assert template_hash(with_budget) == template_hash(base)


@FAST
@given(st.integers(0, 1000) | st.integers(0, 100).map(lambda n: f"{n}%"))
def test_max_unavailable_round_trips_as_written(value: int | str) -> None:
    camel = parse_workload(put(minimal(), "spec.maxUnavailable", value))
    snake = parse_workload(put(minimal(), "spec.max_unavailable", value))
    assert camel == snake and camel.spec.max_unavailable == value
    assert camel.to_manifest()["spec"]["maxUnavailable"] == value
    assert parse_workload(camel.to_manifest()) == camel
