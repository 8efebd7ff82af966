"""Derived, deterministic facts about a workload manifest, shared by workflows and activities.

The manifest is parsed once, where it enters (``cloudlessctl``, the client library), and
travels as the frozen, validated :class:`~cloudless.spec.Workload` to the workflow and the
activities. This module derives what they need from it: placement inputs, the replica
template hash that decides whether running replicas are up to date, and the wire spec the
agents receive.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from cloudless.api import agent_pb2
from cloudless.model import Resources
from cloudless.spec import (
    ContainerSpec,
    ManifestError,
    ManifestIssue,
    Probe,
    Workload,
    parse_workload,
)
from policies.admission import enforcing_runtimes, unenforced_settings

#: Spec fields that change how many replicas run or where, not what each replica is.
_NOT_IN_TEMPLATE = ("replicas", "minAvailable", "maxUnavailable", "strategy", "reschedule")


@dataclass(frozen=True)
class WorkloadView:
    workload: Workload
    namespace: str
    name: str
    replicas: int
    min_available: int
    #: As written in the spec (a count or "25%"); ``policies.disruption`` resolves it.
    max_unavailable: int | str | None
    runtime: str
    strategy: str
    resources: Resources
    node_selector: dict[str, str]
    zones: list[str]
    spec_hash: str
    template_hash: str
    #: Replicas are ready only once a readiness/startup probe passed.
    readiness_gated: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def template_hash(workload: Workload) -> str:
    """Hash of what makes a replica: two replicas with equal hashes are interchangeable."""
    spec = dict(workload.to_manifest()["spec"])
    for key in _NOT_IN_TEMPLATE:
        spec.pop(key, None)
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def view_of(w: Workload) -> WorkloadView:
    """Derive what the control plane needs from a validated workload (parsed once, by the
    client; it travels as the model through Temporal)."""
    spec = w.spec
    return WorkloadView(
        workload=w,
        namespace=w.metadata.namespace,
        name=w.metadata.name,
        replicas=spec.replicas,
        min_available=spec.min_available or 0,
        max_unavailable=spec.max_unavailable,
        runtime=spec.runtime,
        strategy=spec.strategy,
        resources=Resources(
            cpu_millis=spec.resources.cpu_millis,
            memory_bytes=spec.resources.memory_bytes,
            storage_bytes=spec.resources.storage_bytes,
            gpu=spec.resources.gpus,
            bandwidth_bps=spec.resources.bandwidth,
        ),
        node_selector=dict(spec.placement.node_selector),
        zones=list(spec.placement.zones),
        spec_hash=w.spec_hash(),
        template_hash=template_hash(w),
        readiness_gated=readiness_gated(w),
    )


def _unsupported_fix(setting: str) -> str:
    others = enforcing_runtimes(setting)
    where = f"or set runtime: {others[0]}, which enforces it" if others else "no runtime does yet"
    return (
        f"remove it ({where}); Cloudless refuses a setting it would ignore, so that nobody "
        "takes a replica for confined when it is not (docs/concepts.md, Security settings)"
    )


def unsupported_issues(w: Workload, document: int = 0) -> list[ManifestIssue]:
    """One issue per setting of ``w`` that its runtime would not enforce (see
    :mod:`policies.admission`): such a workload is refused, never run unconfined."""
    security = w.to_manifest()["spec"].get("security_context", {})
    runtime = w.spec.runtime
    return [
        ManifestIssue(
            path=f"spec.security_context.{name}",
            message=(
                f"{name.rsplit('.', 1)[-1]} is set to {json.dumps(value)}, but the {runtime} "
                "runtime does not enforce it yet: the replica would run without it"
            ),
            fix=_unsupported_fix(name),
            document=document,
        )
        for name, value in unenforced_settings(runtime, security).items()
    ]


def check_supported(view: WorkloadView) -> None:
    """Refuse what parses but this control plane cannot deliver yet, rather than ignore it:
    security settings its runtime does not enforce (raises :class:`ManifestError` naming
    each). Called by the client library before anything is sent, and by the workload
    workflow's apply validator (which trusts no client)."""
    issues = unsupported_issues(view.workload)
    if issues:
        raise ManifestError(issues, f"workload {view.key}")


def scaled(w: Workload, replicas: int) -> Workload:
    """The workload with a new replica count, validated again (raises ManifestError).

    An explicit scale is the user's intent, so ``minAvailable`` is lowered with it when it
    would exceed the new count (a disruption budget cannot demand more than exists).
    """
    manifest = w.to_manifest()
    spec = manifest["spec"]
    spec["replicas"] = replicas
    if isinstance(spec.get("minAvailable"), int) and spec["minAvailable"] > replicas >= 0:
        spec["minAvailable"] = replicas
    return parse_workload(manifest)


