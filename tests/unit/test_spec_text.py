"""Text that reaches a runtime is validated for what the runtime accepts (issue #10, item 6).

Each row puts one bad string into one field that ends up in a process, a path, a label or
an HTTP request, and expects exactly one issue at that field. Manifests are sent as JSON
text, whose escapes carry a NUL, a control character or a lone surrogate exactly.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from cloudless.spec import (
    ManifestError,
    image_problem,
    load_manifests,
    parse_workload,
    path_problem,
    text_problem,
)
from tests.unit.test_spec import minimal, put

BOX = "spec.container"
SECRET = {"namespace": "production", "name": "db", "audience": "api"}
SECRET_REF = {**SECRET, "key": "PASSWORD"}


def with_volume(items: list[dict[str, Any]] | None = None, mount: str = "/etc/db") -> Any:
    source: dict[str, Any] = dict(SECRET)
    if items is not None:
        source["items"] = items
    base = put(minimal(), "spec.volumes", [{"name": "db", "secret": source}])
    return put(base, f"{BOX}.volumeMounts", [{"name": "db", "mountPath": mount}])


def issues_of(manifest: Any) -> list[tuple[str, str]]:
    with pytest.raises(ManifestError) as caught:
        load_manifests(json.dumps(manifest), source="test.json")
    return [(i.path, f"{i.message} (fix: {i.fix})") for i in caught.value.issues]


def exec_probe(command: list[str]) -> dict[str, Any]:
    return {"exec": {"command": command}}


def http_probe(path: str = "/healthz", header: tuple[str, str] | None = None) -> dict[str, Any]:
    get: dict[str, Any] = {"path": path, "port": 8080}
    if header is not None:
        get["httpHeaders"] = [{"name": header[0], "value": header[1]}]
    return {"httpGet": get}


# (row id, manifest, reported path, text expected in the message or fix)
REFUSED: list[tuple[str, Any, str, str]] = [
    # process arguments and environment: exec(2) takes C strings
    ("command-nul", put(minimal(), f"{BOX}.command", ["sh\0"]), f"{BOX}.command[0]", "NUL"),
    ("args-nul", put(minimal(), f"{BOX}.args", ["-c", "a\0b"]), f"{BOX}.args[1]", "NUL"),
    (
        "env-value-nul",
        put(minimal(), f"{BOX}.env", [{"name": "A", "value": "x\0"}]),
        f"{BOX}.env[0].value",
        "NUL",
    ),
    (
        "env-name-newline",
        put(minimal(), f"{BOX}.env", [{"name": "A\n", "value": "x"}]),
        f"{BOX}.env[0].name",
        "identifier",
    ),
    (
        "command-surrogate",
        put(minimal(), f"{BOX}.command", ["sh\ud800"]),
        f"{BOX}.command[0]",
        "lone surrogate",
    ),
    (
        "probe-exec-nul",
        put(minimal(), f"{BOX}.livenessProbe", exec_probe(["cat", "/tmp/\0"])),
        f"{BOX}.livenessProbe.exec.command[1]",
        "NUL",
    ),
    # paths: no control characters either
    ("working-dir-nul", put(minimal(), f"{BOX}.workingDir", "/a\0"), f"{BOX}.workingDir", "NUL"),
    (
        "working-dir-newline",
        put(minimal(), f"{BOX}.workingDir", "/app\n"),
        f"{BOX}.workingDir",
        "control characters",
    ),
    (
        "working-dir-relative",
        put(minimal(), f"{BOX}.workingDir", "app"),
        f"{BOX}.workingDir",
        "absolute path",
    ),
    (
        "mount-path-bell",
        with_volume(mount="/etc/db\a"),
        f"{BOX}.volumeMounts[0].mountPath",
        "control characters",
    ),
    (
        "secret-file-tab",
        with_volume(items=[{"key": "PASSWORD", "path": "pass\tword"}]),
        "spec.volumes[0].secret.items[0].path",
        "control characters",
    ),
    # HTTP probes: the request line and headers
    (
        "http-path-del",
        put(minimal(), f"{BOX}.readinessProbe", http_probe("/ready\x7f")),
        f"{BOX}.readinessProbe.httpGet.path",
        "control characters",
    ),
    (
        "header-name-newline",
        put(minimal(), f"{BOX}.readinessProbe", http_probe(header=("X-Token\n", "1"))),
        f"{BOX}.readinessProbe.httpGet.httpHeaders[0].name",
        "token",
    ),
    (
        "header-value-control",
        put(minimal(), f"{BOX}.readinessProbe", http_probe(header=("X-Token", "a\x01b"))),
        f"{BOX}.readinessProbe.httpGet.httpHeaders[0].value",
        "control characters",
    ),
    # names and labels (docker labels, DNS names): re.match with "$" took a trailing newline
    ("name-newline", put(minimal(), "metadata.name", "web\n"), "metadata.name", "DNS-1123"),
    (
        "namespace-newline",
        put(minimal(), "metadata.namespace", "prod\n"),
        "metadata.namespace",
        "DNS-1123",
    ),
    (
        "label-key-newline",
        put(minimal(), "metadata.labels", {"app\n": "web"}),
        'metadata.labels["app\\n"]',
        "63",
    ),
    (
        "label-value-newline",
        put(minimal(), "metadata.labels", {"app": "web\n"}),
        "metadata.labels.app",
        "63",
    ),
    (
        "secret-key-newline",
        put(
            minimal(),
            f"{BOX}.env",
            [{"name": "P", "valueFrom": {"secretKeyRef": {**SECRET_REF, "key": "PASSWORD\n"}}}],
        ),
        f"{BOX}.env[0].valueFrom.secretKeyRef.key",
        "letters, digits",
    ),
    (
        "audience-control",
        put(
            minimal(),
            f"{BOX}.env",
            [{"name": "P", "valueFrom": {"secretKeyRef": {**SECRET_REF, "audience": "api\x1b"}}}],
        ),
        f"{BOX}.env[0].valueFrom.secretKeyRef.audience",
        "control characters",
    ),
    # images: what the engine would refuse at every start
    ("image-nul", put(minimal(), f"{BOX}.image", "busy\0box"), f"{BOX}.image", "control"),
    (
        "image-digest-algorithm",
        put(minimal(), f"{BOX}.image", "busybox@md5:" + "0" * 32),
        f"{BOX}.image",
        "sha256",
    ),
    (
        "image-digest-length",
        put(minimal(), f"{BOX}.image", "busybox@sha256:" + "0" * 32),
        f"{BOX}.image",
        "sha256",
    ),
    (
        "image-name-long",
        put(minimal(), f"{BOX}.image", "a/" * 127 + "bb"),
        f"{BOX}.image",
        "255",
    ),
    # security settings with strings
    (
        "selinux-level-newline",
        put(minimal(), "spec.security_context.linux.selinux_options.level", "s0\n"),
        "spec.security_context.linux.selinux_options.level",
        "MLS/MCS",
    ),
    (
        "capability-newline",
        put(minimal(), "spec.security_context.capabilities_add", ["NET_ADMIN\n"]),
        "spec.security_context.capabilities_add[0]",
        "capability",
    ),
    (
        "seccomp-profile-control",
        put(
            minimal(),
            "spec.security_context.linux.seccomp_profile",
            {"type": "Localhost", "localhost_profile": "p\x01.json"},
        ),
        "spec.security_context.linux.seccomp_profile.localhost_profile",
        "control characters",
    ),
    (
        "max-unavailable-newline",
        put(minimal(), "spec.maxUnavailable", "25%\n"),
        "spec.maxUnavailable",
        "%",
    ),
]


@pytest.mark.parametrize(
    ("manifest", "path", "text"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_refused_with_one_issue_at_the_field(manifest: Any, path: str, text: str) -> None:
    issues = issues_of(manifest)
    assert [p for p, _ in issues] == [path], issues
    assert text in issues[0][1], issues


def test_text_a_process_takes_is_accepted() -> None:
    """Only what the runtime refuses is refused: a script with newlines and tabs, an env
    value with line breaks, non-ASCII text, a header value with a tab."""
    manifest = put(minimal(), f"{BOX}.command", ["sh", "-c"])
    manifest = put(manifest, f"{BOX}.args", ["set -e\n\techo 'grüße ✓'\n"])
    manifest = put(manifest, f"{BOX}.env", [{"name": "PEM", "value": "-----BEGIN-----\nAA==\n"}])
    manifest = put(manifest, f"{BOX}.workingDir", "/srv/app data/ünïcode")
    manifest = put(manifest, f"{BOX}.readinessProbe", http_probe(header=("X-A", "a\tb")))
    manifest = put(manifest, f"{BOX}.image", "busybox@sha256:" + "a" * 64)
    [workload] = load_manifests(json.dumps(manifest))
    assert workload.spec.container.args == ("set -e\n\techo 'grüße ✓'\n",)
    assert parse_workload(workload.to_manifest()) == workload


def test_surrogate_in_a_key_is_refused_once_without_a_field_check() -> None:
    manifest = put(minimal(), "metadata.labels", {"a\udc80": "x"})
    issues = issues_of(manifest)
    assert len(issues) == 1, issues
    path, text = issues[0]
    assert path.startswith("metadata.labels[") and "(a key)" in text and "surrogate" in text


def test_public_predicates_agree_with_the_manifest() -> None:
    """The agent uses these to refuse exactly what the manifest refuses."""
    assert text_problem("a\nb\tc") is None
    assert "NUL" in (text_problem("a\0") or "")
    assert "surrogate" in (text_problem("\udfff") or "")
    assert path_problem("/srv/app") is None
    assert "absolute" in (path_problem("srv") or "")
    assert "control" in (path_problem("/srv\r") or "")
    assert image_problem("registry.example.com:5000/team/app:1.2") is None
    assert "lower-case" in (image_problem("Busybox") or "")
    assert "fix:" in (image_problem("busybox@sha1:" + "0" * 40) or "")
