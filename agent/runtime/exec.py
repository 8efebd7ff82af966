"""Exec runtime driver: replicas as plain processes, for devices without a container engine.

Each replica runs ``command + args`` in its own session (so the whole process group can be
signalled) with a minimal environment, in the spec's ``workingDir`` (which must exist on the
node) or else a private working directory. A small JSON record
per replica is persisted under the state directory, so an agent that restarts can list and
adopt the processes it started before: processes outlive the agent, like containers do.

Layout::

    <state_dir>/replicas/<replica_id>/record.json   pid, spec hash, labels, start times
    <state_dir>/replicas/<replica_id>/output.log    stdout+stderr, merged
    <state_dir>/replicas/<replica_id>/output.log.1  output of the previous run
    <state_dir>/replicas/<replica_id>/work/         the process's default working directory

Resource limits are **not enforced** by this runtime yet (no cgroups; ``RLIMIT_AS`` breaks
too many programs that reserve address space). Replicas that ask for limits say so in their
status message rather than pretend to be confined.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from agent.runtime.base import (
    ProbeResult,
    ReplicaPhase,
    ReplicaSpec,
    ReplicaStatus,
    exec_outcome,
    secret_volume_env_name,
)
from cloudless.errors import RuntimeDriverError

__all__ = ["LIMITS_NOT_ENFORCED", "ExecDriver", "exec_refusal", "process_environment"]

#: Status note for replicas whose CPU/memory limits this runtime cannot enforce.
LIMITS_NOT_ENFORCED = "limits not enforced by exec runtime"
_PORTS_NOT_MAPPED = "ports not mapped by exec runtime (the process binds them itself)"

_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
_RECORD = "record.json"
_LOG = "output.log"
_FAILURE_LOG_LINES = 20
_POLL_INTERVAL = 0.05
_FOLLOW_INTERVAL = 0.2
_READ_CHUNK = 64 * 1024
#: psutil derives create_time from clock ticks since boot: identical for the same process.
_CREATE_TIME_TOLERANCE = 0.05


@dataclass
class _Record:
    """What survives an agent restart about one replica process."""

    replica_id: str
    namespace: str
    workload: str
    node_id: str
    pid: int
    spec_hash: str
    generation: int
    argv: list[str]
    labels: dict[str, str]
    started_at: float
    proc_create_time: float  # psutil's view; tells our process from a reused pid
    notes: list[str] = field(default_factory=list)
    exit_code: int | None = None
    finished_at: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Record:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


def _exit_code(returncode: int) -> int:
    """Shell convention (128 + signal) for signal deaths, like container engines report."""
    return 128 - returncode if returncode < 0 else returncode


def _tail_offset(handle: IO[bytes], lines: int) -> int:
    """Byte offset where the last ``lines`` lines of the file start."""
    handle.seek(0, os.SEEK_END)
    end = handle.tell()
    if lines <= 0:
        return end
    pos, seen = end, 0
    while pos > 0:
        step = min(8192, pos)
        pos -= step
        handle.seek(pos)
        block = handle.read(step)
        for index in range(len(block) - 1, -1, -1):
            # A trailing newline ends the last line; it does not start another one.
            if block[index] == 0x0A and pos + index != end - 1:
                seen += 1
                if seen == lines:
                    return pos + index + 1
    return 0


def _read_tail(path: Path, lines: int) -> bytes:
    try:
        with path.open("rb") as handle:
            handle.seek(_tail_offset(handle, lines))
            return handle.read()
    except FileNotFoundError:
        return b""


def _secret_environment(spec: ReplicaSpec) -> dict[str, str]:
    """Secret values, and where each secret volume's files are: a process has no mounts.

    Values live only in the process environment (memory); the record keeps none of them.
    """
    if not spec.uses_secrets:
        return {}
    resolved = spec.require_resolved("exec")
    env = {secret_volume_env_name(m.volume_name): m.host_dir for m in resolved.mounts}
    env.update(resolved.env)
    return env


def process_environment(spec: ReplicaSpec) -> dict[str, str]:
    """The environment an exec replica starts with: PATH, the spec's env, its secrets."""
    return {
        "PATH": os.environ.get("PATH") or _DEFAULT_PATH,
        **spec.env,
        **_secret_environment(spec),
    }


