"""The container: what runs (an image, or a command on the exec runtime), its environment
(inline values or secret references), its ports, mounts and probes, and the checks that
span them (unique names and ports, probe ports that exist).
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Annotated, Final, Literal, TypeAlias

from pydantic import AfterValidator, BaseModel, Field, StrictInt

from cloudless.spec._base import _int_or_none, _Model, _Problem, _Raw
from cloudless.spec._messages import _problem, _show
from cloudless.spec._scalars import _between
from cloudless.spec.limits import MAX_ENV_BYTES, format_size
from cloudless.spec.names import Audience, DnsLabel, DnsSubdomain, EnvName, PortName, SecretKey
from cloudless.spec.probes import HTTPGetAction, Probe, TCPSocketAction
from cloudless.spec.text import AbsolutePath, NonEmptyText, Text
from cloudless.spec.volumes import VolumeMount

Protocol: TypeAlias = Literal["TCP", "UDP"]


# Docker image references as the engine parses them (distribution/reference):
# [registry[:port]/]path[:tag][@digest]. A digest must be one the engine can verify
# (sha256, sha384 or sha512, lower-case hex of the algorithm's length), and the name
# (registry and path) is at most 255 characters; anything else fails every start.
_IMAGE_DOMAIN_PART = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_IMAGE_DOMAIN = rf"{_IMAGE_DOMAIN_PART}(?:\.{_IMAGE_DOMAIN_PART})*"
_IMAGE_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_NAME = rf"(?:{_IMAGE_DOMAIN}(?::[0-9]+)?/)?{_IMAGE_PATH_PART}(?:/{_IMAGE_PATH_PART})*"
_IMAGE_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_IMAGE_RE = re.compile(rf"(?P<name>{_IMAGE_NAME})(?::{_IMAGE_TAG})?(?:@(?P<digest>[^@]+))?")
_IMAGE_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128}")
_IMAGE_NAME_MAX = 255
_IMAGE_FIX = (
    "use a reference like cloudless/busybox:latest or registry.example.com:5000/team/app:1.2"
)


def _image_defect(value: str) -> tuple[str, str] | None:
    """(what is wrong, fix) for a reference the engine would refuse, else None."""
    if not value:
        return "must not be empty", _IMAGE_FIX
    if not value.isprintable() or any(c.isspace() for c in value):
        return f"must not contain whitespace or control characters, got {_show(value)}", _IMAGE_FIX
    if "://" in value:
        return (
            f"must not contain a URL scheme, got {_show(value)}",
            f"drop the scheme: {value.split('://', 1)[1]!r}",
        )
    match = _IMAGE_RE.fullmatch(value) if len(value) <= 512 else None
    if match is None:
        if len(value) <= 512 and _IMAGE_RE.fullmatch(value.lower()):
            return (
                f"must use a lower-case repository name, got {_show(value)}",
                f"use {value.lower()!r}",
            )
        return (
            f"must be an image reference [registry/]repository[:tag][@digest], got {_show(value)}",
            _IMAGE_FIX,
        )
    if len(match["name"]) > _IMAGE_NAME_MAX:
        return (
            f"must have a name (registry and repository) of at most {_IMAGE_NAME_MAX} "
            f"characters, got {len(match['name'])}",
            "use a shorter repository path",
        )
    digest = match["digest"]
    if digest is not None and not _IMAGE_DIGEST_RE.fullmatch(digest):
        return (
            f"must end in a digest the engine can verify (sha256:, sha384: or sha512: and "
            f"the lower-case hex of that length), got {_show('@' + digest)}",
            "copy the digest from `docker images --digests`, e.g. @sha256:<64 hex digits>",
        )
    return None


def image_problem(value: str) -> str | None:
    """Why ``value`` is not an image reference the docker engine accepts, with the fix;
    None when it is. Shared by the manifest and the agent."""
    defect = _image_defect(value)
    return None if defect is None else f"{defect[0]} (fix: {defect[1]})"


def _check_image(value: str) -> str:
    defect = _image_defect(value)
    if defect is None:
        return value
    raise _problem(*defect)


ImageRef = Annotated[str, AfterValidator(_check_image)]
PortNumber = Annotated[StrictInt, AfterValidator(_between(1, 65535, 8080))]


class SecretKeyRef(_Model):
    """One key of a secret, delivered only to workloads holding a token for ``audience``."""

    namespace: DnsLabel = Field(examples=["production"])
    name: DnsSubdomain = Field(examples=["postgres-creds"])
    key: SecretKey = Field(examples=["DB_PASSWORD"])
    audience: Audience = Field(examples=["backend-api"])


class EnvVarSource(_Model):
    """Where an environment variable's value comes from when it is not written inline."""

    secret_key_ref: SecretKeyRef = Field(
        examples=[
            {
                "namespace": "production",
                "name": "postgres-creds",
                "key": "DB_PASSWORD",
                "audience": "backend-api",
            }
        ]
    )


