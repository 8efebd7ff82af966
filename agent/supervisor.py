"""Agent autonomy: keep running what the control plane asked for, coordinator or not.

The agent records every replica it was told to run (``desired.json`` in its state dir,
so a restarted agent still knows) and restarts replicas that exited according to their
restart policy, with exponential backoff and a retry cap, like a kubelet would. This is
what keeps the data plane serving through a coordinator outage.

Every crash it restarts (and the last one, after which it gives up) is counted and
reported at once: ``on_crash`` wakes the heartbeat, whose next beat carries the count, the
exit code and the reason, so the workload can move a crash-looping replica to another
node (``spec.reschedule``) long before the local retry cap is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent.probes import Probeable, Prober
from agent.runtime.base import (
    PortMapping,
    ProbeSpec,
    ReplicaPhase,
    ReplicaSpec,
    ReplicaStatus,
    RuntimeDriver,
    SecretEnvVar,
    SecretFile,
    SecretKeyRef,
    SecretVolume,
)
from cloudless.errors import CloudlessError
from cloudless.pki import write_private_file

log = structlog.get_logger("cloudless.agent.supervisor")

DESIRED_FILE = "desired.json"
BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
#: Consecutive failed restarts after which the agent gives up (the control plane decides).
RETRY_CAP = 10
#: A replica that ran this long is healthy again: its backoff starts over.
STABLE_AFTER = 30.0

#: Resolves a spec's secrets right before a (re)start: ``(spec, runtime) -> spec``.
Prepare = Callable[[ReplicaSpec, str], Awaitable[ReplicaSpec]]


def spec_to_record(spec: ReplicaSpec) -> dict[str, Any]:
    """The spec as stored in ``desired.json``: secret references, never their values."""
    record = asdict(spec.without_secret_values())
    record.pop("resolved", None)
    return record


def _probe_from_record(raw: dict[str, Any] | None) -> ProbeSpec | None:
    if raw is None:
        return None
    raw = dict(raw)
    raw["command"] = tuple(raw.get("command", ()))
    raw["headers"] = tuple((name, value) for name, value in raw.get("headers", ()))
    return ProbeSpec(**raw)


def spec_from_record(raw: dict[str, Any]) -> ReplicaSpec:
    raw = dict(raw)
    raw.pop("resolved", None)
    for kind in ("liveness_probe", "readiness_probe", "startup_probe"):
        raw[kind] = _probe_from_record(raw.get(kind))
    raw["ports"] = tuple(PortMapping(**p) for p in raw.get("ports", ()))
    raw["secret_env"] = tuple(
        SecretEnvVar(e["name"], SecretKeyRef(**e["ref"])) for e in raw.get("secret_env", ())
    )
    raw["secret_volumes"] = tuple(
        SecretVolume(**{**v, "files": tuple(SecretFile(**f) for f in v.get("files", ()))})
        for v in raw.get("secret_volumes", ())
    )
    return ReplicaSpec(**raw)


@dataclass
class Desired:
    runtime: str
    restart_policy: str  # Always | OnFailure | Never
    spec: ReplicaSpec
    failures: int = 0
    next_try: float = 0.0
    last_start: float = 0.0
    restarts: int = 0
    gave_up: bool = False
    #: Why the agent last restarted it (a failed liveness probe, an exit code, ...).
    restart_reason: str = ""
    #: A probe asked for a restart: the reason, and which run of the replica it killed.
    kill_reason: str = ""
    killed: str = ""
    #: Crashes counted since the replica was wanted (kept in ``desired.json``), and the
    #: latest one's exit code, reason and wall-clock time.
    crashes: int = 0
    crash_exit_code: int | None = None
    crash_reason: str = ""
    crashed_at: float = 0.0


@dataclass(frozen=True)
class CrashReport:
    """What the heartbeat reports of a replica's crashes."""

    crashes: int
    exit_code: int | None
    reason: str
    at: float


def instance_key(status: ReplicaStatus) -> str:
    """Identifies one run of a replica: a restart gets a new container id or pid."""
    return f"{status.runtime_id}@{status.started_at}"


@dataclass
class _Probing:
    key: str
    prober: Prober
    task: asyncio.Task[None]


