"""Docker runtime driver: one labelled container per replica on the local Docker engine.

The docker SDK is synchronous, so every engine call runs in a worker thread
(``asyncio.to_thread``) and the agent's event loop never blocks on the engine. Docker's own
restart policy is left off on purpose: the agent owns restarts, so it always sees a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import struct
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import Mount

from agent.runtime.base import (
    LABEL_GENERATION,
    LABEL_MANAGED,
    LABEL_NAMESPACE,
    LABEL_NODE,
    LABEL_REPLICA,
    LABEL_SPEC_HASH,
    LABEL_WORKLOAD,
    ProbeResult,
    ReplicaPhase,
    ReplicaSpec,
    ReplicaStatus,
    exec_outcome,
)
from cloudless.errors import RuntimeDriverError

__all__ = ["CONTAINER_PREFIX", "DockerDriver", "container_name", "secret_env_entrypoint"]

_T = TypeVar("_T")

#: Every replica container is named ``cloudless-<replica_id>``; the name is the idempotency key.
CONTAINER_PREFIX = "cloudless-"

#: How many log lines go into the message of a replica that died right after start.
_FAILURE_LOG_LINES = 20
#: Backpressure for ``logs(follow=True)``: the reader thread waits when the consumer lags.
_LOG_QUEUE_SIZE = 64
#: How often ``run`` re-inspects a container that is not running yet.
_POLL_INTERVAL = 0.05
#: Attempts to win a name race against another engine client before giving up.
_CREATE_ATTEMPTS = 5

#: The host's static busybox, bind-mounted into containers that get secret env vars.
DEFAULT_SECRET_SHELL = Path("/bin/busybox")
#: Inside the container (manifests may not mount anything under /.cloudless). The shell's
#: file name must be ``busybox`` so the multi-call binary takes its applet from argv[1].
SECRET_SHELL_TARGET = "/.cloudless/busybox"
SECRET_ENV_TARGET = "/.cloudless/env"
#: Source the env file, then exec the real command. PATH is searched by hand because a
#: static busybox prefers its own applets (env, sh, ...) over the image's programs.
_ENV_WRAPPER = (
    f". {SECRET_ENV_TARGET} || exit 1; "
    'case "$1" in */*) exec "$@";; esac; '
    "IFS=:; for d in $PATH; do "
    'if [ -f "$d/$1" ] && [ -x "$d/$1" ]; then p="$d/$1"; shift; exec "$p" "$@"; fi; '
    'done; echo "cloudless: $1: not found in PATH" >&2; exit 127'
)
_PT_INTERP = 3


def container_name(replica_id: str) -> str:
    """The container name for a replica (docker names are unique per engine)."""
    return f"{CONTAINER_PREFIX}{replica_id}"


def _reason(error: BaseException) -> str:
    """The engine's own explanation of an error, which is what an operator needs to see."""
    explanation = getattr(error, "explanation", None)
    if explanation:
        return str(explanation)
    return str(error) or type(error).__name__


def _parse_docker_time(value: str | None) -> float | None:
    """Unix seconds from docker's RFC 3339 nanosecond timestamps; None for 'never'."""
    if not value or value.startswith("0001-01-01"):
        return None
    try:  # 3.11+ accepts "Z" and drops digits beyond microseconds
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _is_conflict(error: docker.errors.APIError) -> bool:
    return getattr(error, "status_code", None) == 409


def secret_env_entrypoint(argv: Sequence[str]) -> list[str]:
    """The entrypoint that loads secret env vars from a tmpfs file, then execs ``argv``.

    Putting the values in the container's ``Env`` would make dockerd write them to
    ``/var/lib/docker``; the file lives on tmpfs and is bind-mounted read-only instead.
    """
    return [SECRET_SHELL_TARGET, "sh", "-c", _ENV_WRAPPER, "sh", *argv]


def _original_argv(spec: ReplicaSpec, image_config: Mapping[str, Any]) -> list[str]:
    """What the container runs without the wrapper (Kubernetes command/args rules)."""
    entrypoint = list(spec.command) or list(image_config.get("Entrypoint") or [])
    if spec.command or spec.args:
        return entrypoint + list(spec.args)
    return entrypoint + list(image_config.get("Cmd") or [])