class EnvVar(_Model):
    """An environment variable: exactly one of an inline ``value`` or a ``value_from``."""

    name: EnvName = Field(examples=["GREETING"])
    value: Text | None = Field(None, examples=["hello"])
    value_from: EnvVarSource | None = Field(
        None,
        examples=[
            {
                "secretKeyRef": {
                    "namespace": "production",
                    "name": "postgres-creds",
                    "key": "DB_PASSWORD",
                    "audience": "backend-api",
                }
            }
        ],
    )

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        has_value = raw.get("value") is not None
        has_source = raw.get("value_from") is not None
        if has_value and has_source:
            return [
                _Problem(
                    (raw.key("value_from"),),
                    f"cannot be combined with {raw.key('value')}",
                    f"keep either {raw.key('value')} or {raw.key('value_from')}",
                    raw.get("value_from"),
                )
            ]
        if not has_value and not has_source:
            return [
                _Problem(
                    (),
                    "needs exactly one of value or valueFrom",
                    "add `value: <text>` or `valueFrom: {secretKeyRef: {...}}`",
                    raw.data,
                )
            ]
        return []


class ContainerPort(_Model):
    """A port the container listens on, optionally published on the node."""

    name: PortName | None = Field(None, examples=["http"])
    container_port: PortNumber = Field(examples=[8080])
    protocol: Protocol = Field("TCP", examples=["TCP"])
    host_port: PortNumber | None = Field(None, examples=[18080])


#: Probe fields of a container, and whether successThreshold may exceed 1 for them.
_PROBE_FIELDS: Final = (
    ("liveness_probe", False),
    ("readiness_probe", True),
    ("startup_probe", False),
)


def _probe_problems(raw: _Raw) -> list[_Problem]:
    """Liveness/startup probes decide on one success; named ports must exist."""
    problems: list[_Problem] = []
    port_names = {
        name
        for _, port in raw.items("ports", ContainerPort)
        if isinstance(name := port.get("name"), str)
    }
    for field_name, multi_success in _PROBE_FIELDS:
        probe = raw.sub(field_name, Probe)
        if probe is None:
            continue
        success = _int_or_none(probe.get("success_threshold"))
        if not multi_success and success is not None and success != 1:
            problems.append(
                _Problem(
                    (raw.key(field_name), probe.key("success_threshold")),
                    f"must be 1 for {raw.key(field_name)}, got {success}",
                    f"remove {probe.key('success_threshold')} (only readinessProbe may need "
                    "several successes)",
                    success,
                )
            )
        for handler, model in (("http_get", HTTPGetAction), ("tcp_socket", TCPSocketAction)):
            action = probe.sub(handler, model)
            port = action.get("port") if action is not None else None
            if action is None or not isinstance(port, str) or port in port_names:
                continue
            known = ", ".join(sorted(port_names)) or "none are named"
            problems.append(
                _Problem(
                    (raw.key(field_name), probe.key(handler), action.key("port")),
                    f"must be a port number or the name of an entry of container."
                    f"{raw.key('ports')}, but {port!r} is not one ({known})",
                    f"add `name: {port}` to the matching entry of container.{raw.key('ports')} "
                    "or use the port number",
                    port,
                )
            )
    return problems