def exec_refusal(argv: Sequence[str], env: Mapping[str, str]) -> str | None:
    """Why exec(2) (through CPython's subprocess) would refuse ``argv`` and ``env``, else None.

    These are the checks CPython makes before it forks (``os.fsencode``, no NUL byte, no
    '=' in an environment name); made up front, a bad spec is a clear driver error rather
    than a ValueError from deep inside asyncio.
    """
    entries: list[tuple[str, object, str]] = [("argv", i, arg) for i, arg in enumerate(argv)]
    for name, value in env.items():
        if not name or "=" in name:
            return f"environment variable name {name!r} is empty or contains '='"
        entries += [("environment name", name, name), ("environment value of", name, value)]
    for what, where, text in entries:
        try:
            encoded = os.fsencode(text)
        except UnicodeEncodeError:
            return f"{what} {where!r} cannot be encoded for the operating system"
        if b"\0" in encoded:
            return f"{what} {where!r} contains a NUL byte"
    return None


def _working_dir_refusal(path: str) -> str | None:
    """Why a process cannot start in ``path``, else None. Unlike a container's, the host's
    directories are not the replica's to create: a missing one is an error."""
    if not os.path.isabs(path):
        return f"working directory {path!r} is not an absolute path"
    if not os.path.isdir(path):
        return f"working directory {path!r} does not exist on this node (or is not a directory)"
    if not os.access(path, os.X_OK):
        return f"working directory {path!r} is not accessible to the agent's user"
    return None


def _replica_ids(root: Path) -> list[str]:
    try:
        return sorted(
            entry.name for entry in root.iterdir() if entry.is_dir() and _SAFE_ID.match(entry.name)
        )
    except FileNotFoundError:
        return []