def _is_static_elf(blob: bytes) -> bool:
    """Whether an ELF executable needs no dynamic loader (it has no PT_INTERP header)."""
    if len(blob) < 64 or blob[:4] != b"\x7fELF":
        return False
    endian = "<" if blob[5] == 1 else ">"
    if blob[4] == 2:  # 64-bit
        (phoff,) = struct.unpack_from(endian + "Q", blob, 0x20)
        phentsize, phnum = struct.unpack_from(endian + "HH", blob, 0x36)
    else:
        (phoff,) = struct.unpack_from(endian + "I", blob, 0x1C)
        phentsize, phnum = struct.unpack_from(endian + "HH", blob, 0x2A)
    for index in range(phnum):
        offset = phoff + index * phentsize
        if offset + 4 > len(blob):
            return False
        if struct.unpack_from(endian + "I", blob, offset)[0] == _PT_INTERP:
            return False
    return True


def _static_shell(path: Path) -> Path:
    """The host's static busybox, checked: a dynamic one would find no libc in the image."""
    fix = "install busybox-static on the node or point --secret-shell at a static busybox"
    try:
        with path.open("rb") as handle:
            blob = handle.read(64 * 1024)
    except OSError as error:
        raise RuntimeDriverError(
            f"docker: secret env vars are loaded by a static busybox mounted from {path}, "
            f"which cannot be read: {error.strerror or error}; {fix}"
        ) from error
    if not _is_static_elf(blob):
        raise RuntimeDriverError(
            f"docker: {path} is not a statically linked executable, so it cannot run inside "
            f"the container to load secret env vars; {fix}"
        )
    return path.resolve()