def _env_size_problems(raw: _Raw) -> list[_Problem]:
    """The literal environment must fit what the kernel takes (see ``MAX_ENV_BYTES``)."""
    total = 0
    for _, var in raw.items("env", EnvVar):
        name, value = var.get("name"), var.get("value")
        if isinstance(name, str) and isinstance(value, str):
            # NAME=value and its terminating NUL, as execve(2) counts it.
            total += len(f"{name}={value}".encode("utf-8", "surrogatepass")) + 1
    if total <= MAX_ENV_BYTES:
        return []
    return [
        _Problem(
            (raw.key("env"),),
            f"totals {total:,} bytes (NAME=value per variable), more than the limit of "
            f"{format_size(MAX_ENV_BYTES)} for a container's environment",
            "keep large values out of the environment: mount them from a secret volume or "
            "put them in the image",
            None,
        )
    ]


def _duplicates(
    raw: _Raw, list_field: str, model: type[BaseModel], field: str, what: str, fix: str
) -> list[_Problem]:
    """Problems for list items whose ``field`` (plus protocol, for ports) repeats."""
    problems: list[_Problem] = []
    seen: dict[Hashable, int] = {}
    for index, item in raw.items(list_field, model):
        value = item.get(field)
        if value is None or isinstance(value, bool) or not isinstance(value, str | int):
            continue
        identity: Hashable = value
        shown = _show(value)
        if model is ContainerPort and field != "name":
            protocol = item.get("protocol", "TCP")
            if not isinstance(protocol, str):
                continue
            identity = (value, protocol)
            shown = f"{value}/{protocol}"
        if identity in seen:
            first = f"{raw.key(list_field)}[{seen[identity]}]"
            problems.append(
                _Problem(
                    (raw.key(list_field), index, item.key(field)),
                    f"must be unique{what}; {shown} is already used by {first}",
                    fix,
                    value,
                )
            )
        else:
            seen[identity] = index
    return problems


class ContainerSpec(_Model):
    """What to run: the image (docker runtime) or command (exec runtime), env and ports."""

    image: ImageRef | None = Field(None, examples=["cloudless/busybox:latest"])
    command: tuple[NonEmptyText, ...] = Field((), examples=[["httpd", "-f", "-p", "8080"]])
    args: tuple[Text, ...] = Field((), examples=[["-v"]])
    working_dir: AbsolutePath | None = Field(None, examples=["/app"])
    env: tuple[EnvVar, ...] = Field((), examples=[[{"name": "GREETING", "value": "hello"}]])
    ports: tuple[ContainerPort, ...] = Field((), examples=[[{"containerPort": 8080}]])
    # Left out of dumps while empty, so manifests without volumes keep their spec hash.
    volume_mounts: tuple[VolumeMount, ...] = Field(
        (),
        exclude_if=lambda mounts: not mounts,
        examples=[[{"name": "creds", "mountPath": "/etc/creds", "readOnly": True}]],
    )
    #: Restart the replica once this fails ``failureThreshold`` times in a row.
    liveness_probe: Probe | None = Field(
        None, examples=[{"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 5}]
    )
    #: The replica counts as ready (serves, counts toward the workload) only while this passes.
    readiness_probe: Probe | None = Field(
        None, examples=[{"httpGet": {"path": "/ready", "port": 8080}}]
    )
    #: Holds off the other probes until it succeeds once; restarts the replica on failure.
    startup_probe: Probe | None = Field(
        None, examples=[{"tcpSocket": {"port": 8080}, "failureThreshold": 30}]
    )

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        return [
            *_probe_problems(raw),
            *_env_size_problems(raw),
            *_duplicates(raw, "env", EnvVar, "name", "", "remove or rename the duplicate"),
            *_duplicates(
                raw, "volume_mounts", VolumeMount, "mount_path", "", "mount each path only once"
            ),
            *_duplicates(raw, "ports", ContainerPort, "name", "", "rename one of the ports"),
            *_duplicates(
                raw,
                "ports",
                ContainerPort,
                "container_port",
                " per protocol",
                "remove the duplicate entry or use another port",
            ),
            *_duplicates(
                raw,
                "ports",
                ContainerPort,
                "host_port",
                " per protocol",
                "publish each host port only once; pick another hostPort",
            ),
        ]