@dataclass
class Supervisor:
    state_dir: Path
    drivers: Mapping[str, RuntimeDriver]
    interval: float = 1.0
    #: Secret resolution before each restart (a restarted agent has an empty cache).
    prepare: Prepare | None = None
    _desired: dict[str, Desired] = field(default_factory=dict)
    _observed: list[tuple[str, ReplicaStatus]] | None = None
    _observed_at: float = 0.0
    #: SIGTERM grace when a failed liveness/startup probe stops a replica.
    kill_grace: float = 5.0
    _probing: dict[str, _Probing] = field(default_factory=dict)
    #: Called after each counted crash (the agent wakes its heartbeat to report it).
    on_crash: Callable[[], None] | None = None

    # ---- registry (called by the AgentService handlers)

    def want(
        self,
        runtime: str,
        restart_policy: str,
        spec: ReplicaSpec,
        status: ReplicaStatus | None = None,
    ) -> None:
        """Record a replica to keep running; with its ``status``, probing starts at once."""
        # References only: resolved values must not outlive their cache TTL in here.
        self._desired[spec.replica_id] = Desired(
            runtime,
            restart_policy or "Always",
            spec.without_secret_values(),
            last_start=time.monotonic(),
        )
        self._save()
        self._stop_probing(spec.replica_id)  # a new spec is probed with its own probes
        if status is not None:
            self._sync_probing(spec.replica_id, status)

    def specs(self) -> list[ReplicaSpec]:
        """Every desired replica's spec (references only)."""
        return [d.spec for d in self._desired.values()]

    def forget(self, replica_id: str) -> None:
        self._stop_probing(replica_id)
        if self._desired.pop(replica_id, None) is not None:
            self._save()

    def kill_reason(self, replica_id: str) -> str:
        d = self._desired.get(replica_id)
        return d.kill_reason if d else ""

    def epoch(self, replica_id: str) -> int:
        d = self._desired.get(replica_id)
        return d.spec.epoch if d else 0

    def restart_reason(self, replica_id: str) -> str:
        d = self._desired.get(replica_id)
        return d.restart_reason if d else ""

    def readiness(self, status: ReplicaStatus) -> tuple[bool, str, bool]:
        """``(ready, why not, gated)`` of an observed replica.

        Ready means Running and passing its startup and readiness probes. A replica without
        those probes is ready once Running; ``gated`` says it has them, so the control plane
        waits for a ready report instead of assuming readiness from Running.
        """
        d = self._desired.get(status.replica_id)
        gated = d is not None and d.spec.readiness_gated
        if status.phase != ReplicaPhase.RUNNING:
            return False, f"replica is {status.phase.value}", gated
        probing = self._probing.get(status.replica_id)
        if d is None or not d.spec.has_probes:
            return True, "", False
        if d.killed == instance_key(status):
            return False, f"restarting: {d.kill_reason}", gated
        if probing is None or probing.key != instance_key(status):
            return (not gated), ("" if not gated else "waiting for the first probe"), gated
        return probing.prober.state.ready, probing.prober.state.ready_message, gated

    # ---- probes

    def _sync_probing(self, replica_id: str, status: ReplicaStatus | None) -> None:
        """Keep exactly one prober per running replica with probes, for its current run."""
        d = self._desired.get(replica_id)
        probing = self._probing.get(replica_id)
        running = status is not None and status.phase == ReplicaPhase.RUNNING
        if d is None or not d.spec.has_probes or not running or status is None:
            self._stop_probing(replica_id)
            return
        key = instance_key(status)
        if (probing is not None and probing.key == key) or d.killed == key:
            return
        driver = self.drivers.get(d.runtime)
        if not isinstance(driver, Probeable):
            return
        self._stop_probing(replica_id)
        prober = Prober(
            replica_id,
            d.spec,
            driver.probe_target(d.spec),
            lambda reason: self._probe_restart(replica_id, key, reason),
        )
        task = asyncio.get_running_loop().create_task(prober.run(), name=f"probe-{replica_id}")
        self._probing[replica_id] = _Probing(key, prober, task)

    def _stop_probing(self, replica_id: str) -> None:
        probing = self._probing.pop(replica_id, None)
        if probing is not None:
            probing.task.cancel()

    async def _probe_restart(self, replica_id: str, key: str, reason: str) -> None:
        """Liveness (or startup) gave up: stop this run; the loop restarts it per policy,
        with backoff, and counts it like any crash."""
        d = self._desired.get(replica_id)
        driver = self.drivers.get(d.runtime) if d else None
        if d is None or not isinstance(driver, Probeable):
            return
        d.kill_reason, d.killed = reason, key
        log.warning("replica.liveness_failed", replica=replica_id, reason=reason)
        try:
            await driver.kill(replica_id, self.kill_grace)
        except CloudlessError as err:
            log.warning("replica.kill_failed", replica=replica_id, error=str(err))
            d.killed = ""  # still running: the next tick probes it again (and retries)
        self._observed = None  # the next look must see it exited

    def is_terminal(self, status: ReplicaStatus) -> bool:
        """Whether an exited replica stays down: the control plane must decide."""
        if status.phase not in (ReplicaPhase.FAILED, ReplicaPhase.STOPPED):
            return False
        d = self._desired.get(status.replica_id)
        if d is None:
            return False  # not ours to judge (being stopped, or unknown)
        if d.gave_up or d.restart_policy == "Never":
            return True
        return d.restart_policy == "OnFailure" and status.phase == ReplicaPhase.STOPPED

    def restarts(self, replica_id: str) -> int:
        d = self._desired.get(replica_id)
        return d.restarts if d else 0

    def crash_report(self, replica_id: str) -> CrashReport | None:
        """The replica's crashes so far (None: none, or not ours)."""
        d = self._desired.get(replica_id)
        if d is None or not d.crashes:
            return None
        return CrashReport(d.crashes, d.crash_exit_code, d.crash_reason, d.crashed_at)

    # ---- persistence

    def load(self) -> None:
        path = self.state_dir / DESIRED_FILE
        if not path.exists():
            return
        for item in json.loads(path.read_text()):
            spec = spec_from_record(item["spec"])
            self._desired[spec.replica_id] = Desired(
                item["runtime"],
                item["restart_policy"],
                spec,
                # A restarted agent keeps counting where it left off, so the control plane
                # (which deduplicates reports by count) sees every new crash as new.
                crashes=int(item.get("crashes", 0)),
            )

    def _save(self) -> None:
        data = [
            {
                "runtime": d.runtime,
                "restart_policy": d.restart_policy,
                "spec": spec_to_record(d.spec),
                "crashes": d.crashes,
            }
            for d in self._desired.values()
        ]
        # Specs may carry environment values: private to the agent's user.
        write_private_file(self.state_dir / DESIRED_FILE, json.dumps(data).encode())

    # ---- the loop

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                with contextlib.suppress(Exception):
                    await self.tick(time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.interval)
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop every prober (the replicas keep running)."""
        tasks = [p.task for p in self._probing.values()]
        for rid in list(self._probing):
            self._stop_probing(rid)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def observe(self, max_age: float = 0.0) -> list[tuple[str, ReplicaStatus]]:
        """(runtime, status) of every replica, listed at most once per ``max_age``.

        The supervisor and the heartbeat both need this every second; sharing one listing
        halves the calls into the container engine.
        """
        now = time.monotonic()
        if self._observed is not None and now - self._observed_at <= max_age:
            return self._observed
        observed = [
            (name, status)
            for name, runtime in self.drivers.items()
            for status in await runtime.list()
        ]
        self._observed, self._observed_at = observed, now
        return observed

    async def tick(self, now: float) -> None:
        """One pass: restart what exited and should run again (due by backoff)."""
        seen = {status.replica_id: status for _name, status in await self.observe()}
        for rid, d in list(self._desired.items()):
            status = seen.get(rid)
            self._sync_probing(rid, status)
            if status is not None and status.phase in (ReplicaPhase.RUNNING, ReplicaPhase.STARTING):
                if status.started_at and time.time() - status.started_at > STABLE_AFTER:
                    d.failures, d.last_start = 0, 0.0
                continue
            # A probe's kill is a failure even if the process exited 0 on SIGTERM.
            failed = status is None or status.phase == ReplicaPhase.FAILED or bool(d.kill_reason)
            if d.restart_policy == "Never" or (d.restart_policy == "OnFailure" and not failed):
                continue
            if d.gave_up:
                continue
            if d.last_start:  # it exited since its last start: count it once
                quick = now - d.last_start < STABLE_AFTER
                d.last_start = 0.0
                d.failures = d.failures + 1 if quick else 0
                d.next_try = now + _backoff(d.failures)
                self._crashed(d, status)
                if d.failures >= RETRY_CAP:
                    d.gave_up = True
                    log.warning("replica.gave_up", replica=rid, failures=d.failures)
                    continue
            if now < d.next_try:
                continue
            driver = self.drivers.get(d.runtime)
            if driver is None:
                continue
            try:
                spec = d.spec
                if spec.uses_secrets and self.prepare is not None:
                    spec = await self.prepare(spec, d.runtime)
                restarted = await driver.run(spec)
            except CloudlessError as err:  # driver errors and secret delivery errors
                restarted = None
                log.warning("replica.restart_failed", replica=rid, error=str(err))
            d.restarts += 1
            d.last_start = now
            d.restart_reason = d.kill_reason or (
                status.message if status is not None else "the replica disappeared"
            )
            d.kill_reason = ""
            if restarted is not None and restarted.phase == ReplicaPhase.RUNNING:
                log.info(
                    "replica.restarted", replica=rid, restarts=d.restarts, reason=d.restart_reason
                )
                self._sync_probing(rid, restarted)

    def _crashed(self, d: Desired, status: ReplicaStatus | None) -> None:
        """Count a crash and have it reported now (the count survives an agent restart)."""
        d.crashes += 1
        d.crash_exit_code = status.exit_code if status is not None else None
        reason = status.message if status is not None else "the replica disappeared"
        d.crash_reason = f"{d.kill_reason}; {reason}" if d.kill_reason else reason
        d.crashed_at = time.time()
        log.info(
            "replica.crashed",
            replica=d.spec.replica_id,
            crashes=d.crashes,
            exit_code=d.crash_exit_code,
        )
        with contextlib.suppress(OSError):  # a full disk must not stop the restarts
            self._save()
        if self.on_crash is not None:
            self.on_crash()


def _backoff(failures: int) -> float:
    """No wait for a first crash, then 1 s doubling up to the cap (a crash loop)."""
    return 0.0 if failures <= 1 else min(BACKOFF_MAX, BACKOFF_START * 2 ** (failures - 2))
