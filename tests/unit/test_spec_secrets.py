"""Secret volumes and mounts in manifests: accepted shapes, every rejection, wire spec, hashes."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from cloudless.spec import load_manifests, parse_workload
from cloudless.workloads import check_supported, replica_spec_proto, template_hash, view_of
from tests.unit.test_spec import Manifest, issues_of, minimal, put

SECRET = {"namespace": "production", "name": "postgres-creds", "audience": "backend-api"}


def with_volume(**secret: Any) -> Manifest:
    m = put(minimal(), "spec.volumes", [{"name": "creds", "secret": {**SECRET, **secret}}])
    return put(m, "spec.container.volumeMounts", [{"name": "creds", "mountPath": "/etc/creds"}])


YAML = """
apiVersion: cloudless.dev/v1
kind: Workload
metadata: {name: api}
spec:
  container:
    image: cloudless/busybox:latest
    env:
      - name: DB_PASSWORD
        valueFrom:
          secretKeyRef: {namespace: production, name: postgres-creds, key: password,
                         audience: backend-api}
    volumeMounts:
      - {name: creds, mountPath: /etc/creds, readOnly: true}
  volumes:
    - name: creds
      secret:
        namespace: production
        name: postgres-creds
        audience: backend-api
        defaultMode: 0440
        items:
          - {key: password, path: password}
          - {key: ca.crt, path: tls/ca.crt, mode: 0444}
