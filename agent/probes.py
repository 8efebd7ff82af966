"""Liveness, readiness and startup probes, run by the agent for both runtimes.

The agent probes replicas itself (not Docker's HEALTHCHECK) so the docker and exec runtimes
behave the same and every verdict passes through the supervisor, which owns restarts.

Two halves:

* :class:`ProbeState` is pure: it counts consecutive successes and failures against the
  thresholds, honours the initial delay and lets a startup probe gate the other two. The
  clock is passed in, so it is tested directly (and with hypothesis) without I/O.
* :class:`Prober` is the I/O loop for one running replica: it asks the state what is due,
  runs those checks through a :class:`ProbeTarget` (exec in the replica, HTTP GET, TCP
  connect), feeds the results back and calls ``on_restart`` once liveness (or startup)
  gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import structlog

from agent.runtime.base import ProbeResult, ProbeSpec, ReplicaSpec, exec_outcome

__all__ = [
    "ProbeKind",
    "ProbeResult",
    "ProbeState",
    "ProbeTarget",
    "Probeable",
    "Prober",
    "exec_outcome",
    "http_get",
    "run_probe",
    "tcp_connect",
]

log = structlog.get_logger("cloudless.agent.probes")


class ProbeKind(enum.StrEnum):
    STARTUP = "startup"
    LIVENESS = "liveness"
    READINESS = "readiness"


@dataclass
class _Track:
    """Counters of one probe; ``passing`` is None until a threshold was first reached."""

    spec: ProbeSpec
    next_at: float
    successes: int = 0
    failures: int = 0
    passing: bool | None = None
    message: str = ""


@dataclass
class ProbeState:
    """The probe verdicts of one run of a replica (a restart starts a new state).

    Kubernetes semantics: a startup probe, while it has not succeeded, holds off liveness
    and readiness; liveness is assumed passing until ``failureThreshold`` consecutive
    failures; readiness starts *not* ready and needs ``successThreshold`` consecutive
    successes. ``initialDelay`` counts from ``started`` (the replica's start).
    """

    started: float
    liveness: ProbeSpec | None = None
    readiness: ProbeSpec | None = None
    startup: ProbeSpec | None = None
    tracks: dict[ProbeKind, _Track] = field(init=False, default_factory=dict)
    #: Set once liveness or startup gave up: the replica must be restarted.
    restart_reason: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        for kind, spec in (
            (ProbeKind.STARTUP, self.startup),
            (ProbeKind.LIVENESS, self.liveness),
            (ProbeKind.READINESS, self.readiness),
        ):
            if spec is not None:
                self.tracks[kind] = _Track(spec, self.started + spec.initial_delay)

    @property
    def startup_done(self) -> bool:
        track = self.tracks.get(ProbeKind.STARTUP)
        return track is None or track.passing is True

    def _active(self) -> list[ProbeKind]:
        if self.restart_reason is not None:
            return []
        if not self.startup_done:
            return [ProbeKind.STARTUP]
        return [k for k in (ProbeKind.LIVENESS, ProbeKind.READINESS) if k in self.tracks]

    def due(self, now: float) -> list[ProbeKind]:
        """The probes to run now."""
        return [k for k in self._active() if self.tracks[k].next_at <= now]

    def next_due(self) -> float | None:
        """When the next probe is due; None once nothing will run any more."""
        times = [self.tracks[k].next_at for k in self._active()]
        return min(times) if times else None

    def record(self, kind: ProbeKind, result: ProbeResult, now: float) -> str | None:
        """Count one result; returns the restart reason once the replica must restart."""
        track = self.tracks[kind]
        if self.restart_reason is not None or kind not in self._active():
            return self.restart_reason  # a late result of a probe no longer running
        track.next_at = now + track.spec.period
        track.message = result.message
        if result.ok:
            track.successes, track.failures = track.successes + 1, 0
            if track.successes >= track.spec.success_threshold:
                track.passing = True
        else:
            track.failures, track.successes = track.failures + 1, 0
            if track.failures >= track.spec.failure_threshold:
                track.passing = False
        if kind is ProbeKind.STARTUP and track.passing is True:
            for other in (ProbeKind.LIVENESS, ProbeKind.READINESS):
                if other in self.tracks:  # their initial delay may have passed meanwhile
                    self.tracks[other].next_at = max(self.tracks[other].next_at, now)
        if kind in (ProbeKind.STARTUP, ProbeKind.LIVENESS) and track.passing is False:
            self.restart_reason = (
                f"{kind.value} probe failed: {result.message} "
                f"({track.failures} consecutive failures)"
            )
        return self.restart_reason

    @property
    def ready(self) -> bool:
        """Passing startup and readiness (a replica without a readiness probe is ready)."""
        if self.restart_reason is not None or not self.startup_done:
            return False
        track = self.tracks.get(ProbeKind.READINESS)
        return track is None or track.passing is True

    @property
    def ready_message(self) -> str:
        """Why the replica is not ready; empty when it is."""
        if self.restart_reason is not None:
            return f"restarting: {self.restart_reason}"
        for kind in (ProbeKind.STARTUP, ProbeKind.READINESS):
            track = self.tracks.get(kind)
            if track is None or track.passing is True:
                continue
            if track.failures:
                return f"{kind.value} probe failed: {track.message}"
            return f"waiting for the {kind.value} probe to succeed"
        return ""


# ---------------------------------------------------------------------------------- I/O


@runtime_checkable
class ProbeTarget(Protocol):
    """How a runtime lets the agent reach into one replica."""

    async def address(self, port: int) -> tuple[str, int]:
        """Where an HTTP or TCP probe for container port ``port`` connects."""

    async def exec(self, argv: Sequence[str], timeout: float) -> ProbeResult:
        """Run ``argv`` inside the replica; exit code 0 is a success."""


@runtime_checkable
class Probeable(Protocol):
    """A runtime driver that supports probes (both built-in drivers do)."""

    def probe_target(self, spec: ReplicaSpec) -> ProbeTarget: ...

    async def kill(self, replica_id: str, grace_seconds: float) -> None:
        """Stop the replica's process but keep it listed (it shows as exited)."""


async def _close(writer: asyncio.StreamWriter | None) -> None:
    """Close a probe connection without letting a peer that never answers (a TLS
    close_notify, say) hold the prober up."""
    if writer is None:
        return
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), timeout=1.0)


