"""Probes in manifests: accepted shapes, defaults, every rejection, the wire spec, hashes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cloudless.spec import load_manifest_file, load_manifests, parse_workload
from cloudless.workloads import replica_spec_proto, template_hash, view_of
from tests.unit.test_spec import Manifest, issues_of, minimal, put

YAML = """
apiVersion: cloudless.dev/v1
kind: Workload
metadata: {name: web}
spec:
  container:
    image: cloudless/busybox:latest
    ports:
      - {name: http, containerPort: 8080}
    livenessProbe:
      exec: {command: [cat, /tmp/healthy]}
      initialDelaySeconds: 5
      periodSeconds: 5
    readinessProbe:
      httpGet:
        path: /ready
        port: http
        scheme: HTTPS
        httpHeaders: [{name: X-Probe, value: cloudless}]
      successThreshold: 2
      timeoutSeconds: 2
    startupProbe:
      tcpSocket: {port: 8080}
      failureThreshold: 30
"""


def with_probe(kind: str, probe: object) -> Manifest:
    m = put(minimal(), "spec.container.ports", [{"name": "http", "containerPort": 8080}])
    return put(m, f"spec.container.{kind}", probe)


def test_kubernetes_shaped_probes_with_defaults() -> None:
    [w] = load_manifests(YAML)
    c = w.spec.container
    assert c.liveness_probe is not None and c.liveness_probe.exec is not None
    assert c.liveness_probe.exec.command == ("cat", "/tmp/healthy")
    assert (c.liveness_probe.initial_delay_seconds, c.liveness_probe.period_seconds) == (5, 5)
    assert c.liveness_probe.handler == "exec"
    r = c.readiness_probe
    assert r is not None and r.http_get is not None and r.handler == "httpGet"
    assert (r.http_get.port, r.http_get.scheme, r.http_get.path) == ("http", "HTTPS", "/ready")
    assert [(h.name, h.value) for h in r.http_get.http_headers] == [("X-Probe", "cloudless")]
    s = c.startup_probe
    assert s is not None and s.tcp_socket is not None and s.tcp_socket.port == 8080
    # Kubernetes defaults
    assert (s.period_seconds, s.timeout_seconds, s.success_threshold) == (10, 1, 1)
    assert (s.initial_delay_seconds, s.failure_threshold) == (0, 30)
    assert parse_workload(w.to_manifest()) == w


def test_snake_case_spelling() -> None:
    m = with_probe("readiness_probe", {"http_get": {"port": 8080, "http_headers": []}})
    probe = parse_workload(m).spec.container.readiness_probe
    assert probe is not None and probe.http_get is not None and probe.http_get.path == "/"


def test_manifests_without_probes_keep_their_hashes() -> None:
    canonical = parse_workload(minimal()).to_manifest()
    assert not {"livenessProbe", "readinessProbe", "startupProbe"} & set(
        canonical["spec"]["container"]
    )
    w = parse_workload(minimal())
    probed = parse_workload(with_probe("livenessProbe", {"tcpSocket": {"port": 8080}}))
    assert template_hash(w) != template_hash(probed)
    assert w.spec_hash() != probed.spec_hash()


@pytest.mark.parametrize(
    ("kind", "probe", "path", "message", "fix"),
    [
        (
            "livenessProbe",
            {},
            "spec.container.livenessProbe",
            "needs exactly one handler: one of exec, httpGet, tcpSocket",
            "httpGet: {path: /healthz, port: 8080}",
        ),
        (
            "readinessProbe",
            {"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}},
            "spec.container.readinessProbe.tcpSocket",
            "cannot be combined with exec: a probe has exactly one handler",
            "keep only one of exec, httpGet, tcpSocket",
        ),
        (
            "livenessProbe",
            {"tcpSocket": {"port": 80}, "successThreshold": 2},
            "spec.container.livenessProbe.successThreshold",
            "must be 1 for livenessProbe, got 2",
            "only readinessProbe may need several successes",
        ),
        (
            "startupProbe",
            {"tcpSocket": {"port": 80}, "successThreshold": 3},
            "spec.container.startupProbe.successThreshold",
            "must be 1 for startupProbe, got 3",
            "remove successThreshold",
        ),
        (
            "readinessProbe",
            {"httpGet": {"port": "web"}},
            "spec.container.readinessProbe.httpGet.port",
            "must be a port number or the name of an entry of container.ports, but 'web' is not",
            "add `name: web` to the matching entry of container.ports",
        ),
        (
            "readinessProbe",
            {"tcpSocket": {"port": 70000}},
            "spec.container.readinessProbe.tcpSocket.port",
            "must be between 1 and 65535, got 70000",
            "e.g. 8080",
        ),
        (
            "readinessProbe",
            {"tcpSocket": {"port": "Web_Port"}},
            "spec.container.readinessProbe.tcpSocket.port",
            "must be a DNS-1123 label",
            "use 'web-port' instead",
        ),
        (
            "livenessProbe",
            {"tcpSocket": {"port": 80}, "periodSeconds": 0},
            "spec.container.livenessProbe.periodSeconds",
            "must be between 1 and 86400, got 0",
            "e.g. 10",
        ),
        (
            "livenessProbe",
            {"tcpSocket": {"port": 80}, "failureThreshold": 0},
            "spec.container.livenessProbe.failureThreshold",
            "must be between 1 and",
            "e.g. 3",
        ),
        (
            "livenessProbe",
            {"tcpSocket": {"port": 80}, "initialDelaySeconds": -1},
            "spec.container.livenessProbe.initialDelaySeconds",
            "must be between 0 and 86400, got -1",
            "e.g. 5",
        ),
        (
            "livenessProbe",
            {"exec": {"command": []}},
            "spec.container.livenessProbe.exec.command",
            "must name a program to run",
            'command: ["cat", "/tmp/healthy"]',
        ),
        (
            "livenessProbe",
            {"httpGet": {"port": 80, "path": "healthz"}},
            "spec.container.livenessProbe.httpGet.path",
            "must be an absolute URL path without spaces",
            "/healthz",
        ),
        (
            "livenessProbe",
            {"httpGet": {"port": 80, "scheme": "ftp"}},
            "spec.container.livenessProbe.httpGet.scheme",
            "must be one of HTTP, HTTPS",
            "HTTP",
        ),
        (
            "livenessProbe",
            {"httpGet": {"port": 80, "httpHeaders": [{"name": "a b", "value": "x"}]}},
            "spec.container.livenessProbe.httpGet.httpHeaders[0].name",
            "must be an HTTP header name",
            "X-Probe",
        ),
    ],
)
def test_rejections_name_path_message_and_fix(
    kind: str, probe: object, path: str, message: str, fix: str
) -> None:
    issues = issues_of(with_probe(kind, probe))
    matching = [i for i in issues if i.path == path]
    assert matching, [f"{i.path}: {i.message}" for i in issues]
    assert message in matching[0].message
    assert fix in matching[0].fix


def test_every_problem_is_reported_at_once() -> None:
    m = with_probe("livenessProbe", {"tcpSocket": {"port": "nope"}, "successThreshold": 2})
    m = put(m, "spec.container.readinessProbe", {"periodSeconds": 0})
    paths = {i.path for i in issues_of(m)}
    assert {
        "spec.container.livenessProbe.tcpSocket.port",
        "spec.container.livenessProbe.successThreshold",
        "spec.container.readinessProbe",
        "spec.container.readinessProbe.periodSeconds",
    } <= paths


def test_wire_spec_resolves_named_ports() -> None:
    [w] = load_manifests(YAML)
    view = view_of(w)
    assert view.readiness_gated
    wire = replica_spec_proto(w, replica_id="default-web-a", generation=1, spec_hash="h", epoch=3)
    assert wire.epoch == 3
    assert list(wire.liveness_probe.exec.command) == ["cat", "/tmp/healthy"]
    assert wire.liveness_probe.period_seconds == 5
    assert wire.readiness_probe.http_get.port == 8080  # "http" resolved
    assert wire.readiness_probe.http_get.scheme == "HTTPS"
    assert [(h.name, h.value) for h in wire.readiness_probe.http_get.headers] == [
        ("X-Probe", "cloudless")
    ]
    assert wire.readiness_probe.success_threshold == 2
    assert wire.startup_probe.tcp_socket.port == 8080
    assert wire.startup_probe.failure_threshold == 30
    plain = replica_spec_proto(
        parse_workload(minimal()), replica_id="default-a", generation=1, spec_hash="h"
    )
    assert not plain.HasField("liveness_probe") and not plain.HasField("readiness_probe")
    assert not view_of(parse_workload(minimal())).readiness_gated


def test_yaml_errors_render_one_line_each() -> None:
    text = yaml.safe_dump(with_probe("livenessProbe", {"tcpSocket": {"port": "web"}}))
    with pytest.raises(Exception) as caught:
        load_manifests(text, source="probe.yaml")
    assert "spec.container.livenessProbe.tcpSocket.port" in str(caught.value)


def test_the_probes_example_is_valid() -> None:
    [w] = load_manifest_file(Path(__file__).resolve().parents[2] / "examples" / "web-probes.yaml")
    c = w.spec.container
    assert c.startup_probe and c.readiness_probe and c.liveness_probe
    wire = replica_spec_proto(w, replica_id="default-web-probes-a", generation=1, spec_hash="h")
    assert wire.startup_probe.tcp_socket.port == 8080