"""


def test_kubernetes_shaped_yaml_with_octal_modes() -> None:
    [workload] = load_manifests(YAML)
    [volume] = workload.spec.volumes
    assert volume.secret.default_mode == 0o440
    assert [(i.key, i.path, i.mode) for i in volume.secret.items] == [
        ("password", "password", None),
        ("ca.crt", "tls/ca.crt", 0o444),
    ]
    [mount] = workload.spec.container.volume_mounts
    assert (mount.name, mount.mount_path, mount.read_only) == ("creds", "/etc/creds", True)
    assert parse_workload(workload.to_manifest()) == workload


def test_snake_case_spelling_is_accepted() -> None:
    m = put(minimal(), "spec.volumes", [{"name": "c", "secret": {**SECRET, "default_mode": 256}}])
    m = put(m, "spec.container.volume_mounts", [{"name": "c", "mount_path": "/c"}])
    assert parse_workload(m).spec.volumes[0].secret.default_mode == 0o400


def test_manifests_without_volumes_keep_their_canonical_form() -> None:
    canonical = parse_workload(minimal()).to_manifest()
    assert "volumes" not in canonical["spec"]
    assert "volumeMounts" not in canonical["spec"]["container"]


def test_hashes_change_when_secret_references_change() -> None:
    base = parse_workload(with_volume())
    other_key = parse_workload(with_volume(items=[{"key": "password", "path": "p"}]))
    other_audience = parse_workload(with_volume(audience="batch"))
    hashes = {w.spec_hash() for w in (base, other_key, other_audience)}
    assert len(hashes) == 3
    templates = {template_hash(w) for w in (base, other_key, other_audience)}
    assert len(templates) == 3
    plain = parse_workload(minimal())
    assert plain.spec_hash() != base.spec_hash()


VOL = "spec.volumes"
MOUNTS = "spec.container.volumeMounts"

# (row id, path to set, value, reported path, expected text in message or fix)
REJECTIONS: list[tuple[str, str, object, str, str]] = [
    ("mount-undeclared", f"{MOUNTS}[0].name", "cred", f"{MOUNTS}[0].name", "did you mean 'creds'"),
    ("mount-relative", f"{MOUNTS}[0].mountPath", "etc/creds", f"{MOUNTS}[0].mountPath", "absolute"),
    ("mount-dotdot", f"{MOUNTS}[0].mountPath", "/etc/../x", f"{MOUNTS}[0].mountPath", "'/x'"),
    ("mount-trailing", f"{MOUNTS}[0].mountPath", "/etc/c/", f"{MOUNTS}[0].mountPath", "normalized"),
    ("mount-root", f"{MOUNTS}[0].mountPath", "/", f"{MOUNTS}[0].mountPath", "root directory"),
    ("mount-reserved", f"{MOUNTS}[0].mountPath", "/.cloudless/x", f"{MOUNTS}[0].mountPath",
     "/.cloudless"),
    ("mount-writable", f"{MOUNTS}[0].readOnly", False, f"{MOUNTS}[0].readOnly", "read-only"),
    ("mount-ro-string", f"{MOUNTS}[0].readOnly", "true", f"{MOUNTS}[0].readOnly", "true or false"),
    ("volume-no-secret", f"{VOL}[0].secret", ..., f"{VOL}[0].secret", "required"),
    ("secret-audience", f"{VOL}[0].secret.audience", "*", f"{VOL}[0].secret.audience", "'*'"),
    ("secret-name", f"{VOL}[0].secret.name", "Bad!", f"{VOL}[0].secret.name", "subdomain"),
    ("item-dotdot", f"{VOL}[0].secret.items", [{"key": "k", "path": "../k"}],
     f"{VOL}[0].secret.items[0].path", "'..'"),
    ("item-absolute", f"{VOL}[0].secret.items", [{"key": "k", "path": "/k"}],
     f"{VOL}[0].secret.items[0].path", "relative"),
    ("item-key", f"{VOL}[0].secret.items", [{"key": "a b", "path": "k"}],
     f"{VOL}[0].secret.items[0].key", "letters"),
    ("item-dup", f"{VOL}[0].secret.items", [{"key": "a", "path": "k"}, {"key": "b", "path": "k"}],
     f"{VOL}[0].secret.items[1].path", "items[0]"),
    ("item-file-vs-dir", f"{VOL}[0].secret.items",
     [{"key": "a", "path": "k"}, {"key": "b", "path": "k/x"}],
     f"{VOL}[0].secret.items[1].path", "file or a directory"),
    ("mode-high", f"{VOL}[0].secret.defaultMode", 0o1000, f"{VOL}[0].secret.defaultMode",
     "0777"),
    ("mode-zero", f"{VOL}[0].secret.items", [{"key": "a", "path": "a", "mode": 0}],
     f"{VOL}[0].secret.items[0].mode", "01 to 0777"),
    ("mode-string", f"{VOL}[0].secret.defaultMode", "0400", f"{VOL}[0].secret.defaultMode",
     "whole number"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value", "reported", "text"),
    [row[1:] for row in REJECTIONS],
    ids=[row[0] for row in REJECTIONS],
)
def test_rejects(path: str, value: object, reported: str, text: str) -> None:
    issues = issues_of(put(with_volume(), path, value))
    assert [issue.path for issue in issues] == [reported], issues
    [issue] = issues
    assert text in f"{issue.message} (fix: {issue.fix})", issue


def test_bad_volume_name_is_reported_with_the_mount_that_names_it() -> None:
    m = put(with_volume(), f"{VOL}[0].name", "Creds")
    m = put(m, f"{MOUNTS}[0].name", "Creds")
    issues = issues_of(m)
    assert [issue.path for issue in issues] == [f"{MOUNTS}[0].name", f"{VOL}[0].name"]
    assert all("DNS-1123" in issue.message for issue in issues)


def test_duplicate_volume_names_and_mount_paths() -> None:
    m = with_volume()
    m = put(m, VOL, m["spec"]["volumes"] * 2)
    m = put(m, MOUNTS, m["spec"]["container"]["volumeMounts"] * 2)
    issues = issues_of(m)
    assert sorted(issue.path for issue in issues) == [
        f"{MOUNTS}[1].mountPath",
        f"{VOL}[1].name",
    ]
    assert all("unique" in issue.message for issue in issues)


def test_mount_of_an_undeclared_volume_lists_what_is_declared() -> None:
    m = put(with_volume(), MOUNTS, [{"name": "other", "mountPath": "/o"}])
    [issue] = issues_of(m)
    assert "'other' is not one (declared: creds)" in issue.message
    assert "add a volume named 'other'" in issue.fix


# ---------------------------------------------------------------------------- wire spec


def test_replica_spec_carries_references_never_values() -> None:
    manifest = load_manifests(YAML)[0]
    check_supported(view_of(manifest))  # secret references are deliverable now
    spec = replica_spec_proto(manifest, replica_id="api-1", generation=1, spec_hash="h")
    assert dict(spec.env) == {}
    [env] = spec.secret_env
    assert (env.name, env.ref.namespace, env.ref.name, env.ref.key, env.ref.audience) == (
        "DB_PASSWORD",
        "production",
        "postgres-creds",
        "password",
        "backend-api",
    )
    [volume] = spec.secret_volumes
    assert (volume.volume_name, volume.mount_path, volume.audience) == (
        "creds",
        "/etc/creds",
        "backend-api",
    )
    assert volume.default_mode == 0o440
    assert [(f.key, f.path, f.mode) for f in volume.files] == [
        ("password", "password", 0),
        ("ca.crt", "tls/ca.crt", 0o444),
    ]


def test_unmounted_volumes_are_not_sent() -> None:
    m = put(with_volume(), MOUNTS, [])
    spec = replica_spec_proto(parse_workload(m), replica_id="r", generation=1, spec_hash="h")
    assert list(spec.secret_volumes) == []


def test_yaml_round_trip_keeps_modes() -> None:
    workload = load_manifests(YAML)[0]
    again = load_manifests(yaml.safe_dump(workload.to_manifest()))[0]
    assert again == workload and again.spec_hash() == workload.spec_hash()
