"""``cloudlessctl dev up|down``: the embedded stack, one command away."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from cloudless.cli import devstack
from cloudless.cli.output import console, fail, nodes_table, workloads_table
from cloudless.cli.settings import Settings
from cloudless.client import CloudlessClient
from cloudless.codec import codec_for, require_codec
from cloudless.errors import CloudlessError
from cloudless.images import BUSYBOX_TAG, build_busybox_image
from cloudless.model import NodeState
from cloudless.spec import ManifestError, load_manifest_file
from cloudless.temporal import connect
from cloudless.transit.client import embedded_transit_settings

EXEC_EXAMPLE = Path("examples/hello-exec.yaml")


def docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(version="auto", timeout=5)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


def _build_image() -> None:
    import docker

    client = docker.from_env(version="auto")
    try:
        build_busybox_image(client)
    finally:
        client.close()
    console.print(f"built image {BUSYBOX_TAG} from the host's static busybox (no registry needed)")


def dev_up(
    settings: Settings, example: Path | None, runtime: str | None, port_offset: int = 0
) -> None:
    state_dir = settings.state_dir
    cluster = settings.cluster
    if runtime not in (None, "docker", "exec"):
        raise fail(f"--runtime {runtime!r} is not a runtime; use docker or exec")
    use_docker = docker_available() if runtime in (None, "docker") else False
    if runtime == "docker" and not use_docker:
        raise fail("no Docker engine is reachable; start dockerd or use --runtime exec")
    if not use_docker and runtime is None:
        console.print(
            "[yellow]No Docker engine is reachable: replicas will run as plain processes "
            "(exec runtime).[/yellow]"
        )
    try:
        state = devstack.start_processes(
            state_dir,
            cluster,
            ports=devstack.DevPorts.shifted(port_offset),
            runtimes=(runtime,) if runtime else None,
            progress=lambda m: console.print(f"• {m}"),
        )
        if use_docker:
            _build_image()
        manifest = example
        if example is not None and not use_docker and example == Path("examples/hello.yaml"):
            manifest = EXEC_EXAMPLE
        workloads = load_manifest_file(manifest) if manifest is not None else []
    except (CloudlessError, ManifestError, OSError) as err:
        raise fail(str(err)) from err

    async def apply() -> None:
        # The stack's own transit, even if the shell points VAULT_* at another one.
        codec = require_codec(
            codec_for(embedded_transit_settings(state_dir)), who="cloudlessctl dev up"
        )
        target = devstack.stack_target(state_dir, state.ports)
        temporal = await connect(target, codec=codec)
        client = CloudlessClient(temporal, cluster)
        for agent in devstack.DEV_AGENTS:
            node = await client.wait_node(agent.name, [NodeState.READY], timeout=60)
            if node is None or node.state != NodeState.READY:
                raise CloudlessError(
                    f"agent {agent.name} did not become Ready; see "
                    f"{state_dir / 'logs' / f'agent-{agent.name}.log'}"
                )
        console.print()
        console.print(nodes_table(await client.list_nodes()))
        for w in workloads:
            outcome = await client.apply(w, wait=True, timeout=120)
            console.print(f"\nworkload/{outcome.namespace}/{outcome.name} {outcome.action}")
            if outcome.status is not None:
                console.print(workloads_table([outcome.status]))
                for r in outcome.status.replicas:
                    console.print(f"  {r.replica_id:<28} {r.phase.value:<9} on {r.node_id}")

    try:
        asyncio.run(apply())
    except CloudlessError as err:
        raise fail(str(err)) from err
    login = devstack.ui_login_url(state_dir, cluster, state.ports["ui"])
    console.print(
        f"\n[bold green]Cloudless is up.[/bold green] Temporal UI (log in with this one-time "
        f"link; `cloudlessctl ui login` makes more):\n  {login}\n"
        f'Try the query CloudlessWorkload = "hello". Temporal itself is reachable only '
        f"through Cloudless' front (mutual TLS on 127.0.0.1:{state.ports['temporal']}; "
        f"`cloudlessctl` uses {state_dir / devstack.CONFIG_FILE}).\n"
        "Next:\n"
        "  cloudlessctl get nodes\n"
        "  cloudlessctl describe workload hello\n"
        "  cloudlessctl scale workload hello --replicas 5\n"
        "  cloudlessctl secrets create default/db --data PASSWORD=s3cret --audience app\n"
        "  cloudlessctl delete workload hello\n"
        "  cloudlessctl dev down\n"
        f"Logs are in {state_dir / 'logs'}.",
        soft_wrap=True,  # the login link must stay one line to be copied whole
    )


def dev_down(settings: Settings, purge: bool) -> None:
    state_dir = settings.state_dir
    report = devstack.stop_processes(state_dir)
    names = tuple(a.name for a in devstack.DEV_AGENTS)
    removed = devstack.remove_dev_containers(names)
    killed = devstack.stop_exec_replicas(state_dir, names)
    for name, why in report.not_ours.items():
        console.print(f"left {name} alone, not provably started by `dev up`: {why}")
    console.print(
        f"stopped {', '.join(report.stopped) or 'nothing'}; removed {removed} container(s) and "
        f"{killed} process replica(s)"
    )
    if purge and state_dir.exists():
        shutil.rmtree(state_dir)
        console.print(f"removed {state_dir}")