async def http_get(host: str, port: int, probe: ProbeSpec, timeout: float) -> ProbeResult:
    """One HTTP/1.1 GET; 200-399 is a success. HTTPS certificates are not verified."""
    url = f"{probe.scheme.lower()}://{host}:{port}{probe.path}"
    context: ssl.SSLContext | None = None
    if probe.scheme == "HTTPS":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    headers = {"Host": f"{host}:{port}", "User-Agent": "cloudless-probe/1", "Accept": "*/*"}
    for name, value in probe.headers:
        headers = {k: v for k, v in headers.items() if k.lower() != name.lower()}
        headers[name] = value
    request = f"GET {probe.path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    request += "Connection: close\r\n\r\n"
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            writer.write(request.encode("latin-1"))
            await writer.drain()
            line = await reader.readline()
    except TimeoutError:
        return ProbeResult(False, f"GET {url}: timed out after {timeout:g}s")
    except (OSError, ssl.SSLError) as error:
        return ProbeResult(False, f"GET {url}: {error.strerror or error}")
    finally:
        await _close(writer)
    parts = line.decode("latin-1").split(maxsplit=2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return ProbeResult(False, f"GET {url}: not an HTTP response")
    status = int(parts[1])
    if 200 <= status < 400:
        return ProbeResult(True)
    return ProbeResult(False, f"GET {url}: HTTP status {status}")


async def tcp_connect(host: str, port: int, timeout: float) -> ProbeResult:
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return ProbeResult(False, f"TCP {host}:{port}: timed out after {timeout:g}s")
    except OSError as error:
        return ProbeResult(False, f"TCP {host}:{port}: {error.strerror or error}")
    finally:
        await _close(writer)
    return ProbeResult(True)


async def run_probe(target: ProbeTarget, probe: ProbeSpec) -> ProbeResult:
    """Run one check; never raises (an error is a failed probe with the reason)."""
    try:
        if probe.action == "exec":
            return await target.exec(probe.command, probe.timeout)
        host, port = await target.address(probe.port)
        if probe.action == "http":
            return await http_get(host, port, probe, probe.timeout)
        return await tcp_connect(host, port, probe.timeout)
    except asyncio.CancelledError:
        raise
    except Exception as error:  # an engine error must fail the probe, not kill the prober
        return ProbeResult(False, f"{probe.action} probe error: {error}")


#: Called with the reason once liveness/startup decided the replica must restart.
OnRestart = Callable[[str], Awaitable[None]]


class Prober:
    """Probes one run of one replica until cancelled or until it asks for a restart."""

    def __init__(
        self,
        replica_id: str,
        spec: ReplicaSpec,
        target: ProbeTarget,
        on_restart: OnRestart,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.replica_id = replica_id
        self._target = target
        self._on_restart = on_restart
        self._clock = clock
        self.state = ProbeState(
            clock(),
            liveness=spec.liveness_probe,
            readiness=spec.readiness_probe,
            startup=spec.startup_probe,
        )

    async def run(self) -> None:
        while True:
            due = self.state.due(self._clock())
            if due:
                results = await asyncio.gather(
                    *(run_probe(self._target, self.state.tracks[k].spec) for k in due)
                )
                for kind, result in zip(due, results, strict=True):
                    before = self.state.ready
                    reason = self.state.record(kind, result, self._clock())
                    if self.state.ready != before:
                        log.info(
                            "replica.readiness",
                            replica=self.replica_id,
                            ready=self.state.ready,
                            message=self.state.ready_message,
                        )
                    if reason is not None:
                        log.warning("replica.probe_failed", replica=self.replica_id, reason=reason)
                        await self._on_restart(reason)
                        return
            wake = self.state.next_due()
            if wake is None:
                return
            await asyncio.sleep(max(0.0, wake - self._clock()))