class ExecDriver:
    """Runs replicas as local process groups (``name = "exec"``).

    Args:
        node_id: The node this agent is; records of other nodes in a shared state
            directory are ignored.
        state_dir: Where records, logs and working directories live; must survive agent
            restarts for adoption to work.
        settle_seconds: How long ``run`` watches a fresh process so that one that dies
            right away is reported Failed (with its output) instead of Running.
        replace_grace_seconds: SIGTERM grace when ``run`` replaces a process whose spec
            changed.
    """

    name = "exec"

    def __init__(
        self,
        node_id: str,
        state_dir: Path,
        *,
        settle_seconds: float = 0.3,
        replace_grace_seconds: float = 10.0,
    ) -> None:
        self.node_id = node_id
        self.state_dir = Path(state_dir)
        self.settle_seconds = settle_seconds
        self.replace_grace_seconds = replace_grace_seconds
        self._root = self.state_dir / "replicas"
        # Processes this instance spawned: only for these do we learn real exit codes.
        self._children: dict[str, asyncio.subprocess.Process] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    # -- files -----------------------------------------------------------------------

    def _dir(self, replica_id: str) -> Path:
        # replica ids become path components: refuse anything that could escape the root.
        if not _SAFE_ID.match(replica_id) or ".." in replica_id:
            raise RuntimeDriverError(f"exec: invalid replica id {replica_id!r}")
        return self._root / replica_id

    def _read_record(self, replica_id: str, *, any_node: bool = False) -> _Record | None:
        """The replica's record; records of other nodes count as absent unless asked."""
        try:
            data = json.loads((self._dir(replica_id) / _RECORD).read_text())
            record = _Record.from_json(data)
        except (OSError, ValueError, TypeError):
            return None
        if not any_node and self.node_id and record.node_id != self.node_id:
            return None
        return record

    def _write_record(self, record: _Record) -> None:
        # Write-then-rename: a crash mid-write must never leave a half record behind.
        directory = self._dir(record.replica_id)
        tmp = directory / f"{_RECORD}.tmp"
        tmp.write_text(json.dumps(asdict(record), indent=2, sort_keys=True))
        os.replace(tmp, directory / _RECORD)

    def _lock(self, replica_id: str) -> asyncio.Lock:
        lock = self._locks.get(replica_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[replica_id] = lock
        return lock

    # -- processes -------------------------------------------------------------------

    @staticmethod
    def _alive(record: _Record) -> bool:
        """Whether the recorded process still runs (and is ours, not a reused pid)."""
        try:
            process = psutil.Process(record.pid)
            if abs(process.create_time() - record.proc_create_time) > _CREATE_TIME_TOLERANCE:
                return False
            return process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        """Whether any non-zombie process is left in the replica's process group."""
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # killpg also succeeds for zombies nobody reaped yet; those are already dead.
        for process in psutil.process_iter():
            try:
                if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                    return True
            except (OSError, psutil.Error):
                continue
        return False

    @classmethod
    def _owns_group(cls, record: _Record) -> bool:
        """Whether the replica's process group still exists and is still ours.

        While any member of our group lives, the kernel keeps the group id reserved, so no
        new process can get that pid. A live process with that pid that is not our leader
        therefore means our group is long gone and the number names a stranger's group.
        """
        if cls._alive(record):
            return True
        try:
            process = psutil.Process(record.pid)
            if abs(process.create_time() - record.proc_create_time) > _CREATE_TIME_TOLERANCE:
                return False
        except psutil.Error:
            pass
        return cls._group_alive(record.pid)

    @staticmethod
    def _signal_group(pgid: int, signum: signal.Signals) -> None:
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            pass
        except PermissionError as error:
            raise RuntimeDriverError(
                f"exec: not allowed to signal process group {pgid}: {error.strerror}"
            ) from error

    async def _terminate(self, record: _Record, grace_seconds: float) -> int | None:
        """SIGTERM the process group, SIGKILL what is left after the grace; the exit code.

        The group id equals the leader's pid (new session); see :meth:`_owns_group` for why
        signalling it cannot hit a stranger's processes.
        """
        child = self._children.get(record.replica_id)
        if child is not None and child.pid != record.pid:
            child = None
        loop = asyncio.get_running_loop()
        if self._owns_group(record):
            self._signal_group(record.pid, signal.SIGTERM)
            deadline = loop.time() + max(grace_seconds, 0.0)
            while loop.time() < deadline:
                if not self._alive(record) and not self._group_alive(record.pid):
                    break
                await asyncio.sleep(_POLL_INTERVAL)
            else:
                self._signal_group(record.pid, signal.SIGKILL)
        if child is not None:
            with contextlib.suppress(TimeoutError):
                return _exit_code(await asyncio.wait_for(child.wait(), timeout=5.0))
            return None
        return record.exit_code

    async def _watch(self, record: _Record, process: asyncio.subprocess.Process) -> None:
        """Persist the exit code so it survives the agent (and shows up in list())."""
        returncode = await process.wait()
        current = self._read_record(record.replica_id)
        if current is None or current.pid != record.pid:
            return  # stopped and removed, or replaced by a newer run
        if current.proc_create_time != record.proc_create_time:
            return
        current.exit_code = _exit_code(returncode)
        current.finished_at = time.time()
        with contextlib.suppress(OSError):
            self._write_record(current)

    async def _observe(self, record: _Record, message: str = "") -> ReplicaStatus:
        """Like :meth:`_status`, but first lets a child that just died be reaped.

        Between a child's exit and its reaping it is a zombie: not alive, yet without a
        return code. Waiting that moment out yields the real exit code.
        """
        child = self._children.get(record.replica_id)
        if (
            child is not None
            and child.pid == record.pid
            and child.returncode is None
            and not self._alive(record)
        ):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.wait(), timeout=1.0)
        return self._status(record, message)

    def _status(self, record: _Record, message: str = "") -> ReplicaStatus:
        child = self._children.get(record.replica_id)
        exit_code: int | None = None
        notes = list(record.notes)
        if child is not None and child.pid == record.pid and child.returncode is not None:
            exit_code = _exit_code(child.returncode)
        elif record.exit_code is not None:
            exit_code = record.exit_code
        if exit_code is not None:
            phase = ReplicaPhase.STOPPED if exit_code == 0 else ReplicaPhase.FAILED
            notes.append(f"exited with code {exit_code}")
        elif self._alive(record):
            phase = ReplicaPhase.RUNNING
        else:
            # Adopted process that ended while no agent was its parent: nobody could
            # collect its exit status, so say so instead of inventing one.
            phase = ReplicaPhase.STOPPED
            notes.append("process ended while unsupervised; exit code unknown")
        if message:
            notes.append(message)
        return ReplicaStatus(
            replica_id=record.replica_id,
            namespace=record.namespace,
            workload=record.workload,
            phase=phase,
            generation=record.generation,
            spec_hash=record.spec_hash,
            runtime_id=str(record.pid),
            exit_code=exit_code,
            message="; ".join(notes),
            started_at=record.started_at,
        )

    # -- RuntimeDriver -----------------------------------------------------------------

    async def available(self) -> bool:
        """Always usable on POSIX: all it needs is fork/exec and a writable state dir."""
        if os.name != "posix":
            return False
        try:
            await asyncio.to_thread(self._root.mkdir, parents=True, exist_ok=True)
        except OSError:
            return False
        return os.access(self._root, os.W_OK)

    async def run(self, spec: ReplicaSpec) -> ReplicaStatus:
        """Start ``command + args``; idempotent per replica id (see RuntimeDriver.run)."""
        argv = [*spec.command, *spec.args]
        if not argv:
            raise RuntimeDriverError(
                f"exec: replica {spec.replica_id} has no command: the exec runtime has no "
                "image entrypoint to fall back to"
            )
        if spec.node_id != self.node_id and self.node_id:
            raise RuntimeDriverError(
                f"exec: replica {spec.replica_id} is for node {spec.node_id}, "
                f"this is {self.node_id}"
            )
        async with self._lock(spec.replica_id):
            record = self._read_record(spec.replica_id, any_node=True)
            if record is not None and self.node_id and record.node_id != self.node_id:
                raise RuntimeDriverError(
                    f"exec: replica {spec.replica_id} belongs to node {record.node_id} in "
                    f"{self.state_dir}; refusing to touch it"
                )
            if record is not None:
                status = await self._observe(record)
                if status.phase is ReplicaPhase.RUNNING and record.spec_hash == spec.spec_hash:
                    return status
                # Replace: also reaps strays a leader that already exited left in its group.
                await self._terminate(record, self.replace_grace_seconds)
                self._children.pop(spec.replica_id, None)
            return await self._spawn(spec, argv)

    def _prepare(self, replica_id: str) -> tuple[Path, IO[bytes]]:
        directory = self._dir(replica_id)
        work = directory / "work"
        work.mkdir(parents=True, exist_ok=True)
        # A stale record must not outlive a failed spawn and pose as this replica.
        (directory / _RECORD).unlink(missing_ok=True)
        log = directory / _LOG
        if log.exists():
            os.replace(log, directory / f"{_LOG}.1")  # keep the previous run's output
        return work, log.open("ab")

    async def _spawn(self, spec: ReplicaSpec, argv: list[str]) -> ReplicaStatus:
        env = process_environment(spec)
        refusal = exec_refusal(argv, env)
        if refusal is None and spec.working_dir:
            refusal = await asyncio.to_thread(_working_dir_refusal, spec.working_dir)
        if refusal is not None:  # before any file is touched: nothing half-made remains
            raise RuntimeDriverError(f"exec: cannot start replica {spec.replica_id}: {refusal}")
        try:
            work, log = await asyncio.to_thread(self._prepare, spec.replica_id)
        except OSError as error:
            raise RuntimeDriverError(
                f"exec: cannot prepare {self._dir(spec.replica_id)}: {error}"
            ) from error
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=spec.working_dir or work,
                env=env,
                start_new_session=True,  # own process group: stop() signals all of it
            )
        except OSError as error:
            raise RuntimeDriverError(
                f"exec: cannot start {argv[0]!r} for replica {spec.replica_id}: "
                f"{error.strerror or error}"
            ) from error
        finally:
            log.close()
        try:
            create_time = psutil.Process(process.pid).create_time()
        except psutil.Error:
            create_time = 0.0  # already gone and reaped; the watcher records its exit code
        notes: list[str] = []
        if spec.cpu_millis > 0 or spec.memory_bytes > 0:
            notes.append(LIMITS_NOT_ENFORCED)
        if any(port.host_port is not None for port in spec.ports):
            notes.append(_PORTS_NOT_MAPPED)
        record = _Record(
            replica_id=spec.replica_id,
            namespace=spec.namespace,
            workload=spec.workload,
            node_id=self.node_id,
            pid=process.pid,
            spec_hash=spec.spec_hash,
            generation=spec.generation,
            argv=argv,
            labels=spec.managed_labels(),
            started_at=time.time(),
            proc_create_time=create_time,
            notes=notes,
        )
        self._write_record(record)
        self._children[spec.replica_id] = process
        watcher = asyncio.create_task(self._watch(record, process))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        done, _ = await asyncio.wait({watcher}, timeout=self.settle_seconds)
        if not done:
            return await self._observe(record)
        output = await asyncio.to_thread(
            _read_tail, self._dir(spec.replica_id) / _LOG, _FAILURE_LOG_LINES
        )
        text = output.decode("utf-8", errors="replace").rstrip()
        message = "exited right after start" + (f"; last log lines:\n{text}" if text else "")
        return self._status(self._read_record(spec.replica_id) or record, message)

    async def stop(self, replica_id: str, grace_seconds: float = 10.0) -> ReplicaStatus | None:
        """SIGTERM the group, SIGKILL after the grace, then forget the replica and its files.

        A replica stopped on request is reported Stopped even if the signal made its exit
        code non-zero: being stopped is not a failure.
        """
        async with self._lock(replica_id):
            record = self._read_record(replica_id)
            if record is None:
                return None
            before = await self._observe(record)
            # Even after the leader exited, strays it backgrounded may live on in its group.
            exit_code = await self._terminate(record, grace_seconds)
            if before.phase is ReplicaPhase.RUNNING:
                status = ReplicaStatus(
                    replica_id=before.replica_id,
                    namespace=before.namespace,
                    workload=before.workload,
                    phase=ReplicaPhase.STOPPED,
                    generation=before.generation,
                    spec_hash=before.spec_hash,
                    runtime_id=before.runtime_id,
                    exit_code=exit_code,
                    message="; ".join(
                        [*record.notes, "stopped on request"]
                        + ([f"exit code {exit_code}"] if exit_code is not None else [])
                    ),
                    started_at=before.started_at,
                )
            else:
                status = before
            self._children.pop(replica_id, None)
            await asyncio.to_thread(shutil.rmtree, self._dir(replica_id), ignore_errors=True)
            return status

    async def list(self) -> list[ReplicaStatus]:
        """Every replica with a record of this node, including ones a previous agent ran."""
        names = await asyncio.to_thread(_replica_ids, self._root)
        statuses: list[ReplicaStatus] = []
        for replica_id in names:
            record = self._read_record(replica_id)
            if record is not None and (not self.node_id or record.node_id == self.node_id):
                statuses.append(await self._observe(record))
        return statuses

    async def logs(
        self, replica_id: str, *, follow: bool = False, tail: int | None = None
    ) -> AsyncIterator[bytes]:
        """Read (and with ``follow``, tail) the replica's merged output file.

        Following keeps one file handle open, so it keeps reading this run's output even
        if a restart rotates the file, and it ends once that process is gone.
        """
        record = self._read_record(replica_id)
        if record is None:
            raise RuntimeDriverError(f"exec: no replica {replica_id} on node {self.node_id}")
        path = self._dir(replica_id) / _LOG
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            return
        try:
            if tail is not None:
                await asyncio.to_thread(lambda: handle.seek(_tail_offset(handle, tail)))
            while True:
                chunk = await asyncio.to_thread(handle.read, _READ_CHUNK)
                if chunk:
                    yield chunk
                    continue
                if not follow:
                    return
                if not await self._still_running(record):
                    # Drain what was written between the last read and the exit.
                    while chunk := await asyncio.to_thread(handle.read, _READ_CHUNK):
                        yield chunk
                    return
                await asyncio.sleep(_FOLLOW_INTERVAL)
        finally:
            handle.close()

    async def _still_running(self, record: _Record) -> bool:
        current = self._read_record(record.replica_id)
        if current is None or current.pid != record.pid:
            return False
        return (await self._observe(current)).phase is ReplicaPhase.RUNNING

    # -- probes (agent/probes.py) --------------------------------------------------------

    def probe_target(self, spec: ReplicaSpec) -> _ExecProbeTarget:
        default = self._dir(spec.replica_id) / "work"
        return _ExecProbeTarget(spec, Path(spec.working_dir) if spec.working_dir else default)

    async def kill(self, replica_id: str, grace_seconds: float) -> None:
        """SIGTERM (then SIGKILL) the process group but keep the record: the replica shows
        as exited (Failed), and the supervisor restarts it per policy like any crash."""
        async with self._lock(replica_id):
            record = self._read_record(replica_id)
            if record is not None:
                await self._terminate(record, grace_seconds)

    async def close(self) -> None:
        """Stop watching; the processes keep running and a new driver can adopt them."""
        for watcher in list(self._watchers):
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._children.clear()


class _ExecProbeTarget:
    """Probes of an exec replica: commands run as processes with the replica's environment
    and working directory (without secret values: the agent keeps none after a start);
    HTTP and TCP probes connect to 127.0.0.1, since the replica shares the host network."""

    def __init__(self, spec: ReplicaSpec, workdir: Path) -> None:
        self._env = {"PATH": os.environ.get("PATH") or _DEFAULT_PATH, **spec.env}
        self._workdir = workdir

    async def address(self, port: int) -> tuple[str, int]:
        return "127.0.0.1", port

    async def exec(self, argv: Sequence[str], timeout: float) -> ProbeResult:
        shown = " ".join(argv)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self._workdir if self._workdir.is_dir() else None,
                env=self._env,
                start_new_session=True,  # a timed-out probe is killed with its children
            )
        except OSError as error:
            return ProbeResult(False, f"exec {shown!r}: {error.strerror or error}")
        try:
            async with asyncio.timeout(timeout):
                output, _ = await process.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            return ProbeResult(False, f"exec {shown!r}: timed out after {timeout:g}s")
        return exec_outcome(argv, _exit_code(process.returncode or 0), output)
