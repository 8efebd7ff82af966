"""``cloudless-agent``: enroll once, then serve AgentService over mTLS until stopped.

One agent runs per device. Capacity defaults to what psutil sees; flags override it so
one machine can host several simulated devices of different shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import psutil
import structlog
import typer

from agent.enroll import NodeFacts, enroll, is_enrolled, load_agent_gateways, split_addresses
from agent.heartbeat import HeartbeatClient
from agent.runtime import detect_drivers
from agent.runtime.base import RuntimeDriver
from agent.runtime.docker import DEFAULT_SECRET_SHELL
from agent.secretfs import DEFAULT_SECRETS_ROOT, SecretFiles
from agent.secrets import CoordinatorSecrets, SecretDelivery, SecretStore
from agent.server import AGENT_VERSION, AgentServicer
from agent.supervisor import Supervisor
from cloudless import config, tls
from cloudless.api import agent_pb2_grpc, gateway_pb2
from cloudless.errors import CloudlessError
from cloudless.grpc_options import (
    GrpcHandshakeTimeout,
    GrpcIdleTimeout,
    GrpcMaxConnections,
    GrpcMaxStreams,
)
from cloudless.logs import configure_logging
from cloudless.process import raise_open_files_limit, stop_on_signals
from cloudless.quantity import parse_bytes, parse_cpu
from cloudless.tls import DEFAULT_GRPC_LIMITS, GrpcLimits, TLSMaterial, server_credentials

log = structlog.get_logger("cloudless.agent")
app = typer.Typer(add_completion=False, help=__doc__)


def parse_labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"label {item!r} must look like key=value")
        labels[key] = value
    return labels


async def serve(
    *,
    name: str,
    zone: str,
    listen: str,
    advertise: str,
    gateway: str | Sequence[str],
    token: str | None,
    state_dir: Path,
    cpu_millis: int,
    memory_bytes: int,
    storage_bytes: int,
    labels: dict[str, str],
    runtimes: list[str] | None,
    docker_url: str | None,
    ready_file: Path | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    heartbeat_interval: float = 1.0,
    agent_gateway: str | Sequence[str] | None = None,
    on_started: Callable[[HeartbeatClient], None] | None = None,
    secrets_dir: Path = DEFAULT_SECRETS_ROOT,
    secret_shell: Path = DEFAULT_SECRET_SHELL,
    grpc_limits: GrpcLimits = DEFAULT_GRPC_LIMITS,
) -> None:
    """Run the agent until ``stop`` is set (or forever).

    ``gateway``: the enrollment endpoints, one per coordinator (``a,b`` or a list);
    ``agent_gateway``: their mTLS heartbeat endpoints, if not the ones ``node.json``
    recorded at enrollment.
    """
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Engine calls are blocking and I/O bound: the default pool (cores + 4 threads) would
    # serialize a burst of replica starts on small devices.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=32, thread_name_prefix="agent-io")
    )
    drivers = await detect_drivers(
        name, state_dir, docker_base_url=docker_url, secret_shell=secret_shell
    )
    if runtimes is not None:
        drivers = {k: v for k, v in drivers.items() if k in runtimes}
    if is_enrolled(state_dir):
        material = TLSMaterial.load(state_dir)
        log.info("agent.enrolled_before", node=name)
    else:
        if not token:
            raise CloudlessError(
                f"node {name} is not enrolled yet: pass --token (mint one with "
                "`cloudlessctl token create`)"
            )
        facts = NodeFacts(
            name=name,
            zone=zone,
            address=advertise,
            cpu_millis=cpu_millis,
            memory_bytes=memory_bytes,
            storage_bytes=storage_bytes,
            labels=labels,
            runtimes=tuple(sorted(drivers)),
            agent_version=AGENT_VERSION,
        )
        material = await enroll(state_dir, gateway, token, facts)
        log.info("agent.enrolled", node=name, gateway=gateway)
    identity = material.identity
    coordinators = (
        split_addresses(agent_gateway) or load_agent_gateways(state_dir) or split_addresses(gateway)
    )
    # Secrets come from any of the coordinators, failing over as the heartbeat does.
    coordinator_secrets = CoordinatorSecrets.connect(coordinators, material)
    secrets = SecretDelivery(
        SecretStore(coordinator_secrets), SecretFiles(secrets_dir, identity.name)
    )
    supervisor = Supervisor(state_dir, drivers, prepare=secrets.prepare)
    supervisor.load()
    await _adopt_secret_files(secrets, supervisor, drivers)
    server = tls.server(grpc_limits)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(
        AgentServicer(identity.name, identity.cluster, drivers, supervisor, secrets), server
    )
    server.add_secure_port(listen, server_credentials(material, require_client_auth=True))
    await server.start()
    log.info("agent.serving", node=identity.name, listen=listen, runtimes=sorted(drivers))
    stop = stop or asyncio.Event()
    heartbeat = HeartbeatClient(
        coordinators,
        material,
        identity.name,
        drivers,
        interval=heartbeat_interval,
        supervisor=supervisor,
        facts=gateway_pb2.NodeFacts(
            zone=zone,
            labels=labels,
            capacity=gateway_pb2.Capacity(
                cpu_millis=cpu_millis, memory_bytes=memory_bytes, storage_bytes=storage_bytes
            ),
            address=advertise,
            runtimes=sorted(drivers),
            agent_version=AGENT_VERSION,
        ),
        secrets=secrets,
    )
    supervisor.on_crash = heartbeat.wake  # every crash is reported with the next beat, now
    # Secrets calls go where the stream is: that coordinator is known to answer.
    coordinator_secrets.follow(heartbeat.connected_gateway)
    beating = asyncio.create_task(heartbeat.run(stop), name="heartbeat")
    supervising = asyncio.create_task(supervisor.run(stop), name="supervisor")
    if ready_file is not None:
        ready_file.write_text(identity.name)
    if on_started is not None:
        on_started(heartbeat)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        task = asyncio.current_task()
        supervising.cancel()
        if task is not None and task.cancelling():
            # Killed (a test's stand-in for a crash): no goodbye, the stream just breaks.
            beating.cancel()
            await asyncio.gather(beating, supervising, return_exceptions=True)
            await server.stop(grace=None)
        else:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(beating, timeout=5)  # sends the closing beat
            await server.stop(grace=2)
        for driver in drivers.values():
            await driver.close()
        await secrets.store.close()


async def _adopt_secret_files(
    secrets: SecretDelivery, supervisor: Supervisor, drivers: Mapping[str, RuntimeDriver]
) -> None:
    """After a restart: keep refreshing files of replicas that still run or are wanted,
    and remove those of replicas that are gone (their containers would be, too)."""
    secrets.adopt(supervisor.specs())
    keep = {spec.replica_id for spec in supervisor.specs()}
    for driver in drivers.values():
        with contextlib.suppress(Exception):  # an engine hiccup must not block the start
            keep.update(status.replica_id for status in await driver.list())
    removed = secrets.remove_stale(keep)
    if removed:
        log.info("secrets.stale_removed", replicas=removed)


@app.command()
def main_command(
    name: Annotated[str, typer.Option(help="Node name (DNS-1123 label); becomes the node id.")],
    listen: Annotated[str, typer.Option(help="host:port to serve AgentService on.")],
    zone: Annotated[str, typer.Option(help="Failure zone of this device.")] = "default",
    advertise: Annotated[
        str | None, typer.Option(help="host:port the coordinator dials (default: --listen).")
    ] = None,
    gateway: Annotated[
        list[str] | None,
        typer.Option(
            envvar=config.ENV_GATEWAY,
            metavar="HOST:PORT[,HOST:PORT...]",
            help="Enrollment gateway host:port; several as a,b or a repeated flag "
            "(one per coordinator): enrollment uses the first that answers, heartbeats "
            "fail over between them.",
        ),
    ] = None,
    agent_gateway: Annotated[
        list[str] | None,
        typer.Option(
            metavar="HOST:PORT[,HOST:PORT...]",
            help="mTLS heartbeat endpoints (a,b or repeated), overriding what node.json "
            "recorded at enrollment.",
        ),
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="CLOUDLESS_TOKEN", help="Enrollment token.")
    ] = None,
    token_file: Annotated[Path | None, typer.Option(help="Read the token from this file.")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="Agent state directory.")] = None,
    cpu: Annotated[str | None, typer.Option(help="CPU to offer, e.g. 2 or 1500m.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory to offer, e.g. 2Gi.")] = None,
    storage: Annotated[str | None, typer.Option(help="Storage to offer, e.g. 20Gi.")] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="Node label key=value (repeatable).")
    ] = None,
    runtime: Annotated[
        list[str] | None, typer.Option(help="Restrict runtimes (docker, exec); default: detected.")
    ] = None,
    docker_url: Annotated[str | None, typer.Option(help="Docker engine URL.")] = None,
    secrets_dir: Annotated[
        Path,
        typer.Option(
            envvar="CLOUDLESS_SECRETS_DIR",
            help="tmpfs/ramfs directory for secret files (the agent refuses any other).",
        ),
    ] = DEFAULT_SECRETS_ROOT,
    secret_shell: Annotated[
        Path,
        typer.Option(
            envvar="CLOUDLESS_SECRET_SHELL",
            help="Static busybox mounted into docker replicas to load secret env vars.",
        ),
    ] = DEFAULT_SECRET_SHELL,
    ready_file: Annotated[Path | None, typer.Option(hidden=True)] = None,
    grpc_max_connections: GrpcMaxConnections = DEFAULT_GRPC_LIMITS.max_connections,
    grpc_max_streams: GrpcMaxStreams = DEFAULT_GRPC_LIMITS.max_streams,
    grpc_handshake_timeout: GrpcHandshakeTimeout = DEFAULT_GRPC_LIMITS.handshake_timeout,
    grpc_idle_timeout: GrpcIdleTimeout = DEFAULT_GRPC_LIMITS.idle_timeout,
) -> None:
    """Enroll (first start) and serve the node agent."""
    configure_logging()
    raise_open_files_limit()  # before the listener sizes its cap from it
    try:
        grpc_limits = GrpcLimits(
            max_connections=grpc_max_connections,
            max_streams=grpc_max_streams,
            handshake_timeout=grpc_handshake_timeout,
            idle_timeout=grpc_idle_timeout,
        )
        if token_file is not None:
            token = token_file.read_text().strip()
        root = state_dir or config.agent_dir(config.state_dir(), name)
        asyncio.run(
            _run_until_signal(
                name=name,
                zone=zone,
                listen=listen,
                advertise=advertise or listen,
                gateway=split_addresses(gateway) or [config.DEFAULT_GATEWAY],
                agent_gateway=split_addresses(agent_gateway) or None,
                token=token,
                state_dir=root,
                cpu_millis=parse_cpu(cpu) if cpu else (os.cpu_count() or 1) * 1000,
                memory_bytes=parse_bytes(memory) if memory else psutil.virtual_memory().total,
                storage_bytes=parse_bytes(storage)
                if storage
                else psutil.disk_usage(str(root.parent if root.parent.exists() else "/")).free,
                labels=parse_labels(label or []),
                runtimes=runtime,
                docker_url=docker_url,
                ready_file=ready_file,
                secrets_dir=secrets_dir,
                secret_shell=secret_shell,
                grpc_limits=grpc_limits,
            )
        )
    except (CloudlessError, ValueError) as err:
        typer.echo(f"cloudless-agent: {err}", err=True)
        raise typer.Exit(1) from err


async def _run_until_signal(**kwargs: object) -> None:
    await serve(stop=stop_on_signals(), **kwargs)  # type: ignore[arg-type]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
