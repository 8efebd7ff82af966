"""Secret files on a memory-backed filesystem: the only place the agent writes secret values.

Layout under the secrets root (default ``/dev/shm/cloudless-secrets``)::

    <root>/<node-id>/<replica-id>/env                     ``export NAME='value'`` lines
    <root>/<node-id>/<replica-id>/volumes/<volume-name>/  projected files

Directories the agent owns are ``0700``; files are written atomically (temp file, then
rename) with their final mode. The agent refuses a root that is not on tmpfs or ramfs,
checked through ``/proc/self/mountinfo``, so values never land on a disk.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import stat
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from agent.runtime.base import DEFAULT_SECRET_FILE_MODE, SecretVolume
from cloudless.errors import CloudlessError

__all__ = [
    "DEFAULT_SECRETS_ROOT",
    "MEMORY_FILESYSTEMS",
    "SecretDeliveryError",
    "SecretFiles",
    "ensure_memory_backed",
    "filesystem_type",
    "projected_files",
]

DEFAULT_SECRETS_ROOT = Path("/dev/shm/cloudless-secrets")
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
MOUNTINFO = Path("/proc/self/mountinfo")
ENV_FILE = "env"
VOLUMES_DIR = "volumes"
#: The env file is read by the container's own user, which need not be root.
ENV_FILE_MODE = 0o444
_PRIVATE_DIR_MODE = 0o700
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


class SecretDeliveryError(CloudlessError):
    """A secret could not be fetched or delivered to a replica; the message says why.

    ``transient`` failures (the SecretsService unreachable or slow) are worth retrying;
    the others (denied, missing) are not until someone changes something.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class ProjectedFile(NamedTuple):
    path: str  # relative to the volume directory
    content: bytes
    mode: int


# ---------------------------------------------------------------------------- tmpfs check


def _read_mountinfo() -> str:
    return MOUNTINFO.read_text()


def _within(mount_point: str, path: str) -> bool:
    return mount_point == "/" or path == mount_point or path.startswith(mount_point + "/")


def filesystem_type(path: str, mountinfo: str) -> str | None:
    """The filesystem type of the mount holding the absolute, resolved ``path``.

    That is the mount with the longest mount point containing the path; of several at the
    same point, the last listed, which is mounted on top of the others.
    """
    found: str | None = None
    found_length = -1
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:] or len(fields) < 5:
            continue
        separator = fields.index("-", 6)
        if separator + 1 >= len(fields):
            continue
        mount_point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        if _within(mount_point, path) and len(mount_point) >= found_length:
            found, found_length = fields[separator + 1], len(mount_point)
    return found


def ensure_memory_backed(path: Path, mountinfo: str) -> None:
    """Refuse a secrets directory whose files could reach a disk."""
    fstype = filesystem_type(os.path.realpath(path), mountinfo)
    if fstype not in MEMORY_FILESYSTEMS:
        raise SecretDeliveryError(
            f"secrets directory {path} is on {fstype or 'an unknown filesystem'}, not tmpfs "
            "or ramfs; refusing to write secret values where they could reach a disk "
            f"(mount a tmpfs there, or point --secrets-dir at one, e.g. {DEFAULT_SECRETS_ROOT})"
        )


# ---------------------------------------------------------------------------- projection


def projected_files(volume: SecretVolume, data: Mapping[str, bytes]) -> list[ProjectedFile]:
    """The files a volume shows for the secret's ``data``: listed keys, or every key."""
    default = volume.default_mode or DEFAULT_SECRET_FILE_MODE
    if not volume.files:
        return [ProjectedFile(key, value, default) for key, value in sorted(data.items())]
    missing = [f.key for f in volume.files if f.key not in data]
    if missing:
        raise SecretDeliveryError(
            f"secret {volume.secret} has no key {', '.join(map(repr, missing))} for volume "
            f"{volume.volume_name!r} (its keys: {', '.join(sorted(data)) or 'none'}); fix the "
            "volume's items or add the key to the secret"
        )
    return [ProjectedFile(f.path, data[f.key], f.mode or default) for f in volume.files]


def env_file_text(values: Mapping[str, str]) -> str:
    """Shell ``export`` lines, single-quoted so no value is ever interpreted."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in values.items())


def _volume_dir_mode(modes: Sequence[int]) -> int:
    """0700, opened to group/others only as far as some file's mode lets them read."""
    mode = _PRIVATE_DIR_MODE
    if any(m & 0o040 for m in modes):
        mode |= 0o050
    if any(m & 0o004 for m in modes):
        mode |= 0o005
    return mode


def _relative_parts(path: str) -> list[str]:
    """Components of a projected file path; the agent never trusts the spec's checks."""
    parts = path.split("/")
    if not path or "\x00" in path or any(p in ("", ".", "..") for p in parts):
        raise SecretDeliveryError(
            f"secret file path {path!r} must be relative, without '..', '.' or empty segments"
        )
    return parts


