"""The public surface of :mod:`cloudless.spec`: its ``__all__`` is pinned, so adding, removing
or moving a public name is a deliberate change that shows up in review."""

from __future__ import annotations

import importlib
import pkgutil

import cloudless.spec

EXPECTED_EXPORTS = [
    "API_VERSION",
    "PRIORITY_CLASSES",
    "SUPPORTED_KINDS",
    "AppArmorProfile",
    "ContainerPort",
    "ContainerSpec",
    "EnvVar",
    "EnvVarSource",
    "ExecAction",
    "HTTPGetAction",
    "HTTPHeader",
    "KeyToPath",
    "LabelSelector",
    "LinuxSecurityOptions",
    "Locality",
    "ManifestError",
    "ManifestIssue",
    "MatchExpression",
    "NodeAffinity",
    "NodeSelectorTerm",
    "ObjectMeta",
    "Placement",
    "PlacementStrategy",
    "PreferredSchedulingTerm",
    "PriorityClassName",
    "Probe",
    "ProfileType",
    "Protocol",
    "Reschedule",
    "ResourceRequirements",
    "RestartPolicy",
    "RuntimeClassName",
    "RuntimeName",
    "SELinuxOptions",
    "ScoreWeights",
    "SeccompProfile",
    "SecretKeyRef",
    "SecretVolumeSource",
    "SecurityContext",
    "SelectorOperator",
    "TCPSocketAction",
    "TaintEffect",
    "Toleration",
    "TopologyKeyName",
    "TopologySpreadConstraint",
    "Volume",
    "VolumeMount",
    "WeightedWorkloadAffinityTerm",
    "Workload",
    "WorkloadAffinity",
    "WorkloadAffinityTerm",
    "WorkloadSpec",
    "audience_problem",
    "check_limits",
    "image_problem",
    "is_dns_subdomain",
    "is_secret_key",
    "label_problems",
    "load_manifest_file",
    "load_manifest_stream",
    "load_manifests",
    "parse_workload",
    "path_problem",
    "text_problem",
]


def test_all_is_pinned() -> None:
    assert cloudless.spec.__all__ == EXPECTED_EXPORTS


def test_every_export_resolves_and_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from cloudless.spec import *", namespace)
    assert sorted(name for name in namespace if name != "__builtins__") == sorted(EXPECTED_EXPORTS)
    assert all(getattr(cloudless.spec, name) is namespace[name] for name in EXPECTED_EXPORTS)


def test_exports_are_public_and_defined_in_a_public_submodule() -> None:
    """Every exported class or function lives in a submodule whose name says its concern,
    never in a private helper module."""
    for name in EXPECTED_EXPORTS:
        assert not name.startswith("_")
        module = getattr(getattr(cloudless.spec, name), "__module__", None)
        if module is None or module in {"typing", "builtins"}:
            continue  # constants and Literal aliases carry no module of their own
        assert module.startswith("cloudless.spec."), (name, module)
        assert not module.rsplit(".", 1)[1].startswith("_"), (name, module)


def test_every_submodule_imports() -> None:
    names = [info.name for info in pkgutil.iter_modules(cloudless.spec.__path__)]
    assert set(names) >= {"container", "issues", "loader", "names", "workload"}
    for name in names:
        importlib.import_module(f"cloudless.spec.{name}")
