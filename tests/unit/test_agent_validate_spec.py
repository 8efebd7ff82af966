"""The agent refuses a wire spec a runtime cannot start, whatever the control plane checked
(an agent never trusts its input): every field that reaches a process, a path, a label or
an HTTP request, one row each."""

from __future__ import annotations

from typing import Any

import pytest

from agent.runtime.exec import exec_refusal
from agent.server import replica_from_proto, validate_spec
from cloudless.api import agent_pb2


def wire(**fields: Any) -> agent_pb2.ReplicaSpec:
    base: dict[str, Any] = {
        "replica_id": "web-1",
        "namespace": "default",
        "workload": "web",
        "runtime": "docker",
        "image": "cloudless/busybox:latest",
        "command": ["sh", "-c"],
        "args": ["echo hi"],
        "env": {"GREETING": "hello"},
        "labels": {"app": "web"},
    }
    base.update(fields)
    return agent_pb2.ReplicaSpec(**base)


def http_probe(path: str = "/", name: str = "X-A", value: str = "1") -> agent_pb2.Probe:
    header = agent_pb2.HTTPHeader(name=name, value=value)
    return agent_pb2.Probe(http_get=agent_pb2.HTTPGetAction(path=path, port=8080, headers=[header]))


def test_a_plain_spec_passes_and_keeps_its_working_dir() -> None:
    spec = wire(
        working_dir="/srv/app",
        args=["set -e\n\techo 'grüße'"],
        env={"PEM": "-----BEGIN-----\nAA==\n"},
        readiness_probe=http_probe(value="a\tb"),
    )
    assert validate_spec(spec) == []
    assert replica_from_proto(spec, "n1").working_dir == "/srv/app"


# (row id, fields, text expected among the problems)
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("command-nul", {"command": ["sh\0"]}, "command[0] must not contain a NUL"),
    ("args-nul", {"args": ["ok", "a\0b"]}, "args[1] must not contain a NUL"),
    ("env-value-nul", {"env": {"A": "x\0"}}, "env var 'A' must not contain a NUL"),
    ("env-name-equals", {"env": {"A=B": "x"}}, "'A=B' must be a C identifier"),
    ("env-name-newline", {"env": {"A\n": "x"}}, "must be a C identifier"),
    ("image-control", {"image": "busybox\x01"}, "image 'busybox\\x01' must not contain"),
    ("image-digest", {"image": "busybox@md5:" + "0" * 32}, "sha256"),
    ("label-key", {"labels": {"app\n": "web"}}, "label"),
    ("label-value", {"labels": {"app": "a b"}}, "label"),
    ("working-dir-relative", {"working_dir": "srv"}, "working_dir 'srv' must be an absolute"),
    ("working-dir-control", {"working_dir": "/srv\n"}, "control characters"),
    ("replica-id-newline", {"replica_id": "web-1\n"}, "replica_id"),
    ("namespace-upper", {"namespace": "Prod"}, "DNS-1123"),
    ("workload-empty", {"workload": ""}, "DNS-1123"),
    (
        "probe-exec-nul",
        {"liveness_probe": agent_pb2.Probe(exec=agent_pb2.ExecAction(command=["cat", "\0"]))},
        "liveness_probe: exec command arguments must not contain a NUL",
    ),
    (
        "probe-path-control",
        {"readiness_probe": http_probe(path="/r\x7f")},
        "readiness_probe: http_get needs",
    ),
    (
        "probe-header-name",
        {"readiness_probe": http_probe(name="X-A\n")},
        "readiness_probe: http_get headers",
    ),
    (
        "probe-header-value",
        {"readiness_probe": http_probe(value="a\x00b")},
        "readiness_probe: http_get headers",
    ),
    (
        "secret-mount-control",
        {
            "secret_volumes": [
                agent_pb2.SecretVolume(
                    volume_name="db",
                    mount_path="/etc/db\a",
                    namespace="prod",
                    name="db",
                    audience="api",
                )
            ]
        },
        "control characters",
    ),
]


@pytest.mark.parametrize(("fields", "text"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused(fields: dict[str, Any], text: str) -> None:
    problems = validate_spec(wire(**fields))
    assert any(text in p for p in problems), problems


def test_exec_refusal_names_what_exec_would_refuse() -> None:
    """The exec driver's own check, for a spec that did not come through validate_spec."""
    assert exec_refusal(["sh", "-c", "echo\n"], {"A": "b\nc"}) is None
    assert "argv 1 contains a NUL" in (exec_refusal(["sh", "a\0"], {}) or "")
    assert "value of 'A' contains a NUL" in (exec_refusal(["sh"], {"A": "\0"}) or "")
    assert "'A=B' is empty or contains '='" in (exec_refusal(["sh"], {"A=B": "x"}) or "")
    assert "cannot be encoded" in (exec_refusal(["sh\ud800"], {}) or "")
