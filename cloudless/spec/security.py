"""The security context (CLD-REQ-062): privileges, user and group ids, capabilities, host
namespaces, Linux security modules and the runtime class.

It keeps the product docs' shape, snake_case, and is parsed and round-tripped here; the
agent enforces it.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal, TypeAlias

from pydantic import AfterValidator, Field, StrictBool, StrictInt

from cloudless.spec._base import _int_or_none, _Problem, _Raw, _SnakeModel
from cloudless.spec._messages import _closest, _problem, _show
from cloudless.spec._scalars import _between
from cloudless.spec.text import _text_defect

ProfileType: TypeAlias = Literal["RuntimeDefault", "Localhost", "Unconfined"]
RuntimeClassName: TypeAlias = Literal["runc", "gvisor", "kata", "firecracker"]

MAX_ID: Final = 2**31 - 1


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


# fullmatch only: re.match with "$" would accept a trailing newline.
_SELINUX_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_MCS_PART = r"s[0-9]+(?::c[0-9]+(?:[.,]c[0-9]+)*)?"
_SELINUX_LEVEL_RE = re.compile(rf"{_MCS_PART}(?:-{_MCS_PART})?")
_CAPABILITY_RE = re.compile(r"(?:CAP_)?([A-Z][A-Z0-9_]*)")


def _check_profile_path(value: str) -> str:
    defect = _text_defect(value, controls=True)
    if defect is not None:
        raise _problem(*defect)
    parts = value.split("/")
    if value and not value.startswith("/") and ".." not in parts:
        return value
    raise _problem(
        "must be a path relative to the node's profile directory, without '..', "
        f"got {_show(value)}",
        "use a relative name like cloudless-default or profiles/app.json",
    )


def _check_capability(value: str) -> str:
    match = _CAPABILITY_RE.fullmatch(value)
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
    if _SELINUX_NAME_RE.fullmatch(value):
        return value
    raise _problem(
        f"must be an SELinux identifier (letters, digits, '_', '.', '-'), got {_show(value)}",
        "use a value like system_u, system_r or container_t",
    )


def _check_selinux_level(value: str) -> str:
    if _SELINUX_LEVEL_RE.fullmatch(value):
        return value
    raise _problem(
        f"must be an MLS/MCS level like s0 or s0:c100,c200, got {_show(value)}",
        "use a level like s0:c100,c200",
    )


ProfilePath = Annotated[str, AfterValidator(_check_profile_path)]
Capability = Annotated[str, AfterValidator(_check_capability)]
SELinuxName = Annotated[str, AfterValidator(_check_selinux_name)]
SELinuxLevel = Annotated[str, AfterValidator(_check_selinux_level)]
LinuxId = Annotated[StrictInt, AfterValidator(_between(0, MAX_ID, 1000))]


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
