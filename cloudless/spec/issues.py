"""Workload manifests: the pydantic models, the YAML/JSON loader and user-facing errors.

A manifest is what a user writes and ``cloudlessctl apply`` sends; everything downstream
(workflows, scheduler, agents) works with the validated, immutable models defined here, so
this module is the one place where input is checked (CLD-REQ-020, CLD-REQ-081).

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

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import os
import posixpath
import re
import types
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import (
    Annotated,
    Any,
    Final,
    Literal,
    NamedTuple,
    Self,
    TypeAlias,
    Union,
    get_args,
    get_origin,
)

import yaml
from pydantic import (
    AfterValidator,
    AliasChoices,
    AliasGenerator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    StrictBool,
    StrictInt,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

from cloudless.errors import CloudlessError
from cloudless.quantity import (
    QuantityError,
    format_bandwidth,
    format_bytes,
    format_cpu,
    parse_bandwidth,
    parse_bytes,
    parse_cpu,
)

__all__ = [
    "API_VERSION",
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
    "LinuxSecurityOptions",
    "ManifestError",
    "ManifestIssue",
    "ObjectMeta",
    "Placement",
    "PlacementStrategy",
    "Probe",
    "ProfileType",
    "Protocol",
    "ResourceRequirements",
    "RestartPolicy",
    "RuntimeClassName",
    "RuntimeName",
    "SELinuxOptions",
    "SeccompProfile",
    "SecretKeyRef",
    "SecretVolumeSource",
    "SecurityContext",
    "TCPSocketAction",
    "Volume",
    "VolumeMount",
    "Workload",
    "WorkloadSpec",
    "load_manifest_file",
    "load_manifests",
    "parse_workload",
]

API_VERSION: Final = "cloudless.dev/v1"

RuntimeName: TypeAlias = Literal["docker", "exec"]
RestartPolicy: TypeAlias = Literal["Always", "OnFailure", "Never"]
PlacementStrategy: TypeAlias = Literal["binpack", "spread", "zone-spread"]
Protocol: TypeAlias = Literal["TCP", "UDP"]
ProfileType: TypeAlias = Literal["RuntimeDefault", "Localhost", "Unconfined"]
RuntimeClassName: TypeAlias = Literal["runc", "gvisor", "kata", "firecracker"]

MAX_REPLICAS: Final = 1000
DEFAULT_CPU_MILLIS: Final = 100
MIN_CPU_MILLIS: Final = 1
MAX_CPU_MILLIS: Final = 1024 * 1000
DEFAULT_MEMORY_BYTES: Final = 64 * 1024**2
# Docker refuses limits under 6 MB; one floor for every runtime keeps manifests portable.
MIN_MEMORY_BYTES: Final = 6 * 1024**2
MAX_MEMORY_BYTES: Final = 16 * 1024**4
MAX_STORAGE_BYTES: Final = 1024**5
MAX_GPUS: Final = 64
MAX_BANDWIDTH_BPS: Final = 400 * 1000**3  # a 400G link
MAX_ID: Final = 2**31 - 1
MAX_FILE_MODE: Final = 0o777
#: Container paths the agent uses to deliver secrets (env file, shell); mounts may not go there.
RESERVED_MOUNT_DIR: Final = "/.cloudless"

# Every Linux capability (capabilities(7), up to Linux 6.x), without the CAP_ prefix.
LINUX_CAPABILITIES: Final = frozenset(
    {
        "AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "BPF",
        "CHECKPOINT_RESTORE", "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID",
        "IPC_LOCK", "IPC_OWNER", "KILL", "LEASE", "LINUX_IMMUTABLE", "MAC_ADMIN",
        "MAC_OVERRIDE", "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_RAW",
        "PERFMON", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYSLOG", "SYS_ADMIN", "SYS_BOOT",
        "SYS_CHROOT", "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE", "SYS_RAWIO",
        "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "WAKE_ALARM",
    }
)  # fmt: skip

# The error type of every problem this module reports itself; its ctx carries the fix.
_ERROR_TYPE: Final = "cloudless"
# Path used for problems that concern a whole document or file rather than one field.
_WHOLE_DOCUMENT: Final = "<document>"


# ---------------------------------------------------------------------------------------------
# Small helpers for messages
# ---------------------------------------------------------------------------------------------


def _problem(message: str, fix: str) -> PydanticCustomError:
    """An error whose message is a predicate on the field ("must be ...") plus a fix."""
    return PydanticCustomError(_ERROR_TYPE, message, {"fix": fix})


def _show(value: object) -> str:
    """Render user input the way it looked in YAML, cut short so messages stay one line."""
    if isinstance(value, str):
        text = repr(value)
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, Mapping | list | tuple):
        text = _inline(value)
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _inline(value: object) -> str:
    """Render an example value as one line of YAML (flow style)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping | list | tuple):
        data = list(value) if isinstance(value, tuple) else value
        dumped: str = yaml.safe_dump(data, default_flow_style=True, width=10_000, sort_keys=False)
        return dumped.strip()
    return str(value)


def _closest(word: str, choices: Sequence[str]) -> str | None:
    """The choice closest to ``word`` (case-insensitive), for "did you mean" hints."""
    by_lower = {choice.lower(): choice for choice in reversed(choices)}
    if word.lower() in by_lower:
        return by_lower[word.lower()]
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[found[0]] if found else None


# ---------------------------------------------------------------------------------------------
# Constrained strings and numbers (Annotated types used by the models)
# ---------------------------------------------------------------------------------------------

_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
_SELINUX_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_MCS_PART = r"s[0-9]+(?::c[0-9]+(?:[.,]c[0-9]+)*)?"
_SELINUX_LEVEL_RE = re.compile(rf"^{_MCS_PART}(?:-{_MCS_PART})?$")
_CAPABILITY_RE = re.compile(r"^(?:CAP_)?([A-Z][A-Z0-9_]*)$")

