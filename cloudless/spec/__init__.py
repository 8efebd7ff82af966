"""Workload manifests: the pydantic models, the YAML/JSON loader and user-facing errors.

A manifest is what a user writes and ``cloudlessctl apply`` sends; everything downstream
(workflows, scheduler, agents) works with the validated, immutable models defined here, so
this package is the one place where input is checked (CLD-REQ-020, CLD-REQ-081).

Import from the package (``from cloudless.spec import Workload``); its ``__all__`` is the
public surface. The modules, one concern each:

* :mod:`~cloudless.spec.workload`: the top-level ``Workload`` (apiVersion, kind, metadata,
  spec), ``WorkloadSpec`` (replicas, runtime, restart policy, disruption limits, priority)
  and the checks spanning its parts.
* :mod:`~cloudless.spec.container`: ``ContainerSpec``: image or command, environment (inline
  or ``secretKeyRef``), ports, and the checks across its mounts, ports and probes.
* :mod:`~cloudless.spec.probes`: liveness/readiness/startup ``Probe`` and its handlers.
* :mod:`~cloudless.spec.volumes`: ``Volume`` (secret volumes) and ``VolumeMount``.
* :mod:`~cloudless.spec.resources`: ``ResourceRequirements`` and its quantity limits.
* :mod:`~cloudless.spec.placement`: ``Placement``: selectors, zones and regions,
  tolerations, affinities, topology spread, locality, score weights.
* :mod:`~cloudless.spec.security`: ``SecurityContext`` and the Linux security modules.
* :mod:`~cloudless.spec.text`: what text a runtime accepts (no NUL, valid Unicode; paths
  also without control characters), also used by the agent.
* :mod:`~cloudless.spec.reschedule`: ``Reschedule``: when a crash-looping replica is
  replaced on another node (thresholds, attempts, delays; decided by
  :mod:`policies.reschedule`).
* :mod:`~cloudless.spec.names`: naming rules (DNS labels and subdomains, label keys and
  values, env names, secret keys, audiences), also used by node enrolment and the
  SecretsService.
* :mod:`~cloudless.spec.issues`: ``ManifestIssue``, ``ManifestError`` and the translation of
  pydantic errors into issues ("did you mean", where a misplaced field belongs).
* :mod:`~cloudless.spec.loader`: ``load_manifests``, ``load_manifest_file``,
  ``load_manifest_stream``, ``parse_workload``: text or parsed documents to validated
  workloads, within the bounds of :mod:`~cloudless.spec.limits` (``check_limits`` for a
  model built some other way).
* :mod:`~cloudless.spec.limits`: every bound on manifest input (bytes, documents, string
  length, list length, nesting, values, environment size) and why it has its value.
* private: ``_bounds`` (the walk that checks those bounds on parsed data, with bounded
  work), ``_base`` (the base model: spellings, cross-field checks on raw input),
  ``_messages`` (how a problem and its fix are phrased), ``_scalars`` (bounded numbers,
  non-empty strings).

Design notes:

* Every field accepts its camelCase and its snake_case spelling. Manifests are written in
  camelCase except ``security_context``, whose snake_case names come from the product docs;
  :meth:`Workload.to_manifest` writes that canonical form back.
* Quantities are parsed once, at the boundary: :class:`ResourceRequirements` stores
  ``cpu_millis``, ``memory_bytes`` and ``storage_bytes`` as ints, while the manifest keys stay
  ``cpu``/``memory``/``storage`` with quantity strings (``100m``, ``32Mi``). Dumps always
  write the quantity strings back, so a dump can never be re-read with a different unit.
* All dumps use the manifest spelling (``serialize_by_alias``), so a model that travels as a
  Temporal payload is re-validated exactly like a manifest.
* Validation never stops at the first problem: cross-field checks run on the raw input next
  to pydantic's own field checks, and :func:`load_manifests` turns the lot into
  :class:`ManifestIssue` objects that name the path as the user spelled it, say what is wrong
  and give a one-line fix.
"""

from __future__ import annotations

from cloudless.spec.container import (
    ContainerPort,
    ContainerSpec,
    EnvVar,
    EnvVarSource,
    Protocol,
    SecretKeyRef,
    image_problem,
)
from cloudless.spec.issues import ManifestError, ManifestIssue
from cloudless.spec.loader import (
    SUPPORTED_KINDS,
    check_limits,
    load_manifest_file,
    load_manifest_stream,
    load_manifests,
    parse_workload,
)
from cloudless.spec.names import (
    audience_problem,
    is_dns_subdomain,
    is_secret_key,
    label_problems,
)
from cloudless.spec.placement import (
    LabelSelector,
    Locality,
    MatchExpression,
    NodeAffinity,
    NodeSelectorTerm,
    Placement,
    PlacementStrategy,
    PreferredSchedulingTerm,
    ScoreWeights,
    SelectorOperator,
    TaintEffect,
    Toleration,
    TopologyKeyName,
    TopologySpreadConstraint,
    WeightedWorkloadAffinityTerm,
    WorkloadAffinity,
    WorkloadAffinityTerm,
)
from cloudless.spec.probes import (
    ExecAction,
    HTTPGetAction,
    HTTPHeader,
    Probe,
    TCPSocketAction,
)
from cloudless.spec.reschedule import Reschedule
from cloudless.spec.resources import ResourceRequirements
from cloudless.spec.security import (
    AppArmorProfile,
    LinuxSecurityOptions,
    ProfileType,
    RuntimeClassName,
    SeccompProfile,
    SecurityContext,
    SELinuxOptions,
)
from cloudless.spec.text import path_problem, text_problem
from cloudless.spec.volumes import (
    KeyToPath,
    SecretVolumeSource,
    Volume,
    VolumeMount,
)
from cloudless.spec.workload import (
    API_VERSION,
    PRIORITY_CLASSES,
    ObjectMeta,
    PriorityClassName,
    RestartPolicy,
    RuntimeName,
    Workload,
    WorkloadSpec,
)

__all__ = [
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
