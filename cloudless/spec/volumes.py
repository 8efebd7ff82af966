"""Volumes and where containers mount them; today every volume is a secret projected as
read-only files on a memory-backed mount.

Whether a mount names a declared volume is checked by
:class:`~cloudless.spec.workload.WorkloadSpec`, which holds both lists.
"""

from __future__ import annotations

import posixpath
from typing import Annotated, Final

from pydantic import AfterValidator, Field, StrictBool, StrictInt

from cloudless.spec._base import _Model, _Problem, _Raw
from cloudless.spec._messages import _problem, _show
from cloudless.spec.names import Audience, DnsLabel, DnsSubdomain, SecretKey
from cloudless.spec.text import _check_absolute_path, _text_defect

MAX_FILE_MODE: Final = 0o777
#: Container paths the agent uses to deliver secrets (env file, shell); mounts may not go there.
RESERVED_MOUNT_DIR: Final = "/.cloudless"


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
    defect = _text_defect(value, controls=True)
    if defect is not None:
        raise _problem(*defect)
    parts = value.split("/")
    if value and not any(part in ("", ".", "..") for part in parts):
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


MountPath = Annotated[str, AfterValidator(_check_mount_path)]
RelativeFilePath = Annotated[str, AfterValidator(_check_relative_file_path)]
FileMode = Annotated[StrictInt, AfterValidator(_check_file_mode)]


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