class DockerDriver:
    """Runs replicas as containers on a Docker engine (``name = "docker"``).

    Several agents may share one engine (e.g. in tests or on a big host); each only sees,
    stops and streams containers carrying its own node label, so they never fight.

    Args:
        node_id: The node this agent is; containers are labelled and filtered by it. An
            empty string disables the node filter (all managed containers are listed).
        base_url: Engine address (``unix:///var/run/docker.sock``, ``tcp://...``); None uses
            the ``DOCKER_HOST`` environment like the docker CLI.
        publish_address: Host address published ports bind to. Loopback by default so a
            replica is never exposed to the network unless the operator asks for it.
        pull: Try a registry pull when an image is missing. Off by default because edge
            nodes usually have no registry access and a hanging pull would stall ``run``.
        replace_grace_seconds: SIGTERM grace when ``run`` replaces a container whose spec
            changed.
        settle_seconds: How long ``run`` watches a fresh container so that one that dies
            right away is reported Failed (with its logs) instead of Running.
        start_timeout: Upper bound for a container to leave the ``created`` state.
        secret_shell: A static busybox on the host, bind-mounted into containers that get
            secret env vars, to load them from their tmpfs file.
    """

    name = "docker"

    def __init__(
        self,
        node_id: str,
        *,
        base_url: str | None = None,
        publish_address: str = "127.0.0.1",
        pull: bool = False,
        replace_grace_seconds: float = 10.0,
        settle_seconds: float = 0.5,
        start_timeout: float = 30.0,
        secret_shell: Path = DEFAULT_SECRET_SHELL,
    ) -> None:
        self.node_id = node_id
        self.secret_shell = Path(secret_shell)
        self.base_url = base_url
        self.publish_address = publish_address
        self.pull = pull
        self.replace_grace_seconds = replace_grace_seconds
        self.settle_seconds = settle_seconds
        self.start_timeout = start_timeout
        self._client: docker.DockerClient | None = None
        self._client_lock = asyncio.Lock()
        # Weak values: a lock lives exactly as long as some call holds or waits for it.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    # -- engine plumbing -------------------------------------------------------------

    def _connect(self) -> docker.DockerClient:
        # version="auto" negotiates down to what the engine speaks (the SDK default may be
        # newer than an old dockerd); it performs a request, so this runs in a thread.
        # A pool as large as the agent's thread pool, so concurrent starts never queue
        # for a connection.
        if self.base_url is None:
            return docker.from_env(version="auto", max_pool_size=32)
        return docker.DockerClient(base_url=self.base_url, version="auto", max_pool_size=32)

    async def _engine(self) -> docker.DockerClient:
        """The shared client, created lazily so a driver can exist before the engine does."""
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                try:
                    self._client = await asyncio.to_thread(self._connect)
                except docker.errors.DockerException as error:
                    where = self.base_url or "DOCKER_HOST/default socket"
                    raise RuntimeDriverError(
                        f"cannot reach the docker engine at {where}: {_reason(error)}"
                    ) from error
            return self._client

    async def _call(self, what: str, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a blocking SDK call in a thread and translate engine errors."""
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except docker.errors.DockerException as error:
            raise RuntimeDriverError(f"docker: {what} failed: {_reason(error)}") from error

    def _lock(self, replica_id: str) -> asyncio.Lock:
        lock = self._locks.get(replica_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[replica_id] = lock
        return lock

    def _owned(self, container: Container) -> bool:
        labels: dict[str, str] = container.labels or {}
        if labels.get(LABEL_MANAGED) != "true":
            return False
        return not self.node_id or labels.get(LABEL_NODE) == self.node_id

    async def _find(self, replica_id: str) -> Container | None:
        """The replica's container, whatever node owns it; None if there is none."""
        client = await self._engine()
        try:
            return await asyncio.to_thread(client.containers.get, container_name(replica_id))
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as error:
            raise RuntimeDriverError(
                f"docker: inspecting replica {replica_id} failed: {_reason(error)}"
            ) from error

    async def _find_owned(self, replica_id: str) -> Container | None:
        container = await self._find(replica_id)
        if container is None or not self._owned(container):
            return None
        return container

    async def _reload(self, container: Container) -> bool:
        """Refresh ``container.attrs``; False once the container is gone."""
        try:
            await asyncio.to_thread(container.reload)
        except docker.errors.NotFound:
            return False
        except docker.errors.DockerException as error:
            raise RuntimeDriverError(
                f"docker: inspecting {container.name} failed: {_reason(error)}"
            ) from error
        return True

    async def _remove(self, container: Container, grace_seconds: float) -> None:
        """Stop (SIGTERM, then SIGKILL after the grace) and remove; gone already is fine."""
        try:
            if container.status in ("running", "restarting", "paused"):
                await asyncio.to_thread(container.stop, timeout=math.ceil(grace_seconds))
            await asyncio.to_thread(container.remove, force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as error:
            # 409: the engine is already removing it (someone else won); wait for that.
            if not _is_conflict(error):
                raise RuntimeDriverError(
                    f"docker: removing {container.name} failed: {_reason(error)}"
                ) from error
            deadline = asyncio.get_running_loop().time() + self.start_timeout
            while await self._reload(container):
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeDriverError(
                        f"docker: {container.name} is stuck in removal: {_reason(error)}"
                    ) from error
                await asyncio.sleep(_POLL_INTERVAL)

    # -- status ----------------------------------------------------------------------

    @staticmethod
    def _status(container: Container, message: str = "") -> ReplicaStatus:
        attrs: dict[str, Any] = container.attrs
        labels: dict[str, str] = container.labels or {}
        state: dict[str, Any] = attrs.get("State") or {}
        status = str(state.get("Status", ""))
        exit_code: int | None = None
        notes: list[str] = []
        if status == "running":
            phase = ReplicaPhase.RUNNING
            if state.get("Paused"):
                notes.append("paused")
        elif status in ("created", "restarting"):
            phase = ReplicaPhase.STARTING
        elif status == "paused":
            phase = ReplicaPhase.RUNNING
            notes.append("paused")
        elif status == "exited":
            exit_code = int(state.get("ExitCode", 0))
            phase = ReplicaPhase.STOPPED if exit_code == 0 else ReplicaPhase.FAILED
            notes.append(f"exited with code {exit_code}")
        elif status == "removing":
            phase = ReplicaPhase.STOPPED
            notes.append("being removed")
        else:  # "dead" or anything the engine adds later
            phase = ReplicaPhase.FAILED
            exit_code = int(state["ExitCode"]) if state.get("ExitCode") is not None else None
            notes.append(f"container is {status or 'in an unknown state'}")
        if state.get("OOMKilled"):
            notes.append("killed by the kernel OOM killer (memory limit)")
        if state.get("Error"):
            notes.append(str(state["Error"]))
        if message:
            notes.append(message)
        try:
            generation = int(labels.get(LABEL_GENERATION, "1"))
        except ValueError:
            generation = 1
        return ReplicaStatus(
            replica_id=labels.get(LABEL_REPLICA, container.name.removeprefix(CONTAINER_PREFIX)),
            namespace=labels.get(LABEL_NAMESPACE, ""),
            workload=labels.get(LABEL_WORKLOAD, ""),
            phase=phase,
            generation=generation,
            spec_hash=labels.get(LABEL_SPEC_HASH, ""),
            runtime_id=str(container.id),
            exit_code=exit_code,
            message="; ".join(notes),
            started_at=_parse_docker_time(state.get("StartedAt")),
        )

    async def _tail_text(self, container: Container, lines: int) -> str:
        try:
            raw = await asyncio.to_thread(
                container.logs, stdout=True, stderr=True, tail=lines, stream=False
            )
        except docker.errors.DockerException:
            return ""
        return bytes(raw).decode("utf-8", errors="replace").rstrip()

    # -- RuntimeDriver -----------------------------------------------------------------

    async def available(self) -> bool:
        """Ping the engine; never raises, so the agent can probe drivers at startup."""
        try:
            client = await self._engine()
            return bool(await asyncio.to_thread(client.ping))
        except Exception:
            return False

    async def run(self, spec: ReplicaSpec) -> ReplicaStatus:
        """Make the replica's container run this spec (see :class:`RuntimeDriver.run`).

        The per-replica lock serialises callers in this process; the engine's name
        uniqueness (409 Conflict) serialises against other processes, and on a conflict
        we simply re-inspect and decide again.
        """
        if self.node_id and spec.node_id != self.node_id:
            # The container would carry another node's label and be invisible to us.
            raise RuntimeDriverError(
                f"docker: replica {spec.replica_id} is for node {spec.node_id}, "
                f"this is {self.node_id}"
            )
        async with self._lock(spec.replica_id):
            client = await self._engine()
            for _ in range(_CREATE_ATTEMPTS):
                container = await self._find(spec.replica_id)
                if container is not None:
                    if not self._owned(container):
                        labels = container.labels or {}
                        owner = labels.get(LABEL_NODE) or "no cloudless node (unmanaged)"
                        raise RuntimeDriverError(
                            f"docker: container name {container.name!r} is taken by a container "
                            f"of {owner}; refusing to touch it"
                        )
                    same = (container.labels or {}).get(LABEL_SPEC_HASH) == spec.spec_hash
                    if same and container.status == "running":
                        return self._status(container)
                    if same and container.status == "created":
                        # A start that was interrupted (or is racing us): finish it.
                        return await self._start(container)
                    await self._remove(container, self.replace_grace_seconds)
                image_config = await self._ensure_image(client, spec.image)
                kwargs = self._create_kwargs(spec, image_config)
                try:
                    container = await asyncio.to_thread(client.containers.create, **kwargs)
                except docker.errors.APIError as error:
                    if _is_conflict(error):
                        # Someone else is creating it; the engine reserves the name before
                        # the container can be inspected, so give that create a moment.
                        await asyncio.sleep(_POLL_INTERVAL)
                        continue
                    raise RuntimeDriverError(
                        f"docker: creating replica {spec.replica_id} failed: {_reason(error)}"
                    ) from error
                return await self._start(container)
            raise RuntimeDriverError(
                f"docker: replica {spec.replica_id} kept being recreated by another client; "
                f"gave up after {_CREATE_ATTEMPTS} attempts"
            )

    def _create_kwargs(self, spec: ReplicaSpec, image_config: Mapping[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "image": spec.image,
            "name": container_name(spec.replica_id),
            "labels": spec.managed_labels(),
            "environment": dict(spec.env),
            "detach": True,
            # The agent owns restarts, so a crash must surface, not be hidden by the engine.
            "restart_policy": {"Name": "no"},
            # A tiny init as PID 1 forwards SIGTERM and reaps zombies; without it a shell or
            # busybox httpd as PID 1 ignores SIGTERM and every stop waits the full grace.
            "init": True,
        }
        # Kubernetes semantics: command replaces ENTRYPOINT, args replace CMD. The engine
        # drops the image CMD when an entrypoint is given, exactly like Kubernetes does.
        if spec.command:
            kwargs["entrypoint"] = list(spec.command)
        if spec.args:
            kwargs["command"] = list(spec.args)
        if spec.working_dir:
            # Replaces the image's WORKDIR; the engine creates the directory if it is missing
            # (as Kubernetes does), and exec probes run there too.
            kwargs["working_dir"] = spec.working_dir
        if spec.cpu_millis > 0:
            kwargs["nano_cpus"] = spec.cpu_millis * 1_000_000
        if spec.memory_bytes > 0:
            kwargs["mem_limit"] = spec.memory_bytes
        ports: dict[str, tuple[str, int] | int] = {}
        for port in spec.ports:
            if port.host_port is None:
                continue
            key = f"{port.container_port}/{port.protocol.lower()}"
            ports[key] = (
                (self.publish_address, port.host_port) if self.publish_address else port.host_port
            )
        if ports:
            kwargs["ports"] = ports
        if spec.uses_secrets:
            kwargs.update(self._secret_kwargs(spec, image_config))
        return kwargs

    def _secret_kwargs(self, spec: ReplicaSpec, image_config: Mapping[str, Any]) -> dict[str, Any]:
        """Read-only bind mounts of the replica's tmpfs files, and the env-loading wrapper."""
        resolved = spec.require_resolved(self.name)
        mounts = [
            Mount(m.container_path, m.host_dir, type="bind", read_only=True)
            for m in resolved.mounts
        ]
        options: dict[str, Any] = {"mounts": mounts}
        if resolved.env_file is None:
            return options
        argv = _original_argv(spec, image_config)
        if not argv:
            raise RuntimeDriverError(
                f"docker: replica {spec.replica_id} has secret env vars but nothing to run: "
                f"image {spec.image!r} has no ENTRYPOINT or CMD; set command in the manifest"
            )
        shell = _static_shell(self.secret_shell)
        mounts.append(Mount(SECRET_SHELL_TARGET, str(shell), type="bind", read_only=True))
        mounts.append(Mount(SECRET_ENV_TARGET, resolved.env_file, type="bind", read_only=True))
        options["entrypoint"] = secret_env_entrypoint(argv)
        options["command"] = None  # argv above already holds the args
        return options

    async def _ensure_image(self, client: docker.DockerClient, image: str) -> Mapping[str, Any]:
        """Make sure the image is here; returns its config (entrypoint, cmd, ...)."""
        try:
            found = await asyncio.to_thread(client.images.get, image)
            return dict(found.attrs.get("Config") or {})
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.DockerException as error:
            raise RuntimeDriverError(
                f"docker: inspecting image {image!r} failed: {_reason(error)}"
            ) from error
        if not self.pull:
            raise RuntimeDriverError(
                f"image {image!r} is not present on this node and no registry pull was "
                "possible (pulling is disabled for this agent); build or `docker load` the "
                "image on the node first"
            )
        try:
            pulled = await asyncio.to_thread(client.images.pull, image)
        except docker.errors.DockerException as error:
            raise RuntimeDriverError(
                f"image {image!r} is not present on this node and no registry pull was "
                f"possible: {_reason(error)}"
            ) from error
        return dict(pulled.attrs.get("Config") or {})

    async def _start(self, container: Container) -> ReplicaStatus:
        """Start a created container and wait until it runs (or report how it died)."""
        try:
            await asyncio.to_thread(container.start)
        except docker.errors.APIError as error:
            # The engine refused to start it (missing executable, port taken, ...). Remove
            # it so a half-made container does not linger in list().
            with contextlib.suppress(docker.errors.DockerException):
                await asyncio.to_thread(container.remove, force=True)
            raise RuntimeDriverError(
                f"docker: starting {container.name} failed: {_reason(error)}"
            ) from error
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            if not await self._reload(container):
                raise RuntimeDriverError(f"docker: {container.name} vanished while starting")
            state = container.status
            now = loop.time()
            if state in ("exited", "dead"):
                logs = await self._tail_text(container, _FAILURE_LOG_LINES)
                message = "exited right after start"
                if logs:
                    message += f"; last log lines:\n{logs}"
                return self._status(container, message)
            if state == "running" and now - started >= self.settle_seconds:
                return self._status(container)
            if state != "running" and now - started > self.start_timeout:
                raise RuntimeDriverError(
                    f"docker: {container.name} did not start within {self.start_timeout:g}s "
                    f"(state {state!r})"
                )
            await asyncio.sleep(_POLL_INTERVAL)

    async def stop(self, replica_id: str, grace_seconds: float = 10.0) -> ReplicaStatus | None:
        """Stop with the grace period, then remove.

        The returned status is the container's final state, except that a replica we
        stopped on request is reported Stopped even though SIGTERM/SIGKILL made its exit
        code non-zero: being stopped is not a failure.
        """
        async with self._lock(replica_id):
            container = await self._find_owned(replica_id)
            if container is None:
                return None
            was_running = container.status in ("running", "restarting", "paused")
            if was_running:
                try:
                    await asyncio.to_thread(container.stop, timeout=math.ceil(grace_seconds))
                except docker.errors.NotFound:
                    return None
                except docker.errors.DockerException as error:
                    raise RuntimeDriverError(
                        f"docker: stopping {container.name} failed: {_reason(error)}"
                    ) from error
                if not await self._reload(container):
                    return None
            status = self._status(container)
            if was_running and status.phase is ReplicaPhase.FAILED:
                status = dataclasses.replace(
                    status,
                    phase=ReplicaPhase.STOPPED,
                    message=f"stopped on request; {status.message}",
                )
            await self._remove(container, grace_seconds)
            return status

    async def list(self) -> list[ReplicaStatus]:
        """Every managed container of this node, running or not."""
        client = await self._engine()
        labels = [f"{LABEL_MANAGED}=true"]
        if self.node_id:
            labels.append(f"{LABEL_NODE}={self.node_id}")
        containers = await self._call(
            "listing containers",
            client.containers.list,
            all=True,
            filters={"label": labels},
            ignore_removed=True,
        )
        return [self._status(container) for container in containers]

    async def logs(
        self, replica_id: str, *, follow: bool = False, tail: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream the container's stdout+stderr.

        Follow mode reads the engine's stream in a thread feeding a bounded queue; when the
        consumer stops (break, cancel, ``aclose``) the stream's socket is shut down, which
        ends the thread's blocking read, so no thread outlives its consumer.
        """
        container = await self._find_owned(replica_id)
        if container is None:
            raise RuntimeDriverError(f"docker: no replica {replica_id} on node {self.node_id}")
        tail_arg: int | str = "all" if tail is None else tail
        if not follow:
            data = await self._call(
                f"reading logs of {container.name}",
                container.logs,
                stdout=True,
                stderr=True,
                tail=tail_arg,
                stream=False,
            )
            if data:
                yield bytes(data)
            return
        stream = await self._call(
            f"following logs of {container.name}",
            container.logs,
            stdout=True,
            stderr=True,
            tail=tail_arg,
            stream=True,
            follow=True,
        )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(_LOG_QUEUE_SIZE)
        stopped = threading.Event()

        def deliver(item: bytes | BaseException | None) -> bool:
            """Hand one item to the consumer; False once nobody listens any more."""
            if stopped.is_set():
                return False
            try:
                asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
            except Exception:
                return False  # loop closed or put cancelled: the consumer is gone
            return not stopped.is_set()

        def pump() -> None:
            try:
                for chunk in stream:
                    if not deliver(bytes(chunk)):
                        return
            except Exception as error:
                deliver(error)
                return
            deliver(None)

        thread = threading.Thread(target=pump, name=f"logs-{replica_id}", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise RuntimeDriverError(
                        f"docker: following logs of {container.name} failed: {_reason(item)}"
                    ) from item
                yield item
        finally:
            stopped.set()
            with contextlib.suppress(Exception):
                stream.close()
            # Unblock a put the thread may be waiting on; it then sees `stopped` and exits.
            while not queue.empty():
                queue.get_nowait()

    # -- probes (agent/probes.py) --------------------------------------------------------

    def probe_target(self, spec: ReplicaSpec) -> _DockerProbeTarget:
        return _DockerProbeTarget(self, spec.replica_id)

    async def kill(self, replica_id: str, grace_seconds: float) -> None:
        """Stop the container but keep it: it shows as exited (Failed), so the supervisor
        restarts it per policy and counts it like any crash (a failed liveness probe)."""
        async with self._lock(replica_id):
            container = await self._find_owned(replica_id)
            if container is None or container.status not in ("running", "restarting", "paused"):
                return
            try:
                await asyncio.to_thread(container.stop, timeout=math.ceil(grace_seconds))
            except docker.errors.NotFound:
                return  # gone already: the supervisor sees it missing and restarts it
            except docker.errors.DockerException as error:
                raise RuntimeDriverError(
                    f"docker: stopping {container.name} failed: {_reason(error)}"
                ) from error

    async def close(self) -> None:
        """Drop the engine connection; containers keep running (the data plane outlives us)."""
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)


class _DockerProbeTarget:
    """Probes into one container: ``exec`` through the engine (``exec_run``); HTTP and TCP
    probes go to the container's address on its network, or, for a container without one,
    to its published host port. The container address comes first because Docker's
    userland proxy accepts connections on a published port even when nothing listens
    behind it, which would make every TCP probe pass."""

    def __init__(self, driver: DockerDriver, replica_id: str) -> None:
        self._driver = driver
        self._replica_id = replica_id
        self._addresses: dict[int, tuple[str, int]] = {}
        #: A hung ``exec_run`` cannot be cancelled (its thread keeps waiting); never pile up.
        self._running: asyncio.Future[Any] | None = None

    async def _container(self) -> Container:
        container = await self._driver._find_owned(self._replica_id)
        if container is None:
            raise RuntimeDriverError(f"docker: no container for replica {self._replica_id}")
        return container

    async def address(self, port: int) -> tuple[str, int]:
        known = self._addresses.get(port)
        if known is not None:
            return known
        container = await self._container()
        settings: dict[str, Any] = container.attrs.get("NetworkSettings") or {}
        networks: dict[str, Any] = settings.get("Networks") or {}
        ips = [n["IPAddress"] for n in networks.values() if n.get("IPAddress")]
        bindings = (settings.get("Ports") or {}).get(f"{port}/tcp") or []
        mode = (container.attrs.get("HostConfig") or {}).get("NetworkMode", "")
        if ips:
            found = (str(ips[0]), port)
        elif bindings:
            host = bindings[0].get("HostIp") or "127.0.0.1"
            found = (
                "127.0.0.1" if host in ("0.0.0.0", "::") else host,
                int(bindings[0]["HostPort"]),
            )
        elif mode == "host":
            found = ("127.0.0.1", port)
        else:
            raise RuntimeDriverError(
                f"docker: container {container.name} has no network address to probe"
            )
        self._addresses[port] = found
        return found

    async def exec(self, argv: Sequence[str], timeout: float) -> ProbeResult:
        if self._running is not None and not self._running.done():
            return ProbeResult(False, f"exec {' '.join(argv)!r}: previous probe still running")
        container = await self._container()
        self._running = asyncio.ensure_future(
            asyncio.to_thread(container.exec_run, list(argv), stdout=True, stderr=True)
        )
        try:
            result = await asyncio.wait_for(asyncio.shield(self._running), timeout)
        except TimeoutError:
            return ProbeResult(False, f"exec {' '.join(argv)!r}: timed out after {timeout:g}s")
        except docker.errors.DockerException as error:
            return ProbeResult(False, f"exec {' '.join(argv)!r}: {_reason(error)}")
        return exec_outcome(argv, int(result.exit_code or 0), bytes(result.output or b""))