def _owned_dir(path: Path, mode: int) -> None:
    """Create ``path`` (or accept it) as a real directory of ours with exactly ``mode``.

    The secrets root usually sits in world-writable ``/dev/shm``: a directory or symlink
    planted there by another user must never receive secrets.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, _PRIVATE_DIR_MODE)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise SecretDeliveryError(
            f"{path} is not a directory owned by the agent's user (uid {os.geteuid()}); "
            "refusing to put secrets there (remove it, or choose another --secrets-dir)"
        )
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)


def _write_atomic(path: Path, content: bytes, mode: int) -> None:
    """Readers see the old file or the new one, never a partial write."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            os.fchmod(handle.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove_unlisted(directory: Path, keep: Collection[str]) -> None:
    """Drop files a previous version of the secret had (a key that was removed)."""
    for current, dirs, files in os.walk(directory, topdown=False):
        here = Path(current)
        for name in files:
            if (here / name).relative_to(directory).as_posix() not in keep:
                (here / name).unlink(missing_ok=True)
        for name in dirs:
            with contextlib.suppress(OSError):
                (here / name).rmdir()  # only succeeds once it is empty


class SecretFiles:
    """Per-replica directories of secret files under ``<root>/<node-id>/``.

    Args:
        root: The secrets root; must be on tmpfs or ramfs.
        node_id: Separates agents sharing one host (and one ``/dev/shm``).
        read_mountinfo: Source of ``/proc/self/mountinfo`` text (tests pass their own).
    """

    def __init__(
        self, root: Path, node_id: str, *, read_mountinfo: Callable[[], str] = _read_mountinfo
    ) -> None:
        self.root = Path(root)
        self.base = self.root / node_id
        self._read_mountinfo = read_mountinfo

    def check(self) -> None:
        """Raise :class:`SecretDeliveryError` unless the root is memory-backed."""
        ensure_memory_backed(self.root, self._read_mountinfo())

    def replica_dir(self, replica_id: str) -> Path:
        if not _SAFE_NAME.match(replica_id):
            raise SecretDeliveryError(f"invalid replica id {replica_id!r}")
        return self.base / replica_id

    def volume_dir(self, replica_id: str, volume_name: str) -> Path:
        if not _SAFE_NAME.match(volume_name):
            raise SecretDeliveryError(f"invalid volume name {volume_name!r}")
        return self.replica_dir(replica_id) / VOLUMES_DIR / volume_name

    def _prepare(self, replica_id: str) -> Path:
        self.check()
        directory = self.replica_dir(replica_id)
        for path in (self.root, self.base, directory):
            _owned_dir(path, _PRIVATE_DIR_MODE)
        return directory

    def write_env(self, replica_id: str, values: Mapping[str, str]) -> Path:
        """The env file a docker replica's entrypoint sources; returns its host path."""
        bad = [name for name, value in values.items() if "\x00" in value]
        if bad:
            raise SecretDeliveryError(
                f"secret values for {', '.join(bad)} contain NUL bytes, which an environment "
                "variable cannot hold; mount them as files instead"
            )
        path = self._prepare(replica_id) / ENV_FILE
        _write_atomic(path, env_file_text(values).encode(), ENV_FILE_MODE)
        return path

    def write_volume(
        self, replica_id: str, volume: SecretVolume, files: list[ProjectedFile]
    ) -> Path:
        """Project ``files`` into the volume's directory (in place: it may be mounted)."""
        directory = self.volume_dir(replica_id, volume.volume_name)
        self._prepare(replica_id)
        _owned_dir(directory.parent, _PRIVATE_DIR_MODE)
        dir_mode = _volume_dir_mode([f.mode for f in files])
        _owned_dir(directory, dir_mode)
        for file in files:
            parts = _relative_parts(file.path)
            parent = directory
            for part in parts[:-1]:
                parent = parent / part
                _owned_dir(parent, dir_mode)
            _write_atomic(parent / parts[-1], file.content, file.mode)
        _remove_unlisted(directory, {f.path for f in files})
        return directory

    def remove(self, replica_id: str) -> None:
        """Forget a replica's secret files (it was stopped and removed)."""
        shutil.rmtree(self.replica_dir(replica_id), ignore_errors=True)

    def remove_stale(self, keep: Collection[str]) -> list[str]:
        """Remove directories of replicas this agent no longer runs; returns their ids."""
        try:
            entries = [entry.name for entry in self.base.iterdir() if entry.is_dir()]
        except FileNotFoundError:
            return []
        stale = sorted(name for name in entries if name not in keep)
        for name in stale:
            shutil.rmtree(self.base / name, ignore_errors=True)
        return stale
