"""Files holding key material: written atomically with an exact mode from the moment the
file exists (0600 for private material, 0644 for certificates), so a crash or a concurrent
reader never sees a partial or readable key; private files are read only if group and other
cannot access them.

Used for every secret Cloudless keeps on disk, not only certificates (the transit keyring,
the codec's keys, the agent's state).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from cloudless.errors import PKIError

#: Upper bound on key/cert files we read from disk.
_MAX_FILE_BYTES = 1024 * 1024


def _fsync_dir(directory: Path) -> None:
    """Persist a rename; without it a power loss can forget the new directory entry."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _ensure_dir(directory: Path, mode: int) -> None:
    """Create ``directory`` and missing ancestors with exactly ``mode``; existing ones are kept.

    ``Path.mkdir(parents=True)`` would create ancestors with umask-derived modes, possibly
    world-writable; a private key's directory chain should not be.
    """
    missing: list[Path] = []
    current = directory
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=mode)
        except FileExistsError:
            continue  # created concurrently; not ours to re-permission
        os.chmod(path, mode)  # mkdir's mode is filtered by the umask


def _atomic_write(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # The mode is applied at creation (O_EXCL, never an existing file), so there is no window
    # in which the content is readable more widely than ``mode``.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it; make it exact
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic create-if-absent: FileExistsError if someone won
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_private_file(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Atomically write secret material with mode 0600; the parent is created 0700.

    With ``overwrite=False`` an existing file is kept and :class:`FileExistsError` raised, which
    makes concurrent bootstraps race-free. Other I/O failures become :class:`PKIError`.
    """
    path = Path(path)
    try:
        _ensure_dir(path.parent, 0o700)
        _atomic_write(path, data, 0o600, overwrite=overwrite)
    except FileExistsError:
        if overwrite:
            raise PKIError(f"cannot write {path}: a temporary file collided; retry") from None
        raise
    except OSError as exc:
        raise PKIError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_public_file(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Atomically write non-secret material (certificates, public keys) with mode 0644."""
    path = Path(path)
    try:
        _ensure_dir(path.parent, 0o755)
        _atomic_write(path, data, 0o644, overwrite=overwrite)
    except FileExistsError:
        if overwrite:
            raise PKIError(f"cannot write {path}: a temporary file collided; retry") from None
        raise
    except OSError as exc:
        raise PKIError(f"cannot write {path}: {exc.strerror or exc}") from exc


def read_private_file(path: Path) -> bytes:
    """Read a private key, refusing one that group or other can access.

    A key readable by other local users is already compromised in spirit; failing loudly is
    better than serving certificates signed by it. The mode is checked on the opened file
    descriptor, so a swap between check and read is not possible.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise PKIError(f"private key {path} does not exist") from None
    except OSError as exc:
        raise PKIError(f"cannot read private key {path}: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode & 0o777
        if mode & 0o077:
            raise PKIError(
                f"private key {path} has mode {mode:#o}, which lets group/other access it; "
                f"run `chmod 600 {path}` (and check it has not leaked)"
            )
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            total += len(chunk)
            if total > _MAX_FILE_BYTES:
                raise PKIError(f"private key {path} is larger than {_MAX_FILE_BYTES} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes, mode: int) -> None:
    """Atomically replace ``path`` (which must exist in an existing directory) with ``data``,
    giving the new file exactly ``mode`` from the moment it exists: for rewriting a file
    in place (an operator's config) without a window where it is partial or more readable.
    A symlink is followed: its target is replaced, the link is kept."""
    path = Path(path).resolve()
    try:
        _atomic_write(path, data, mode, overwrite=True)
    except FileExistsError:
        raise PKIError(f"cannot write {path}: a temporary file collided; retry") from None
    except OSError as exc:
        raise PKIError(f"cannot write {path}: {exc.strerror or exc}") from exc


def read_public_file(path: Path) -> bytes:
    """Read a certificate or other public file, bounded to 1 MiB; errors name the file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise PKIError(f"{path} does not exist") from None
    except OSError as exc:
        raise PKIError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_FILE_BYTES:
        raise PKIError(f"{path} is larger than {_MAX_FILE_BYTES} bytes")
    return data