def _secret_env(w: Workload) -> list[agent_pb2.SecretEnvVar]:
    """References (never values) of the env vars the agent fills from secrets."""
    return [
        agent_pb2.SecretEnvVar(
            name=e.name,
            ref=agent_pb2.SecretKeySelector(
                namespace=ref.namespace, name=ref.name, key=ref.key, audience=ref.audience
            ),
        )
        for e in w.spec.container.env
        if e.value_from is not None
        for ref in [e.value_from.secret_key_ref]
    ]


def _secret_volumes(w: Workload) -> list[agent_pb2.SecretVolume]:
    """One entry per mount of a secret volume; volumes nobody mounts are not sent."""
    volumes = {v.name: v.secret for v in w.spec.volumes}
    return [
        agent_pb2.SecretVolume(
            volume_name=m.name,
            mount_path=m.mount_path,
            namespace=src.namespace,
            name=src.name,
            audience=src.audience,
            files=[
                agent_pb2.SecretFile(key=i.key, path=i.path, mode=i.mode or 0) for i in src.items
            ],
            default_mode=src.default_mode or 0,
        )
        for m in w.spec.container.volume_mounts
        for src in [volumes[m.name]]
    ]


def _probe(c: ContainerSpec, probe: Probe | None) -> agent_pb2.Probe | None:
    """The wire probe, with named ports resolved to numbers (validation made sure they exist)."""
    if probe is None:
        return None
    ports = {p.name: p.container_port for p in c.ports if p.name}

    def number(port: int | str) -> int:
        return port if isinstance(port, int) else ports[port]

    out = agent_pb2.Probe(
        initial_delay_seconds=probe.initial_delay_seconds,
        period_seconds=probe.period_seconds,
        timeout_seconds=probe.timeout_seconds,
        failure_threshold=probe.failure_threshold,
        success_threshold=probe.success_threshold,
    )
    if probe.exec is not None:
        out.exec.command.extend(probe.exec.command)
    elif probe.http_get is not None:
        get = probe.http_get
        out.http_get.CopyFrom(
            agent_pb2.HTTPGetAction(
                path=get.path,
                port=number(get.port),
                scheme=get.scheme,
                headers=[
                    agent_pb2.HTTPHeader(name=h.name, value=h.value) for h in get.http_headers
                ],
            )
        )
    elif probe.tcp_socket is not None:
        out.tcp_socket.port = number(probe.tcp_socket.port)
    return out


def readiness_gated(w: Workload) -> bool:
    """Whether replicas are ready only once a probe passed (not merely once Running)."""
    c = w.spec.container
    return c.readiness_probe is not None or c.startup_probe is not None


def replica_spec_proto(
    w: Workload,
    *,
    replica_id: str,
    generation: int,
    spec_hash: str,
    epoch: int = 0,
) -> agent_pb2.ReplicaSpec:
    """The wire spec an agent receives for one replica of this workload: the one place
    where the manifest model becomes what agents run."""
    c = w.spec.container
    return agent_pb2.ReplicaSpec(
        replica_id=replica_id,
        namespace=w.metadata.namespace,
        workload=w.metadata.name,
        runtime=w.spec.runtime,
        image=c.image or "",
        command=list(c.command),
        args=list(c.args),
        working_dir=c.working_dir or "",
        env={e.name: e.value or "" for e in c.env if e.value_from is None},
        secret_env=_secret_env(w),
        secret_volumes=_secret_volumes(w),
        ports=[
            agent_pb2.Port(
                container_port=p.container_port, protocol=p.protocol, host_port=p.host_port or 0
            )
            for p in c.ports
        ],
        cpu_millis=w.spec.resources.cpu_millis,
        memory_bytes=w.spec.resources.memory_bytes,
        generation=generation,
        spec_hash=spec_hash,
        labels=dict(w.metadata.labels),
        restart_policy=w.spec.restart_policy,
        liveness_probe=_probe(c, c.liveness_probe),
        readiness_probe=_probe(c, c.readiness_probe),
        startup_probe=_probe(c, c.startup_probe),
        epoch=epoch,
    )


def secret_references(w: Workload) -> set[tuple[str, str, str]]:
    """(namespace, name, audience) of every secret a workload's replicas read.

    What the SecretsService lets a node mint tokens for while it runs such a replica.
    """
    refs = {
        (r.namespace, r.name, r.audience)
        for e in w.spec.container.env
        if e.value_from is not None
        for r in (e.value_from.secret_key_ref,)
    }
    for volume in getattr(w.spec, "volumes", ()):
        source = getattr(volume, "secret", None)
        if source is not None:
            refs.add((source.namespace, source.name, source.audience))
    return refs
