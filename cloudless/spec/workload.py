"""The Workload: the top-level manifest (apiVersion, kind, metadata, spec), its desired
state (replicas, runtime, restart policy, disruption limits, priority) and the checks that
span its parts (mounts name declared volumes, the runtime's required container fields).

:meth:`Workload.spec_hash` and :meth:`Workload.to_manifest` define its canonical form.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Final, Literal, TypeAlias

from pydantic import AfterValidator, AliasChoices, BeforeValidator, Field, StrictInt

from cloudless.spec._base import _int_or_none, _Model, _Problem, _Raw
from cloudless.spec._messages import _closest, _problem, _show
from cloudless.spec._scalars import _between
from cloudless.spec.container import ContainerSpec, _duplicates
from cloudless.spec.limits import MAX_REPLICAS
from cloudless.spec.names import DnsLabel, Labels
from cloudless.spec.placement import Placement, PlacementStrategy
from cloudless.spec.reschedule import Reschedule
from cloudless.spec.resources import ResourceRequirements
from cloudless.spec.security import SecurityContext
from cloudless.spec.volumes import Volume, VolumeMount
from policies.reschedule import ReschedulePolicy

API_VERSION: Final = "cloudless.dev/v1"

RuntimeName: TypeAlias = Literal["docker", "exec"]
RestartPolicy: TypeAlias = Literal["Always", "OnFailure", "Never"]


Replicas = Annotated[StrictInt, AfterValidator(_between(0, MAX_REPLICAS, 3))]
MinAvailable = Annotated[StrictInt, AfterValidator(_between(0, MAX_REPLICAS, 1))]
_PERCENT_RE: Final = re.compile(r"(?:0|[1-9][0-9]?|100)%")  # fullmatch only


def _check_max_unavailable(value: object) -> object:
    """A replica count (0-1000) or a whole percentage of the desired replicas ("25%").

    Kept as written: the percentage is resolved against the replica count at the moment a
    replica is retired (``policies.disruption``), so scaling does not need a new manifest.
    """
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        return _between(0, MAX_REPLICAS, 1)(value)
    elif isinstance(value, str):
        if _PERCENT_RE.fullmatch(value):
            return value
        if value.isdigit():
            fix = f'write {int(value)} without quotes for a count, or "{int(value)}%"'
        else:
            fix = 'use a whole percentage from "0%" to "100%", e.g. "25%", or a number like 1'
        raise _problem(f"must be a whole percentage from 0% to 100%, got {_show(value)}", fix)
    raise _problem(
        f"must be a whole number of replicas or a percentage, got {_show(value)}",
        'use a number like 1 or a percentage in quotes like "25%"',
    )


MaxUnavailable = Annotated[int | str, BeforeValidator(_check_max_unavailable)]


class ObjectMeta(_Model):
    """Identity of an object: ``<namespace>/<name>`` is unique within a cluster."""

    name: DnsLabel = Field(examples=["hello"])
    namespace: DnsLabel = Field("default", examples=["default"])
    labels: Labels = Field(default_factory=dict, examples=[{"app": "hello"}])


def _volume_mount_problems(raw: _Raw) -> list[_Problem]:
    """Mounts must name a declared volume, and secret volumes are mounted read-only."""
    declared = list(
        dict.fromkeys(
            name
            for _index, volume in raw.items("volumes", Volume)
            if isinstance(name := volume.get("name"), str)
        )
    )
    container = raw.sub("container", ContainerSpec)
    if container is None:
        return []
    problems: list[_Problem] = []
    for index, mount in container.items("volume_mounts", VolumeMount):
        where = (raw.key("container"), container.key("volume_mounts"), index)
        name = mount.get("name")
        if isinstance(name, str) and name not in declared:
            close = _closest(name, declared)
            problems.append(
                _Problem(
                    (*where, mount.key("name")),
                    f"must refer to a volume declared in spec.{raw.key('volumes')}; {name!r} is "
                    f"not one (declared: {', '.join(declared) or 'none'})",
                    f"did you mean {close!r}?"
                    if close
                    else f"add a volume named {name!r} to spec.{raw.key('volumes')}",
                    name,
                )
            )
        if mount.get("read_only") is False:
            problems.append(
                _Problem(
                    (*where, mount.key("read_only")),
                    "must be true: secret volumes are always mounted read-only",
                    f"remove {mount.key('read_only')} or set it to true",
                    False,
                )
            )
    return problems


#: Named priorities for ``priorityClassName``; ``default`` (0) applies when neither is set.
PRIORITY_CLASSES: Final[dict[str, int]] = {
    "low": -1000,
    "default": 0,
    "high": 1000,
    "system-critical": 1_000_000,
}
PriorityClassName: TypeAlias = Literal["low", "default", "high", "system-critical"]
MAX_PRIORITY: Final = 1_000_000_000
Priority = Annotated[StrictInt, AfterValidator(_between(-MAX_PRIORITY, MAX_PRIORITY, 1000))]


class WorkloadSpec(_Model):
    """Desired state of a workload; :meth:`Workload.spec_hash` identifies a revision of it."""

    @property
    def effective_priority(self) -> int:
        """``priority`` if set, else the value of ``priorityClassName``, else 0."""
        if self.priority is not None:
            return self.priority
        return PRIORITY_CLASSES[self.priority_class_name or "default"]

    @property
    def reschedule_policy(self) -> ReschedulePolicy:
        """``reschedule`` as the decision module reads it (the defaults when unset)."""
        return (self.reschedule or Reschedule()).to_policy()

    replicas: Replicas = Field(1, examples=[3])
    runtime: RuntimeName = Field("docker", examples=["docker"])
    restart_policy: RestartPolicy = Field("Always", examples=["Always"])
    strategy: PlacementStrategy = Field("binpack", examples=["binpack"])
    min_available: MinAvailable | None = Field(None, examples=[1])
    #: How many replicas may be unavailable at once while replicas are retired without a
    #: ready replacement (a drain or rollout on a full cluster): a count or "25%" of
    #: ``replicas`` (rounded down). Unset: no limit beyond ``min_available``.
    max_unavailable: MaxUnavailable | None = Field(None, examples=[1, "25%"])
    #: When a crash-looping replica is replaced on another node (unset: the defaults of
    #: :class:`~cloudless.spec.reschedule.Reschedule`). Left out of dumps while unset, so
    #: manifests without it keep their spec hash.
    reschedule: Reschedule | None = Field(
        None, examples=[{"failures": 3, "failureWindow": "60s", "attempts": 3, "interval": "5m"}]
    )
    container: ContainerSpec = Field(examples=[{"image": "cloudless/busybox:latest"}])
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, examples=[{"cpu": "100m", "memory": "64Mi"}]
    )
    placement: Placement = Field(default_factory=Placement, examples=[{"zones": ["zone-a"]}])
    #: Scheduling priority: a replica that fits nowhere may preempt replicas of strictly
    #: lower priority. An integer, or a named class from ``PRIORITY_CLASSES``.
    priority: Priority | None = Field(None, examples=[1000])
    priority_class_name: PriorityClassName | None = Field(None, examples=["high"])
    security_context: SecurityContext = Field(
        default_factory=SecurityContext,
        validation_alias=AliasChoices("security_context", "securityContext"),
        serialization_alias="security_context",
        examples=[{"run_as_non_root": True}],
    )
    # Left out of dumps while empty, so manifests without volumes keep their spec hash.
    volumes: tuple[Volume, ...] = Field(
        (),
        exclude_if=lambda volumes: not volumes,
        examples=[
            [
                {
                    "name": "creds",
                    "secret": {
                        "namespace": "production",
                        "name": "postgres-creds",
                        "audience": "backend-api",
                    },
                }
            ]
        ],
    )

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        problems: list[_Problem] = [
            *_duplicates(raw, "volumes", Volume, "name", "", "rename one of the volumes"),
            *_volume_mount_problems(raw),
        ]
        replicas = _int_or_none(raw.get("replicas", 1))
        min_available = _int_or_none(raw.get("min_available"))
        if (
            replicas is not None
            and min_available is not None
            and 0 <= replicas <= MAX_REPLICAS
            and replicas < min_available <= MAX_REPLICAS
        ):
            problems.append(
                _Problem(
                    (raw.key("min_available"),),
                    f"must not exceed replicas ({replicas}), got {min_available}",
                    f"lower {raw.key('min_available')} to {replicas} or less, "
                    f"or raise replicas to {min_available}",
                    min_available,
                )
            )
        priority = _int_or_none(raw.get("priority"))
        klass = raw.get("priority_class_name")
        if (
            priority is not None
            and isinstance(klass, str)
            and PRIORITY_CLASSES.get(klass, priority) != priority
        ):
            problems.append(
                _Problem(
                    (raw.key("priority"),),
                    f"must equal the value of {raw.key('priority_class_name')} {klass!r} "
                    f"({PRIORITY_CLASSES[klass]}) when both are set, got {priority}",
                    f"set only one of {raw.key('priority')} and {raw.key('priority_class_name')}",
                    priority,
                )
            )
        runtime = raw.get("runtime", "docker")
        container = raw.sub("container", ContainerSpec)
        if container is not None and runtime == "docker" and container.get("image") is None:
            problems.append(
                _Problem(
                    (raw.key("container"), container.key("image")),
                    "is required when runtime is docker",
                    "add `image: cloudless/busybox:latest` or set `runtime: exec`",
                    None,
                )
            )
        command = container.get("command") if container is not None else None
        if container is not None and runtime == "exec" and command in (None, [], ()):
            problems.append(
                _Problem(
                    (raw.key("container"), container.key("command")),
                    "is required when runtime is exec",
                    'add the program to run, e.g. `command: ["/usr/bin/python3", "app.py"]`',
                    command,
                )
            )
        return problems


class Workload(_Model):
    """A named, replicated container workload: the unit users apply, scale and delete."""

    api_version: Literal["cloudless.dev/v1"] = Field(API_VERSION, examples=[API_VERSION])
    kind: Literal["Workload"] = Field("Workload", examples=["Workload"])
    metadata: ObjectMeta = Field(examples=[{"name": "hello"}])
    spec: WorkloadSpec = Field(examples=[{"container": {"image": "cloudless/busybox:latest"}}])

    @property
    def key(self) -> str:
        """``<namespace>/<name>``; also the suffix of the workload's workflow ID."""
        return f"{self.metadata.namespace}/{self.metadata.name}"

    def spec_hash(self) -> str:
        """Short, stable digest of the canonical spec, so re-applying it is a no-op.

        Computed from :meth:`to_manifest`'s spec with sorted keys: spelling, key order and
        defaults written out or left implicit do not change it; metadata does not count.
        """
        spec = self.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def to_manifest(self) -> dict[str, Any]:
        """The canonical manifest: camelCase keys (snake_case inside ``security_context``),
        defaults filled in, quantities as strings; ``parse_workload`` of it equals ``self``."""
        manifest: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return manifest