# Docker image references: [registry[:port]/]path[:tag][@algorithm:hex].
_IMAGE_DOMAIN_PART = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_IMAGE_DOMAIN = rf"{_IMAGE_DOMAIN_PART}(?:\.{_IMAGE_DOMAIN_PART})*"
_IMAGE_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_RE = re.compile(
    rf"^(?:{_IMAGE_DOMAIN}(?::[0-9]+)?/)?{_IMAGE_PATH_PART}(?:/{_IMAGE_PATH_PART})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
_IMAGE_FIX = (
    "use a reference like cloudless/busybox:latest or registry.example.com:5000/team/app:1.2"
)


def _suggest_label(value: str, max_length: int) -> str:
    """Turn an invalid name into the nearest valid DNS-1123 label, for the fix text."""
    candidate = re.sub(r"[^a-z0-9-]+", "-", value.lower())
    candidate = re.sub(r"-{2,}", "-", candidate).strip("-")[:max_length].strip("-")
    return candidate or "my-name"


def _label_defects(value: str, max_length: int) -> str:
    """Say precisely why ``value`` is not a DNS-1123 label."""
    if not value:
        return "it is empty"
    if len(value) > max_length:
        return f"it is {len(value)} characters long"
    if any(c.isupper() for c in value):
        return "it contains upper-case letters"
    bad = sorted({c for c in value if not (c.islower() or c.isdigit() or c == "-")})
    if bad:
        return "it contains " + ", ".join(repr(c) for c in bad)
    return "it must start and end with a letter or digit"


def _dns_label(max_length: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if len(value) <= max_length and _DNS_LABEL_RE.match(value):
            return value
        raise _problem(
            f"must be a DNS-1123 label (at most {max_length} characters: lower-case letters, "
            f"digits and '-', starting and ending with a letter or digit), got {_show(value)}: "
            f"{_label_defects(value, max_length)}",
            f"use {_suggest_label(value, max_length)!r} instead",
        )

    return check


def _check_dns_subdomain(value: str) -> str:
    if len(value) <= 253 and _DNS_SUBDOMAIN_RE.match(value):
        return value
    suggestion = ".".join(_suggest_label(part, 63) for part in value.split(".") if part)
    raise _problem(
        "must be a DNS-1123 subdomain (at most 253 characters: dot-separated lower-case "
        f"letters, digits and '-'), got {_show(value)}",
        f"use {suggestion[:253]!r} instead",
    )


def _check_label_key(key: str) -> str:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.match(prefix)):
        raise _problem(
            f"has an invalid prefix {prefix!r}: a prefix must be a DNS subdomain such as "
            "'example.com'",
            "write the key as name or example.com/name",
        )
    if not name or len(name) > 63 or not _LABEL_NAME_RE.match(name):
        raise _problem(
            "must be at most 63 characters of letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit (optionally after a 'example.com/' prefix)",
            "use a key like app, tier or example.com/team",
        )
    return key


def _check_label_value(value: str) -> str:
    if value == "" or (len(value) <= 63 and _LABEL_NAME_RE.match(value)):
        return value
    raise _problem(
        "must be empty or at most 63 characters of letters, digits, '-', '_' or '.', "
        f"starting and ending with a letter or digit, got {_show(value)}",
        "use a value like hello, v1.2 or ssd",
    )


def label_problems(labels: Mapping[str, str], where: str = "label") -> list[str]:
    """The manifest's label rules for labels arriving elsewhere (e.g. a node enrolling),
    as one-line problems with their fix."""
    problems = []
    for key, value in labels.items():
        for check, subject in ((_check_label_key, key), (_check_label_value, value)):
            try:
                check(subject)
            except PydanticCustomError as err:
                fix = (err.context or {}).get("fix", "")
                problems.append(f"{where} {key}={value!r}: {err.message()} (fix: {fix})")
    return problems


def _check_env_name(value: str) -> str:
    if _ENV_NAME_RE.match(value):
        return value
    suggestion = re.sub(r"[^A-Za-z0-9_]", "_", value).upper() or "MY_VAR"
    if suggestion[0].isdigit():
        suggestion = "_" + suggestion
    raise _problem(
        "must be a C identifier (letters, digits and '_', not starting with a digit), "
        f"got {_show(value)}",
        f"use {suggestion!r} instead",
    )


def _check_secret_key(value: str) -> str:
    if len(value) <= 253 and _SECRET_KEY_RE.match(value):
        return value
    raise _problem(
        f"must be 1-253 characters of letters, digits, '-', '_' or '.', got {_show(value)}",
        "use the key as stored in the secret, e.g. DB_PASSWORD",
    )


def _check_audience(value: str) -> str:
    if value and "*" not in value and not any(c.isspace() for c in value):
        return value
    raise _problem(
        f"must name one audience, non-empty, without '*' or spaces, got {_show(value)}",
        "use the audience the secret was created for, e.g. backend-api",
    )


def _check_image(value: str) -> str:
    if not value:
        raise _problem("must not be empty", _IMAGE_FIX)
    if any(c.isspace() for c in value):
        raise _problem(f"must not contain whitespace, got {_show(value)}", _IMAGE_FIX)
    if "://" in value:
        raise _problem(
            f"must not contain a URL scheme, got {_show(value)}",
            f"drop the scheme: {value.split('://', 1)[1]!r}",
        )
    if len(value) > 512 or not _IMAGE_RE.match(value):
        if len(value) <= 512 and _IMAGE_RE.match(value.lower()):
            raise _problem(
                f"must use a lower-case repository name, got {_show(value)}",
                f"use {value.lower()!r}",
            )
        raise _problem(
            f"must be an image reference [registry/]repository[:tag][@digest], got {_show(value)}",
            _IMAGE_FIX,
        )
    return value


def _check_absolute_path(value: str) -> str:
    if value.startswith("/") and "\x00" not in value:
        return value
    raise _problem(f"must be an absolute path, got {_show(value)}", "use a path like /app")


def _check_mount_path(value: str) -> str:
    _check_absolute_path(value)
    normalized = posixpath.normpath(value)
    if normalized != value or value.startswith("//"):
        raise _problem(
            f"must be a normalized path (no '..', '.', '//' or trailing '/'), got {_show(value)}",
            f"use {normalized.replace('//', '/')!r}",
        )
    if value == "/":
        raise _problem("must not be the container's root directory", "use a path like /etc/creds")
    if value == RESERVED_MOUNT_DIR or value.startswith(RESERVED_MOUNT_DIR + "/"):
        raise _problem(
            f"must not be under {RESERVED_MOUNT_DIR}, which the agent uses to deliver secrets",
            "use a path like /etc/creds",
        )
    return value


def _check_relative_file_path(value: str) -> str:
    parts = value.split("/")
    if value and "\x00" not in value and not any(part in ("", ".", "..") for part in parts):
        return value
    raise _problem(
        "must be a relative file path without '..', '.', a leading '/' or empty segments, "
        f"got {_show(value)}",
        "use a path like password or db/password",
    )


def _check_file_mode(value: int) -> int:
    if 1 <= value <= MAX_FILE_MODE:
        return value
    octal = f" (0{value:o})" if value >= 0 else ""
    raise _problem(
        f"must be a file mode from 01 to 0777 (1 to 511 in decimal), got {value}{octal}",
        "write the mode in octal with a leading 0 in YAML (0400), or in decimal in JSON (256)",
    )


def _check_profile_path(value: str) -> str:
    parts = value.split("/")
    if value and not value.startswith("/") and ".." not in parts and "\x00" not in value:
        return value
    raise _problem(
        "must be a path relative to the node's profile directory, without '..', "
        f"got {_show(value)}",
        "use a relative name like cloudless-default or profiles/app.json",
    )


def _check_capability(value: str) -> str:
    match = _CAPABILITY_RE.match(value)
    if match is None:
        normalized = value.strip().upper().removeprefix("CAP_")
        raise _problem(
            f"must be an upper-case capability name, got {_show(value)}",
            f"write it as {normalized!r}" if normalized else "use a name like NET_BIND_SERVICE",
        )
    name = match.group(1)
    if name != "ALL" and name not in LINUX_CAPABILITIES:
        close = _closest(name, sorted(LINUX_CAPABILITIES))
        raise _problem(
            f"must be a Linux capability or ALL, got {_show(value)}",
            f"did you mean {close!r}?" if close else "see capabilities(7) for the names",
        )
    return name


def _check_selinux_name(value: str) -> str:
    if _SELINUX_NAME_RE.match(value):
        return value
    raise _problem(
        f"must be an SELinux identifier (letters, digits, '_', '.', '-'), got {_show(value)}",
        "use a value like system_u, system_r or container_t",
    )


def _check_selinux_level(value: str) -> str:
    if _SELINUX_LEVEL_RE.match(value):
        return value
    raise _problem(
        f"must be an MLS/MCS level like s0 or s0:c100,c200, got {_show(value)}",
        "use a level like s0:c100,c200",
    )


def _check_non_empty(value: str) -> str:
    if value:
        return value
    raise _problem("must not be an empty string", "remove the empty entry")


def _between(low: int, high: int, example: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if low <= value <= high:
            return value
        raise _problem(
            f"must be between {low} and {high}, got {value}",
            f"use a whole number from {low} to {high}, e.g. {example}",
        )

    return check


DnsLabel = Annotated[str, AfterValidator(_dns_label(63))]
PortName = Annotated[str, AfterValidator(_dns_label(15))]
DnsSubdomain = Annotated[str, AfterValidator(_check_dns_subdomain)]
LabelKey = Annotated[str, AfterValidator(_check_label_key)]
LabelValue = Annotated[str, AfterValidator(_check_label_value)]
Labels = dict[LabelKey, LabelValue]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
SecretKey = Annotated[str, AfterValidator(_check_secret_key)]
Audience = Annotated[str, AfterValidator(_check_audience)]
ImageRef = Annotated[str, AfterValidator(_check_image)]
AbsolutePath = Annotated[str, AfterValidator(_check_absolute_path)]
MountPath = Annotated[str, AfterValidator(_check_mount_path)]
RelativeFilePath = Annotated[str, AfterValidator(_check_relative_file_path)]
FileMode = Annotated[StrictInt, AfterValidator(_check_file_mode)]
ProfilePath = Annotated[str, AfterValidator(_check_profile_path)]
Capability = Annotated[str, AfterValidator(_check_capability)]
SELinuxName = Annotated[str, AfterValidator(_check_selinux_name)]
SELinuxLevel = Annotated[str, AfterValidator(_check_selinux_level)]
NonEmptyStr = Annotated[str, AfterValidator(_check_non_empty)]
PortNumber = Annotated[StrictInt, AfterValidator(_between(1, 65535, 8080))]
Replicas = Annotated[StrictInt, AfterValidator(_between(0, MAX_REPLICAS, 3))]
MinAvailable = Annotated[StrictInt, AfterValidator(_between(0, MAX_REPLICAS, 1))]
_PERCENT_RE: Final = re.compile(r"^(?:0|[1-9][0-9]?|100)%$")


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
        if _PERCENT_RE.match(value):
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
LinuxId = Annotated[StrictInt, AfterValidator(_between(0, MAX_ID, 1000))]


# ---------------------------------------------------------------------------------------------
# Base models: spelling, immutability and cross-field checks that never hide other errors
# ---------------------------------------------------------------------------------------------


def _camel_first(name: str) -> AliasChoices:
    camel = to_camel(name)
    return AliasChoices(camel, name) if camel != name else AliasChoices(name)


def _snake_first(name: str) -> AliasChoices:
    camel = to_camel(name)
    return AliasChoices(name, camel) if camel != name else AliasChoices(name)


class _Problem(NamedTuple):
    """A cross-field problem found on raw input; ``loc`` is relative to the model."""

    loc: tuple[str | int, ...]
    message: str
    fix: str
    value: object


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@functools.cache
def _spellings(model: type[BaseModel], name: str) -> tuple[str, ...]:
    """Every input key that ``model`` accepts for field ``name``, canonical spelling first."""
    info = model.model_fields[name]
    alias = info.validation_alias
    keys: list[str] = []
    if isinstance(alias, AliasChoices):
        keys.extend(choice for choice in alias.choices if isinstance(choice, str))
    elif isinstance(alias, str):
        keys.append(alias)
    if model.model_config.get("validate_by_name", False) and name not in keys:
        keys.append(name)
    return tuple(keys) or (name,)


class _Raw:
    """Raw (not yet validated) input of a model, read by field name in any accepted spelling.

    Cross-field checks run on this view so they can report problems even when unrelated
    fields fail validation; values of the wrong type are simply skipped, since the field
    check reports those.
    """

    def __init__(self, model: type[BaseModel], data: object) -> None:
        self.model = model
        self.data = data

    def key(self, name: str) -> str:
        """The spelling the user wrote for ``name``, else the canonical one."""
        spellings = _spellings(self.model, name)
        if isinstance(self.data, Mapping):
            for spelling in spellings:
                if spelling in self.data:
                    return spelling
        return spellings[0]

    def get(self, name: str, default: object = None) -> object:
        if isinstance(self.data, BaseModel):
            return getattr(self.data, name, default)
        if isinstance(self.data, Mapping):
            for spelling in _spellings(self.model, name):
                if spelling in self.data:
                    return self.data[spelling]
        return default

    def sub(self, name: str, model: type[BaseModel]) -> _Raw | None:
        value = self.get(name)
        return _Raw(model, value) if isinstance(value, Mapping | model) else None

    def items(self, name: str, model: type[BaseModel]) -> Iterator[tuple[int, _Raw]]:
        value = self.get(name)
        if isinstance(value, list | tuple):
            for index, item in enumerate(value):
                if isinstance(item, Mapping | model):
                    yield index, _Raw(model, item)


def _merge_errors(
    title: str, error: ValidationError | None, problems: Sequence[_Problem]
) -> ValidationError:
    """One ValidationError holding pydantic's field errors and our cross-field problems."""
    details: list[InitErrorDetails] = []
    if error is not None:
        for item in error.errors(include_url=False):
            ctx = {
                key: value if isinstance(value, str | int | float) else str(value)
                for key, value in (item.get("ctx") or {}).items()
            }
            details.append(
                {
                    "type": PydanticCustomError(item["type"], item["msg"], ctx or None),
                    "loc": item["loc"],
                    "input": item["input"],
                }
            )
    for problem in problems:
        details.append(
            {
                "type": _problem(problem.message, problem.fix),
                "loc": problem.loc,
                "input": problem.value,
            }
        )
    return ValidationError.from_exception_data(title, details)


class _Model(BaseModel):
    """Base of every manifest model: camelCase or snake_case input, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=AliasGenerator(validation_alias=_camel_first, serialization_alias=to_camel),
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        """Checks spanning several fields; overridden by models that have any."""
        return []

    @model_validator(mode="wrap")
    @classmethod
    def _validate_with_cross_checks(
        cls, data: Any, handler: ModelWrapValidatorHandler[Self]
    ) -> Self:
        """Run field validation and cross-field checks together so neither hides the other."""
        if isinstance(data, cls):
            return handler(data)
        problems = cls._cross_field_problems(_Raw(cls, data)) if isinstance(data, Mapping) else []
        try:
            model = handler(data)
        except ValidationError as error:
            if not problems:
                raise
            raise _merge_errors(cls.__name__, error, problems) from None
        if problems:
            raise _merge_errors(cls.__name__, None, problems)
        return model


class _SnakeModel(_Model):
    """Base of the security-context models, whose canonical names are snake_case."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(validation_alias=_snake_first, serialization_alias=str),
    )


# ---------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------


class ObjectMeta(_Model):
    """Identity of an object: ``<namespace>/<name>`` is unique within a cluster."""

    name: DnsLabel = Field(examples=["hello"])
    namespace: DnsLabel = Field("default", examples=["default"])
    labels: Labels = Field(default_factory=dict, examples=[{"app": "hello"}])


# ---------------------------------------------------------------------------------------------
# Container
# ---------------------------------------------------------------------------------------------


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
    value: str | None = Field(None, examples=["hello"])
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


# ---------------------------------------------------------------------------------------------
# Probes (Kubernetes-shaped health checks, run by the agent on both runtimes)
# ---------------------------------------------------------------------------------------------

#: Upper bound of every probe duration; a day is longer than any sensible health check.
MAX_PROBE_SECONDS: Final = 86_400
#: Upper bound of probe thresholds.
MAX_PROBE_THRESHOLD: Final = 1_000_000
_HTTP_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _check_probe_port(value: object) -> object:
    """A port number (1-65535) or the name of one of the container's ports."""
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if 1 <= value <= 65535:
            return value
        raise _problem(
            f"must be between 1 and 65535, got {value}",
            "use the container port the probe should reach, e.g. 8080, or a port name",
        )
    elif isinstance(value, str):
        return _dns_label(15)(value)
    raise _problem(
        f"must be a port number or a port name, got {_show(value)}",
        "use a number like 8080 or the name of an entry in container.ports, e.g. http",
    )


def _check_http_path(value: str) -> str:
    if value.startswith("/") and not any(c.isspace() for c in value):
        return value
    raise _problem(
        f"must be an absolute URL path without spaces, got {_show(value)}",
        "use a path like /healthz",
    )


def _check_header_name(value: str) -> str:
    if _HTTP_HEADER_NAME_RE.match(value):
        return value
    raise _problem(
        f"must be an HTTP header name (a token: letters, digits, '-'...), got {_show(value)}",
        "use a name like X-Probe",
    )


def _check_header_value(value: str) -> str:
    if "\r" not in value and "\n" not in value:
        return value
    raise _problem("must not contain line breaks", "put the header value on one line")


ProbePort = Annotated[int | str, BeforeValidator(_check_probe_port)]
HttpPath = Annotated[str, AfterValidator(_check_http_path)]
HeaderName = Annotated[str, AfterValidator(_check_header_name)]
HeaderValue = Annotated[str, AfterValidator(_check_header_value)]
ProbeDelay = Annotated[StrictInt, AfterValidator(_between(0, MAX_PROBE_SECONDS, 5))]
ProbeSeconds = Annotated[StrictInt, AfterValidator(_between(1, MAX_PROBE_SECONDS, 10))]
ProbeThreshold = Annotated[StrictInt, AfterValidator(_between(1, MAX_PROBE_THRESHOLD, 3))]


class ExecAction(_Model):
    """Run ``command`` inside the replica (the container, or a process with the replica's
    environment on the exec runtime); exit code 0 is a success. No shell is implied."""

    command: tuple[NonEmptyStr, ...] = Field(examples=[["cat", "/tmp/healthy"]])

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        command = raw.get("command")
        if isinstance(command, list | tuple) and not command:
            return [
                _Problem(
                    (raw.key("command"),),
                    "must name a program to run",
                    'add the command, e.g. `command: ["cat", "/tmp/healthy"]`',
                    command,
                )
            ]
        return []


class HTTPHeader(_Model):
    """A header sent with an HTTP probe request."""

    name: HeaderName = Field(examples=["X-Probe"])
    value: HeaderValue = Field(examples=["cloudless"])


class HTTPGetAction(_Model):
    """GET ``scheme://<replica>:port/path``; a status from 200 to 399 is a success.

    HTTPS certificates are not verified (a health check tests liveness, not identity).
    """

    path: HttpPath = Field("/", examples=["/healthz"])
    port: ProbePort = Field(examples=[8080, "http"])
    scheme: Literal["HTTP", "HTTPS"] = Field("HTTP", examples=["HTTP"])
    http_headers: tuple[HTTPHeader, ...] = Field(
        (), exclude_if=lambda headers: not headers, examples=[[{"name": "X-Probe", "value": "1"}]]
    )


class TCPSocketAction(_Model):
    """Open a TCP connection to ``port``; a completed handshake is a success."""

    port: ProbePort = Field(examples=[8080, "http"])


#: The handler fields of a probe; exactly one must be set.
_PROBE_HANDLERS: Final = ("exec", "http_get", "tcp_socket")


class Probe(_Model):
    """A periodic health check of a replica, run by its agent (same on both runtimes).

    A result counts once ``successThreshold`` consecutive successes or ``failureThreshold``
    consecutive failures are seen; a probe that exceeds ``timeoutSeconds`` fails.
    """

    exec: ExecAction | None = Field(None, examples=[{"command": ["cat", "/tmp/healthy"]}])
    http_get: HTTPGetAction | None = Field(None, examples=[{"path": "/healthz", "port": 8080}])
    tcp_socket: TCPSocketAction | None = Field(None, examples=[{"port": 8080}])
    initial_delay_seconds: ProbeDelay = Field(0, examples=[5])
    period_seconds: ProbeSeconds = Field(10, examples=[10])
    timeout_seconds: ProbeSeconds = Field(1, examples=[1])
    failure_threshold: ProbeThreshold = Field(3, examples=[3])
    success_threshold: ProbeThreshold = Field(1, examples=[1])

    @property
    def handler(self) -> str:
        """Which handler this probe uses: ``exec``, ``httpGet`` or ``tcpSocket``."""
        if self.exec is not None:
            return "exec"
        return "httpGet" if self.http_get is not None else "tcpSocket"

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        present = [name for name in _PROBE_HANDLERS if raw.get(name) is not None]
        names = ", ".join(raw.key(name) for name in _PROBE_HANDLERS)
        if not present:
            return [
                _Problem(
                    (),
                    f"needs exactly one handler: one of {names}",
                    "add e.g. `httpGet: {path: /healthz, port: 8080}` or "
                    "`exec: {command: [cat, /tmp/healthy]}`",
                    raw.data,
                )
            ]
        return [
            _Problem(
                (raw.key(extra),),
                f"cannot be combined with {raw.key(present[0])}: a probe has exactly one handler",
                f"keep only one of {names}; use a second probe kind for a second check",
                raw.get(extra),
            )
            for extra in present[1:]
        ]


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


class VolumeMount(_Model):
    """Where a volume of ``spec.volumes`` appears inside the container."""

    name: DnsLabel = Field(examples=["creds"])
    mount_path: MountPath = Field(examples=["/etc/creds"])
    read_only: StrictBool = Field(True, examples=[True])


class KeyToPath(_Model):
    """One key of a secret projected as the file ``path`` (relative to the mount path)."""

    key: SecretKey = Field(examples=["DB_PASSWORD"])
    path: RelativeFilePath = Field(examples=["password"])
    mode: FileMode | None = Field(None, examples=[0o400])


def _item_path_conflicts(raw: _Raw) -> list[_Problem]:
    """Item paths that repeat, or that would need one file to be another file's directory."""
    problems: list[_Problem] = []
    seen: dict[str, int] = {}
    for index, item in raw.items("items", KeyToPath):
        path = item.get("path")
        if not isinstance(path, str) or not path:
            continue
        clash = next(
            (
                other
                for other in seen
                if other == path or path.startswith(other + "/") or other.startswith(path + "/")
            ),
            None,
        )
        if clash is not None:
            problems.append(
                _Problem(
                    (raw.key("items"), index, item.key("path")),
                    f"must not clash with items[{seen[clash]}] (path {clash!r}): a path is "
                    "either a file or a directory",
                    "give every item its own file path",
                    path,
                )
            )
        else:
            seen[path] = index
    return problems


class SecretVolumeSource(_Model):
    """A secret projected as read-only files on a memory-backed (tmpfs) mount.

    Without ``items`` every key of the secret becomes a file named after the key. Files get
    ``mode``, else ``defaultMode``, else 0400.
    """

    namespace: DnsLabel = Field(examples=["production"])
    name: DnsSubdomain = Field(examples=["postgres-creds"])
    audience: Audience = Field(examples=["backend-api"])
    items: tuple[KeyToPath, ...] = Field(
        (), examples=[[{"key": "DB_PASSWORD", "path": "password"}]]
    )
    default_mode: FileMode | None = Field(None, examples=[0o400])

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        return _item_path_conflicts(raw)


class Volume(_Model):
    """A named volume that containers mount with ``volumeMounts``; only secrets for now."""

    name: DnsLabel = Field(examples=["creds"])
    secret: SecretVolumeSource = Field(
        examples=[{"namespace": "production", "name": "postgres-creds", "audience": "backend-api"}]
    )


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
    command: tuple[NonEmptyStr, ...] = Field((), examples=[["httpd", "-f", "-p", "8080"]])
    args: tuple[str, ...] = Field((), examples=[["-v"]])
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


# ---------------------------------------------------------------------------------------------
# Resources and placement
# ---------------------------------------------------------------------------------------------


def _parse_quantity(
    value: object,
    parse: Callable[[str | int | float], int],
    render: Callable[[int], str],
    what: str,
    low: int,
    high: int,
    unit_hint: str,
) -> int:
    """Parse one resource quantity and check its bounds, phrasing errors for manifests."""
    if not isinstance(value, str | int | float):
        raise _problem(f"must be a {what} quantity, got {_show(value)}", unit_hint)
    try:
        amount = parse(value)
    except QuantityError as error:
        raise _problem(
            f"must be a valid {what} quantity, got {_show(value)} ({error.reason})", unit_hint
        ) from None
    if amount < low:
        raise _problem(
            f"must be at least {render(low)}, got {_show(value)}", f"request {render(low)} or more"
        )
    if amount > high:
        raise _problem(
            f"must be at most {render(high)}, got {_show(value)}",
            f"request {render(high)} or less",
        )
    return amount


class ResourceRequirements(_Model):
    """What one replica reserves on its node; the scheduler packs nodes by these numbers.

    Stored as integers: ``cpu_millis`` (millicores), ``memory_bytes`` and ``storage_bytes``.
    In manifests and dumps the keys are ``cpu``, ``memory`` and ``storage`` with quantity
    strings; a bare number means cores (cpu) or bytes (memory, storage). The integer field
    names are deliberately *not* accepted as input, so ``cpu: 100`` can never be confused with
    100 millicores. Build one from integers with :meth:`from_units`.
    """

    model_config = ConfigDict(validate_by_name=False)

    cpu_millis: int = Field(
        DEFAULT_CPU_MILLIS, validation_alias="cpu", serialization_alias="cpu", examples=["100m"]
    )
    memory_bytes: int = Field(
        DEFAULT_MEMORY_BYTES,
        validation_alias="memory",
        serialization_alias="memory",
        examples=["64Mi"],
    )
    storage_bytes: int = Field(
        0, validation_alias="storage", serialization_alias="storage", examples=["1Gi"]
    )
    #: Whole GPUs; unset (the usual case) means none and keeps older specs' hashes.
    gpu: int | None = Field(None, validation_alias="gpu", serialization_alias="gpu", examples=[1])
    #: Egress bandwidth reserved on the node, bits/s (``10Mbps`` in manifests).
    bandwidth_bps: int | None = Field(
        None, validation_alias="bandwidth", serialization_alias="bandwidth", examples=["10Mbps"]
    )

    @field_validator("cpu_millis", mode="before")
    @classmethod
    def _parse_cpu(cls, value: object) -> int:
        return _parse_quantity(
            value, parse_cpu, format_cpu, "CPU", MIN_CPU_MILLIS, MAX_CPU_MILLIS,
            "use a CPU quantity like 100m (0.1 core), 0.5 or 2",
        )  # fmt: skip

    @field_validator("memory_bytes", mode="before")
    @classmethod
    def _parse_memory(cls, value: object) -> int:
        return _parse_quantity(
            value, parse_bytes, format_bytes, "memory", MIN_MEMORY_BYTES, MAX_MEMORY_BYTES,
            "use a quantity like 64Mi or 1Gi (Docker needs at least 6M)",
        )  # fmt: skip

    @field_validator("storage_bytes", mode="before")
    @classmethod
    def _parse_storage(cls, value: object) -> int:
        return _parse_quantity(
            value, parse_bytes, format_bytes, "storage", 0, MAX_STORAGE_BYTES,
            "use a quantity like 0, 512Mi or 10Gi",
        )  # fmt: skip

    @field_validator("gpu", mode="before")
    @classmethod
    def _parse_gpu(cls, value: object) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _problem(
                f"must be a whole number of GPUs, got {_show(value)}",
                "write an integer such as 1 (GPUs are not shared between replicas)",
            )
        if not 0 <= value <= MAX_GPUS:
            raise _problem(
                f"must be between 0 and {MAX_GPUS}, got {value}", f"request 0 to {MAX_GPUS} GPUs"
            )
        return value

    @field_validator("bandwidth_bps", mode="before")
    @classmethod
    def _parse_bandwidth(cls, value: object) -> int | None:
        if value is None:
            return None
        return _parse_quantity(
            value, parse_bandwidth, format_bandwidth, "bandwidth", 0, MAX_BANDWIDTH_BPS,
            "use a bandwidth like 500Kbps, 10Mbps or 1Gbps",
        )  # fmt: skip

    @field_serializer("bandwidth_bps")
    def _dump_bandwidth(self, value: int | None) -> str | None:
        return None if value is None else format_bandwidth(value)

    @property
    def gpus(self) -> int:
        return self.gpu or 0

    @property
    def bandwidth(self) -> int:
        """Requested bits/s (0 when unset)."""
        return self.bandwidth_bps or 0

    @field_serializer("cpu_millis")
    def _dump_cpu(self, value: int) -> str:
        return format_cpu(value)

    @field_serializer("memory_bytes", "storage_bytes")
    def _dump_bytes(self, value: int) -> str:
        return format_bytes(value)

    @classmethod
    def from_units(
        cls,
        *,
        cpu_millis: int = DEFAULT_CPU_MILLIS,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        storage_bytes: int = 0,
    ) -> ResourceRequirements:
        """Build from integers (millicores, bytes), with the same validation as a manifest."""
        return cls.model_validate(
            {
                "cpu": format_cpu(cpu_millis),
                "memory": format_bytes(memory_bytes),
                "storage": format_bytes(storage_bytes),
            }
        )


def _topology_key(value: object) -> object:
    """Accept the Kubernetes well-known topology labels as synonyms of node/zone/region."""
    return _K8S_TOPOLOGY.get(value, value) if isinstance(value, str) else value


_K8S_TOPOLOGY: Final = {
    "kubernetes.io/hostname": "node",
    "hostname": "node",
    "topology.kubernetes.io/zone": "zone",
    "topology.kubernetes.io/region": "region",
}
TopologyKeyName: TypeAlias = Annotated[
    Literal["node", "zone", "region"], BeforeValidator(_topology_key)
]
TaintEffect: TypeAlias = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
SelectorOperator: TypeAlias = Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
TermWeight = Annotated[StrictInt, AfterValidator(_between(1, 100, 50))]
MaxSkew = Annotated[StrictInt, AfterValidator(_between(1, 1000, 1))]


def _check_score_weight(value: float) -> float:
    if math.isfinite(value) and 0 <= value <= 100:
        return value
    raise _problem(
        f"must be a number from 0 to 100, got {_show(value)}",
        "use a relative weight such as 0.3 (0 turns the factor off)",
    )


ScoreWeight = Annotated[float, AfterValidator(_check_score_weight)]


def _unique_strings(raw: _Raw, field: str, what: str) -> list[_Problem]:
    values = raw.get(field)
    problems: list[_Problem] = []
    if isinstance(values, list | tuple):
        seen: dict[str, int] = {}
        for index, value in enumerate(values):
            if not isinstance(value, str):
                continue
            if value in seen:
                problems.append(
                    _Problem(
                        (raw.key(field), index),
                        f"must be unique; {value!r} is already listed as "
                        f"{raw.key(field)}[{seen[value]}]",
                        f"remove the duplicate {what}",
                        value,
                    )
                )
            else:
                seen[value] = index
    return problems


class MatchExpression(_Model):
    """One label test, Kubernetes semantics: ``NotIn``/``DoesNotExist`` hold on an absent
    label; ``Gt``/``Lt`` compare one integer and fail on absent or non-integer labels."""

    key: LabelKey = Field(examples=["disk"])
    operator: SelectorOperator = Field(examples=["In"])
    values: tuple[str, ...] = Field((), examples=[["ssd"]])

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        op = raw.get("operator")
        values = raw.get("values", ())
        if not isinstance(values, list | tuple):
            return []
        where = (raw.key("values"),)
        if op in ("In", "NotIn") and not values:
            return [_Problem(where, f"must list at least one value for {op}",
                             "add `values: [ssd]` or use operator Exists", values)]  # fmt: skip
        if op in ("Exists", "DoesNotExist") and values:
            return [_Problem(where, f"must be empty for {op}", "remove values", values)]
        if op in ("Gt", "Lt") and (
            len(values) != 1 or not isinstance(values[0], str) or not _is_int(values[0])
        ):
            return [_Problem(where, f"must be exactly one integer (as a string) for {op}",
                             'write e.g. `values: ["4"]`', values)]  # fmt: skip
        return []


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


class LabelSelector(_Model):
    """Selects workloads by their labels: ``matchLabels`` and ``matchExpressions`` ANDed."""

    match_labels: Labels = Field(default_factory=dict, examples=[{"app": "db"}])
    match_expressions: tuple[MatchExpression, ...] = Field(
        (), examples=[[{"key": "tier", "operator": "In", "values": ["cache"]}]]
    )


class NodeSelectorTerm(_Model):
    """Expressions on node labels, ANDed."""

    match_expressions: tuple[MatchExpression, ...] = Field(
        examples=[[{"key": "disk", "operator": "In", "values": ["ssd"]}]]
    )

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        exprs = raw.get("match_expressions")
        if isinstance(exprs, list | tuple) and not exprs:
            message = "must have at least 1 expression (an empty term would match every node)"
            fix = "add e.g. `{key: disk, operator: In, values: [ssd]}`"
            return [_Problem((raw.key("match_expressions"),), message, fix, exprs)]
        return []


class PreferredSchedulingTerm(_Model):
    """A node-affinity preference: nodes matching ``preference`` gain ``weight`` (1-100)."""

    weight: TermWeight = Field(examples=[50])
    preference: NodeSelectorTerm = Field(
        examples=[{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]
    )


class NodeAffinity(_Model):
    """``required`` terms are ORed (a node must match one); ``preferred`` add weights."""

    required: tuple[NodeSelectorTerm, ...] = Field(
        (), examples=[[{"matchExpressions": [{"key": "arch", "operator": "In", "values": ["x"]}]}]]
    )
    preferred: tuple[PreferredSchedulingTerm, ...] = Field((), examples=[[]])


class WorkloadAffinityTerm(_Model):
    """Replicas selected by ``labelSelector`` in the same ``topologyKey`` domain
    (``node``, ``zone`` or ``region``; the Kubernetes well-known labels are accepted)."""

    label_selector: LabelSelector = Field(examples=[{"matchLabels": {"app": "db"}}])
    topology_key: TopologyKeyName = Field("node", examples=["zone"])


class WeightedWorkloadAffinityTerm(_Model):
    weight: TermWeight = Field(examples=[50])
    term: WorkloadAffinityTerm = Field(
        validation_alias=AliasChoices("term", "podAffinityTerm", "pod_affinity_term"),
        examples=[{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}],
    )


class WorkloadAffinity(_Model):
    """Used for affinity and anti-affinity alike; the field name says which."""

    required: tuple[WorkloadAffinityTerm, ...] = Field(
        (), examples=[[{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]]
    )
    preferred: tuple[WeightedWorkloadAffinityTerm, ...] = Field((), examples=[[]])


class Toleration(_Model):
    """Lets replicas onto nodes with a matching taint. An empty ``key`` with ``Exists``
    tolerates every taint; no ``effect`` matches every effect."""

    key: str = Field("", examples=["dedicated"])
    operator: Literal["Equal", "Exists"] = Field("Equal", examples=["Equal"])
    value: str = Field("", examples=["ml"])
    effect: TaintEffect | None = Field(None, examples=["NoSchedule"])

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        op = raw.get("operator", "Equal")
        if op == "Exists" and raw.get("value", "") not in ("", None):
            fix = "remove value, or use `operator: Equal`"
            return [_Problem((raw.key("value"),), "must be empty when operator is Exists", fix,
                             raw.get("value"))]  # fmt: skip
        if op == "Equal" and raw.get("key", "") == "":
            return [_Problem((raw.key("key"),), "is required when operator is Equal",
                             "name the taint key, or use `operator: Exists` to tolerate all",
                             raw.get("key", ""))]  # fmt: skip
        return []


class TopologySpreadConstraint(_Model):
    """At most ``maxSkew`` more matching replicas in one domain than in the emptiest one."""

    max_skew: MaxSkew = Field(1, examples=[1])
    topology_key: TopologyKeyName = Field(examples=["zone"])
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"] = Field(
        "DoNotSchedule", examples=["DoNotSchedule"]
    )
    #: Which replicas count; by default this workload's own.
    label_selector: LabelSelector | None = Field(None, examples=[{"matchLabels": {"app": "web"}}])


class Locality(_Model):
    """Where replicas would like to run (near data or users): a preference, never a filter."""

    zones: tuple[DnsLabel, ...] = Field((), examples=[["zone-a"]])
    regions: tuple[DnsLabel, ...] = Field((), examples=[["eu-west"]])
    labels: Labels = Field(default_factory=dict, examples=[{"data": "eu"}])


class ScoreWeights(_Model):
    """Per-workload weights of the placement score's factors; unset ones keep the cluster's
    (locality 0.3, reliability 0.25, cost 0.15, utilization 0.2, network 0.1, ...)."""

    locality: ScoreWeight | None = Field(None, examples=[0.3])
    reliability: ScoreWeight | None = Field(None, examples=[0.25])
    cost: ScoreWeight | None = Field(None, examples=[0.15])
    utilization: ScoreWeight | None = Field(None, examples=[0.2])
    network: ScoreWeight | None = Field(None, examples=[0.1])
    node_affinity: ScoreWeight | None = Field(None, examples=[0.2])
    workload_affinity: ScoreWeight | None = Field(None, examples=[0.2])
    topology_spread: ScoreWeight | None = Field(None, examples=[0.2])
    taint_toleration: ScoreWeight | None = Field(None, examples=[0.1])


def _empty(value: object) -> bool:
    return not value


class Placement(_Model):
    """Constraints on (and preferences for) the nodes that run the replicas.

    Fields added after ``nodeSelector``/``zones`` are left out of dumps while empty, so
    manifests that do not use them keep their spec hash.
    """

    node_selector: Labels = Field(default_factory=dict, examples=[{"disk": "ssd"}])
    zones: tuple[DnsLabel, ...] = Field((), examples=[["zone-a", "zone-b"]])
    regions: tuple[DnsLabel, ...] = Field((), exclude_if=_empty, examples=[["eu-west"]])
    tolerations: tuple[Toleration, ...] = Field(
        (),
        exclude_if=_empty,
        examples=[[{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]],
    )
    node_affinity: NodeAffinity | None = Field(None, examples=[{"required": []}])
    workload_affinity: WorkloadAffinity | None = Field(
        None,
        validation_alias=AliasChoices("workloadAffinity", "workload_affinity", "podAffinity"),
        examples=[{"preferred": []}],
    )
    workload_anti_affinity: WorkloadAffinity | None = Field(
        None,
        validation_alias=AliasChoices(
            "workloadAntiAffinity", "workload_anti_affinity", "podAntiAffinity"
        ),
        examples=[{"required": [{"labelSelector": {"matchLabels": {"app": "web"}}}]}],
    )
    topology_spread_constraints: tuple[TopologySpreadConstraint, ...] = Field(
        (), exclude_if=_empty, examples=[[{"maxSkew": 1, "topologyKey": "zone"}]]
    )
    locality: Locality | None = Field(None, examples=[{"zones": ["zone-a"]}])
    weights: ScoreWeights | None = Field(None, examples=[{"cost": 0.5}])

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        problems = [
            *_unique_strings(raw, "zones", "zone"),
            *_unique_strings(raw, "regions", "region"),
        ]
        return problems


# ---------------------------------------------------------------------------------------------
# Security context (product-doc shape, snake_case; parsed and round-tripped, enforced later)
# ---------------------------------------------------------------------------------------------


class _Profile(_SnakeModel):
    """A seccomp or AppArmor profile: ``localhost_profile`` exactly when type is Localhost."""

    type: ProfileType = Field(examples=["RuntimeDefault"])
    localhost_profile: ProfilePath | None = Field(None, examples=["cloudless-default"])

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        kind = raw.get("type")
        profile = raw.get("localhost_profile")
        if kind == "Localhost" and profile is None:
            return [
                _Problem(
                    (raw.key("localhost_profile"),),
                    "is required when type is Localhost",
                    "add `localhost_profile: cloudless-default` (relative to the node's "
                    "profile directory)",
                    None,
                )
            ]
        if kind in {"RuntimeDefault", "Unconfined"} and profile is not None:
            return [
                _Problem(
                    (raw.key("localhost_profile"),),
                    f"is only allowed when type is Localhost, not {kind}",
                    "remove localhost_profile or set `type: Localhost`",
                    profile,
                )
            ]
        return []


class SeccompProfile(_Profile):
    """Which seccomp filter the container runs under."""


class AppArmorProfile(_Profile):
    """Which AppArmor profile confines the container."""


class SELinuxOptions(_SnakeModel):
    """SELinux label for the container's processes."""

    user: SELinuxName | None = Field(None, examples=["system_u"])
    role: SELinuxName | None = Field(None, examples=["system_r"])
    type: SELinuxName | None = Field(None, examples=["container_t"])
    level: SELinuxLevel | None = Field(None, examples=["s0:c100,c200"])


class LinuxSecurityOptions(_SnakeModel):
    """Linux security modules to apply; unavailable ones are reported by the agent."""

    seccomp_profile: SeccompProfile | None = Field(None, examples=[{"type": "RuntimeDefault"}])
    apparmor_profile: AppArmorProfile | None = Field(
        None, examples=[{"type": "Localhost", "localhost_profile": "cloudless-default"}]
    )
    selinux_options: SELinuxOptions | None = Field(
        None, examples=[{"type": "container_t", "level": "s0:c100,c200"}]
    )


def _capability_duplicates(raw: _Raw, field: str) -> list[_Problem]:
    values = raw.get(field)
    problems: list[_Problem] = []
    if isinstance(values, list | tuple):
        seen: dict[str, int] = {}
        for index, value in enumerate(values):
            if not isinstance(value, str):
                continue
            name = value.removeprefix("CAP_")
            if name in seen:
                problems.append(
                    _Problem(
                        (raw.key(field), index),
                        f"must be unique; {name} is already listed at [{seen[name]}]",
                        "remove the duplicate capability",
                        value,
                    )
                )
            else:
                seen[name] = index
    return problems


class SecurityContext(_SnakeModel):
    """Privileges of the container (CLD-REQ-062). ``None`` means "the cluster default".

    Capability names are stored without the ``CAP_`` prefix.
    """

    privileged: StrictBool = Field(False, examples=[False])
    run_as_non_root: StrictBool | None = Field(None, examples=[True])
    run_as_user: LinuxId | None = Field(None, examples=[1000])
    run_as_group: LinuxId | None = Field(None, examples=[1000])
    read_only_root_filesystem: StrictBool | None = Field(None, examples=[True])
    capabilities_drop: tuple[Capability, ...] = Field((), examples=[["ALL"]])
    capabilities_add: tuple[Capability, ...] = Field((), examples=[["NET_BIND_SERVICE"]])
    host_network: StrictBool = Field(False, examples=[False])
    host_pid: StrictBool = Field(False, examples=[False])
    host_ipc: StrictBool = Field(False, examples=[False])
    linux: LinuxSecurityOptions | None = Field(
        None, examples=[{"seccomp_profile": {"type": "RuntimeDefault"}}]
    )
    runtime_class_name: RuntimeClassName = Field("runc", examples=["gvisor"])

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        problems = [
            *_capability_duplicates(raw, "capabilities_drop"),
            *_capability_duplicates(raw, "capabilities_add"),
        ]
        non_root = raw.get("run_as_non_root") is True
        if non_root and raw.get("privileged") is True:
            problems.append(
                _Problem(
                    (raw.key("privileged"),),
                    f"cannot be true when {raw.key('run_as_non_root')} is true",
                    f"remove `{raw.key('privileged')}: true` (preferred) or set "
                    f"`{raw.key('run_as_non_root')}: false`",
                    True,
                )
            )
        if non_root and _int_or_none(raw.get("run_as_user")) == 0:
            problems.append(
                _Problem(
                    (raw.key("run_as_user"),),
                    f"must not be 0 (root) when {raw.key('run_as_non_root')} is true",
                    "use an unprivileged user id such as 1000",
                    0,
                )
            )
        return problems


# ---------------------------------------------------------------------------------------------
# Workload
# ---------------------------------------------------------------------------------------------


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

    replicas: Replicas = Field(1, examples=[3])
    runtime: RuntimeName = Field("docker", examples=["docker"])
    restart_policy: RestartPolicy = Field("Always", examples=["Always"])
    strategy: PlacementStrategy = Field("binpack", examples=["binpack"])
    min_available: MinAvailable | None = Field(None, examples=[1])
    #: How many replicas may be unavailable at once while replicas are retired without a
    #: ready replacement (a drain or rollout on a full cluster): a count or "25%" of
    #: ``replicas`` (rounded down). Unset: no limit beyond ``min_available``.
    max_unavailable: MaxUnavailable | None = Field(None, examples=[1, "25%"])
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


#: Kinds the loader understands. A new kind is one more entry here (and, once there is more
#: than one, a union in the loader's return type).
_KINDS: Final[dict[str, type[Workload]]] = {"Workload": Workload}
SUPPORTED_KINDS: Final = tuple(_KINDS)


# ---------------------------------------------------------------------------------------------
# Problems reported to users
# ---------------------------------------------------------------------------------------------


class ManifestIssue(BaseModel):
    """One problem in a manifest: where it is, what is wrong and how to fix it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    """Dotted path as spelled in the manifest, e.g. ``spec.container.env[1].name``."""
    message: str
    fix: str
    document: int = 0
    """0-based index of the document in its file (YAML ``---`` separated)."""


class ManifestError(CloudlessError):
    """A manifest was rejected; ``issues`` lists every problem found, not just the first."""

    def __init__(self, issues: Sequence[ManifestIssue], source: str = "<manifest>") -> None:
        self.issues = list(issues)
        self.source = source
        super().__init__(self.issues, source)

    def __reduce__(self) -> tuple[type[ManifestError], tuple[list[ManifestIssue], str]]:
        return (type(self), (self.issues, self.source))

    def __str__(self) -> str:
        count = len(self.issues)
        lines = [f"{self.source}: {count} problem{'' if count == 1 else 's'} in manifest"]
        several_documents = any(issue.document > 0 for issue in self.issues)
        for issue in self.issues:
            where = issue.path
            if several_documents:
                where = f"{where} (document {issue.document + 1})"
            lines.append(f"  {where}: {issue.message} (fix: {issue.fix})")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Turning pydantic errors into ManifestIssues
# ---------------------------------------------------------------------------------------------

_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DICT_KEY_MARK = "[key]"


def _render_path(loc: Sequence[str | int]) -> str:
    """``("spec", "container", "env", 1, "name")`` -> ``spec.container.env[1].name``."""
    out = ""
    for part in loc:
        if part == _DICT_KEY_MARK:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER_RE.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or _WHOLE_DOCUMENT


def _unwrap(annotation: object) -> object:
    """Strip ``Annotated`` and ``X | None`` so the underlying type can be inspected."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if origin in (Union, types.UnionType):
            args = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(args) == 1:
                annotation = args[0]
                continue
        return annotation


def _model_of(annotation: object) -> type[BaseModel] | None:
    inner = _unwrap(annotation)
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def _item_of(annotation: object) -> object:
    inner = _unwrap(annotation)
    args = get_args(inner)
    if get_origin(inner) in (tuple, list) and args:
        return args[0]
    if get_origin(inner) is dict and len(args) == 2:
        return args[1]
    return None


def _is_dict(annotation: object) -> bool:
    return get_origin(_unwrap(annotation)) is dict


def _field_for_key(model: type[BaseModel], key: str) -> str | None:
    for name in model.model_fields:
        if key in _spellings(model, name):
            return name
    return None


@dataclasses.dataclass(frozen=True)
class _Where:
    """What an error location points at, in terms of models and fields."""

    owner: type[BaseModel] | None
    field: str | None  # Python name; None when the key is unknown to ``owner``
    key: str | None  # the key as it appears in the location (the user's spelling)
    trailing: tuple[str | int, ...]  # list indexes / dict keys after the field
    dict_key: bool  # the error is about a dict key, not its value

    @property
    def info(self) -> FieldInfo | None:
        if self.owner is None or self.field is None:
            return None
        return self.owner.model_fields[self.field]

    @property
    def subject(self) -> str:
        """How messages name the thing: ``memory``, ``command[0]``, ``labels key 'x'``."""
        if self.key is None:
            return "document"
        info = self.info
        if self.trailing and info is not None and _is_dict(info.annotation):
            entry = self.trailing[0]
            if self.dict_key:
                return f"{self.key} key {str(entry)!r}"
            return f"{self.key} value for {str(entry)!r}"
        return self.key + "".join(f"[{part}]" for part in self.trailing)


def _resolve(root: type[BaseModel], loc: Sequence[str | int]) -> _Where:
    annotation: object = root
    owner: type[BaseModel] | None = None
    field: str | None = None
    key: str | None = None
    trailing: list[str | int] = []
    dict_key = False
    for part in loc:
        if part == _DICT_KEY_MARK:
            dict_key = True
            break
        model = _model_of(annotation)
        if model is not None and isinstance(part, str):
            owner, key, trailing = model, part, []
            field = _field_for_key(model, part)
            annotation = model.model_fields[field].annotation if field is not None else None
        else:
            trailing.append(part)
            annotation = _item_of(annotation)
    return _Where(owner, field, key, tuple(trailing), dict_key)


def _example(where: _Where) -> object | None:
    info = where.info
    if info is None or not info.examples or where.trailing:
        return None
    example: object = info.examples[0]
    return example


def _literal_choices(where: _Where) -> tuple[str, ...]:
    info = where.info
    if info is None:
        return ()
    inner = _unwrap(info.annotation)
    if get_origin(inner) is Literal:
        return tuple(str(arg) for arg in get_args(inner))
    return ()


@functools.cache
def _field_homes() -> dict[str, tuple[str, ...]]:
    """Every field spelling (lower-cased) -> canonical paths where it belongs."""
    homes: dict[str, list[str]] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            canonical = info.serialization_alias or name
            path = f"{prefix}.{canonical}" if prefix else canonical
            for spelling in _spellings(model, name):
                homes.setdefault(spelling.lower(), []).append(path)
            inner = _model_of(info.annotation)
            item = _model_of(_item_of(info.annotation))
            if inner is not None:
                walk(inner, path)
            elif item is not None:
                walk(item, path + "[]")

    walk(Workload, "")
    return {key: tuple(dict.fromkeys(paths)) for key, paths in homes.items()}


def _suggest_fields(key: str, owner: type[BaseModel]) -> list[str]:
    """Up to two fields of ``owner`` close to ``key``, in the user's style of spelling."""
    snake_style = "_" in key or issubclass(owner, _SnakeModel)
    by_normal: dict[str, str] = {}
    for name, info in owner.model_fields.items():
        shown = name if snake_style else (info.serialization_alias or name)
        for spelling in _spellings(owner, name):
            by_normal.setdefault(spelling.replace("_", "").lower(), shown)
    normal = key.replace("_", "").replace("-", "").lower()
    if normal in by_normal:
        return [by_normal[normal]]
    found = difflib.get_close_matches(normal, list(by_normal), n=2, cutoff=0.6)
    return list(dict.fromkeys(by_normal[match] for match in found))


def _explain_unknown(where: _Where, parent: str) -> tuple[str, str]:
    key = where.key or ""
    owner = where.owner
    unknown = f"unknown field {key!r}" + (f" in {parent}" if parent != _WHOLE_DOCUMENT else "")
    if owner is None:
        return unknown, "remove it"
    # Both spellings of one field given: pydantic keeps the first and flags the other.
    for name in owner.model_fields:
        spellings = _spellings(owner, name)
        if key in spellings:
            other = next((s for s in spellings if s != key), key)
            return (
                f"{key!r} is given twice, also as {other!r}",
                f"keep only one of {other!r} and {key!r}",
            )
    close = _suggest_fields(key, owner)
    if close:
        return unknown, "did you mean " + " or ".join(repr(name) for name in close) + "?"
    homes = _field_homes().get(key.lower(), ())
    if homes:
        more = f" (or {len(homes) - 2} other places)" if len(homes) > 2 else ""
        return unknown, f"{key!r} belongs at {' or '.join(homes[:2])}{more}; move it there"
    canonical = [info.serialization_alias or name for name, info in owner.model_fields.items()]
    return unknown, f"remove it; fields allowed here: {', '.join(canonical)}"


def _explain(error: Mapping[str, Any], where: _Where, parent: str) -> tuple[str, str]:
    """Message and fix for one pydantic error, phrased for someone editing YAML."""
    kind: str = error["type"]
    value = error.get("input")
    subject = where.subject
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    example = _example(where)
    like = f", e.g. {_inline(example)}" if example is not None else ""

    if kind == _ERROR_TYPE:
        return f"{subject} {error['msg']}", str(ctx.get("fix", "correct the value"))
    if kind == "extra_forbidden":
        return _explain_unknown(where, parent)
    if kind == "missing":
        fix = f"add `{where.key}: {_inline(example)}`" if example is not None else f"add {subject}"
        return f"{subject} is required", fix
    if kind == "literal_error":
        choices = _literal_choices(where)
        if not choices:
            return f"{subject} {error['msg'].lower()}, got {_show(value)}", "use an allowed value"
        allowed = ", ".join(choices)
        close = _closest(str(value), choices) if isinstance(value, str) else None
        fix = f"did you mean {close!r}?" if close is not None else f"use one of: {allowed}"
        if len(choices) == 1:
            return f"{subject} must be {choices[0]!r}, got {_show(value)}", (
                f"set `{where.key}: {choices[0]}`"
            )
        return f"{subject} must be one of {allowed}; got {_show(value)}", fix
    if kind == "string_type":
        if isinstance(value, bool | int | float) or value is None:
            text = _show(value)
            return (
                f"{subject} must be a string, got {text} (YAML reads it as "
                f"{'null' if value is None else type(value).__name__})",
                f'put it in quotes: "{text}"',
            )
        return f"{subject} must be a string, got {_show(value)}", f"write it as text{like}"
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return (
            f"{subject} must be a whole number, got {_show(value)}",
            f"write a number without quotes{like or ', e.g. 1'}",
        )
    if kind in {"bool_type", "bool_parsing"}:
        return (
            f"{subject} must be true or false, got {_show(value)}",
            "write true or false without quotes",
        )
    if kind in {"tuple_type", "list_type", "set_type", "iterable_type"}:
        return f"{subject} must be a list, got {_show(value)}", f"write a YAML list{like}"
    if kind in {"dict_type", "model_type", "model_attributes_type", "mapping_type"}:
        return (
            f"{subject} must be a mapping of key: value pairs, got {_show(value)}",
            f"indent its fields under {where.key or 'it'}{like}",
        )
    message = str(error.get("msg", "is invalid"))
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return f"{subject}: {message}, got {_show(value)}", f"correct the value{like}"


def _issues_from(
    error: ValidationError, root: type[BaseModel], document: int
) -> list[ManifestIssue]:
    issues: list[ManifestIssue] = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        where = _resolve(root, loc)
        parent = _render_path(loc[:-1]) if item["type"] == "extra_forbidden" else ""
        message, fix = _explain(item, where, parent)
        issue = ManifestIssue(path=_render_path(loc), message=message, fix=fix, document=document)
        if issue not in issues:
            issues.append(issue)
    return issues


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _document_issue(
    message: str, fix: str, document: int, path: str = _WHOLE_DOCUMENT
) -> ManifestIssue:
    return ManifestIssue(path=path, message=message, fix=fix, document=document)


def _validate_document(data: object, document: int) -> tuple[Workload | None, list[ManifestIssue]]:
    """Validate one parsed document; never raises, so callers can collect every issue."""
    if not isinstance(data, Mapping):
        return None, [
            _document_issue(
                f"a manifest must be a mapping, got {_show(data)}",
                "start the document with `apiVersion: cloudless.dev/v1` and `kind: Workload`",
                document,
            )
        ]
    issues: list[ManifestIssue] = []
    if "apiVersion" not in data and "api_version" not in data:
        issues.append(
            _document_issue(
                "apiVersion is required", f"add `apiVersion: {API_VERSION}`", document, "apiVersion"
            )
        )
    kind = data.get("kind")
    supported = ", ".join(SUPPORTED_KINDS)
    if kind is None:
        issues.append(
            _document_issue(
                f"kind is required (supported kinds: {supported})",
                "add `kind: Workload`",
                document,
                "kind",
            )
        )
        return None, issues
    if not isinstance(kind, str) or kind not in _KINDS:
        close = _closest(kind, SUPPORTED_KINDS) if isinstance(kind, str) else None
        issues.append(
            _document_issue(
                f"kind {_show(kind)} is not supported; supported kinds: {supported}",
                f"did you mean {close!r}?" if close else f"set `kind:` to one of: {supported}",
                document,
                "kind",
            )
        )
        return None, issues
    model = _KINDS[kind]
    try:
        obj = model.model_validate(data)
    except ValidationError as error:
        issues.extend(_issues_from(error, model, document))
        return None, issues
    return (obj, issues) if not issues else (None, issues)


class _DuplicateKeyError(ValueError):
    """A JSON object repeats a key (JSON parsers silently keep the last one)."""


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML loader that rejects duplicate keys instead of keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Hashable, yaml.Mark] = {}
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable):
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first defined on line {seen[key].line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_issue(error: yaml.YAMLError, document: int) -> ManifestIssue:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    line = f"line {mark.line + 1}" if mark is not None else "the reported line"
    if "duplicate key" in problem:
        fix = f"remove one of the duplicate keys (see {line})"
    elif "\t" in problem or "'\\t'" in problem:
        fix = f"indent with spaces, not tabs (see {line})"
    else:
        fix = (
            f"fix the YAML syntax near {line}: check the indentation and that every ':' "
            "is followed by a space"
        )
    return _document_issue(f"invalid YAML{where}: {problem}", fix, document)


def _parse_documents(text: str) -> tuple[list[tuple[int, object]], list[ManifestIssue]]:
    """Split text into (index, data) documents; empty documents are skipped but counted."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(text, object_pairs_hook=_json_object)
        except _DuplicateKeyError as error:
            message = f"invalid JSON: duplicate key {str(error)!r}"
            return [], [_document_issue(message, "remove one of the duplicate keys", 0)]
        except ValueError:
            pass  # maybe YAML flow style; the YAML parser reports real syntax errors
        else:
            items = data if isinstance(data, list) else [data]
            return list(enumerate(items)), []
    documents: list[tuple[int, object]] = []
    index = 0
    # _StrictLoader is a SafeLoader subclass: it never builds arbitrary Python objects.
    stream = yaml.load_all(text, Loader=_StrictLoader)
    while True:
        try:
            data = next(stream)
        except StopIteration:
            break
        except yaml.YAMLError as error:
            return documents, [_yaml_issue(error, index)]
        if data is not None:
            documents.append((index, data))
        index += 1
    return documents, []


def load_manifests(text: str, source: str = "<manifest>") -> list[Workload]:
    """Parse and validate every document in ``text`` (YAML, or JSON).

    Raises :class:`ManifestError` listing every problem in every document; nothing is
    returned unless all documents are valid, so an ``apply`` is all-or-nothing.
    """
    documents, issues = _parse_documents(text)
    workloads: list[Workload] = []
    first_by_key: dict[str, int] = {}
    for index, data in documents:
        workload, problems = _validate_document(data, index)
        issues.extend(problems)
        if workload is None:
            continue
        if workload.key in first_by_key:
            issues.append(
                _document_issue(
                    f"workload {workload.key} is already defined in document "
                    f"{first_by_key[workload.key] + 1}",
                    "remove the duplicate document or give it another name",
                    index,
                    "metadata.name",
                )
            )
            continue
        first_by_key[workload.key] = index
        workloads.append(workload)
    if not documents and not issues:
        issues.append(
            _document_issue(
                "no manifest found (the input is empty or only comments)",
                "add a Workload document; see examples/hello.yaml",
                0,
            )
        )
    if issues:
        raise ManifestError(sorted(issues, key=lambda issue: issue.document), source)
    return workloads


def load_manifest_file(path: str | os.PathLike[str]) -> list[Workload]:
    """Load every manifest in a file; an unreadable file is reported like any other issue."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError as error:
        raise ManifestError(
            [
                _document_issue(
                    f"the file is not UTF-8 text ({error.reason} at byte {error.start})",
                    "save the manifest as UTF-8 YAML or JSON",
                    0,
                    "<file>",
                )
            ],
            source,
        ) from error
    except OSError as error:
        raise ManifestError(
            [
                _document_issue(
                    f"cannot read the file: {error.strerror or error}",
                    "check that the path exists, is a file and is readable",
                    0,
                    "<file>",
                )
            ],
            source,
        ) from error
    return load_manifests(text, source)


def parse_workload(
    data: Mapping[str, object], source: str = "<manifest>", document: int = 0
) -> Workload:
    """Validate one already-parsed document (e.g. from JSON or an API request)."""
    workload, issues = _validate_document(data, document)
    if workload is None or issues:
        raise ManifestError(issues, source)
    return workload


def is_dns_subdomain(value: str) -> bool:
    """Whether ``value`` is a DNS-1123 subdomain (secret names, for the SecretsService)."""
    return len(value) <= 253 and bool(_DNS_SUBDOMAIN_RE.match(value))


def is_secret_key(value: str) -> bool:
    """Whether ``value`` is a valid key inside a secret's data map."""
    return len(value) <= 253 and bool(_SECRET_KEY_RE.match(value))


def audience_problem(value: str) -> str | None:
    """Why ``value`` cannot be an audience (the manifest's and the SecretsService's rule)."""
    try:
        _check_audience(value)
    except ValueError as err:
        return str(err)
    return None
