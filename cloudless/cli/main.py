"""``cloudlessctl``: drive a Cloudless cluster.

Every command exits non-zero with a one-line reason on error.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.table import Table
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from cloudless import clientconfig as cc
from cloudless import config
from cloudless.cli import audit, dev
from cloudless.cli.contexts import app as config_app
from cloudless.cli.output import (
    Output,
    console,
    emit_data,
    fail,
    nodes_table,
    print_node,
    print_workload,
    workloads_table,
)
from cloudless.cli.secrets import app as secrets_app
from cloudless.cli.settings import settings
from cloudless.cli.ui import app as ui_app
from cloudless.client import DELETE_TIMEOUT_SECONDS, CloudlessClient
from cloudless.codec import (
    ENV_INSECURE_PLAINTEXT,
    INSECURE_PLAINTEXT_FLAG,
    require_codec,
    transit_codec,
)
from cloudless.durations import parse_duration
from cloudless.errors import CloudlessError, PKIError
from cloudless.model import DEFAULT_WEIGHTS, SCORE_FACTORS, SchedulerSettings
from cloudless.pki import CertificateAuthority
from cloudless.pki.rotation import trust_bundle
from cloudless.spec import ManifestError, load_manifest_file, load_manifest_stream
from cloudless.temporal import connect
from cloudless.temporal_options import (
    TemporalAddress,
    TemporalApiKeyFile,
    TemporalNamespace,
    TemporalTLSCA,
    TemporalTLSCert,
    TemporalTLSKey,
    TemporalTLSOnOff,
    TemporalTLSServerName,
)
from cloudless.tokens import TokenSigner
from cloudless.users import issue_user, write_bundle
from cloudless.vocabulary import AccessRole, AdminAction
from cloudless.workloads import unsupported_issues

T = TypeVar("T")

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
get_app = typer.Typer(no_args_is_help=True, help="List workloads or nodes.")
describe_app = typer.Typer(no_args_is_help=True, help="Show one workload or node in detail.")
delete_app = typer.Typer(no_args_is_help=True, help="Delete a workload.")
scale_app = typer.Typer(no_args_is_help=True, help="Change a workload's replica count.")
token_app = typer.Typer(no_args_is_help=True, help="Enrollment tokens for new nodes.")
dev_app = typer.Typer(no_args_is_help=True, help="The embedded single-machine stack.")
node_app = typer.Typer(no_args_is_help=True, help="Inspect and operate nodes.")
user_app = typer.Typer(no_args_is_help=True, help="People's certificates and roles.")
certs_app = typer.Typer(
    no_args_is_help=True, help="The control plane's own certificates and their renewal."
)
app.add_typer(get_app, name="get")
app.add_typer(describe_app, name="describe")
app.add_typer(delete_app, name="delete")
app.add_typer(scale_app, name="scale")
app.add_typer(token_app, name="token")
app.add_typer(dev_app, name="dev")
app.add_typer(node_app, name="node")
app.add_typer(user_app, name="user")
app.add_typer(certs_app, name="certs")
app.add_typer(secrets_app, name="secrets")
app.add_typer(ui_app, name="ui")
app.add_typer(config_app, name="config")


OutputOpt = Annotated[Output, typer.Option("-o", "--output", help="table, json or yaml.")]
NamespaceOpt = Annotated[str, typer.Option("-n", "--namespace", help="Workload namespace.")]


@app.callback()
def _global(
    ctx: typer.Context,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help=f"Config file with contexts; env {cc.ENV_CONFIG}; default "
            f"<state-dir>/{cc.CONFIG_FILE_NAME}, then ~/.cloudless/{cc.CONFIG_FILE_NAME}.",
        ),
    ] = None,
    context: Annotated[
        str | None,
        typer.Option(
            help=f"Context of the config file to use; env {cc.ENV_CONTEXT}; default its "
            "current-context."
        ),
    ] = None,
    temporal_address: TemporalAddress = None,
    temporal_namespace: TemporalNamespace = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            help=f"Cluster name; env {config.ENV_CLUSTER}; default {config.DEFAULT_CLUSTER}."
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help=f"Local state directory; env {config.ENV_STATE_DIR}; default .cloudless."
        ),
    ] = None,
    temporal_tls: TemporalTLSOnOff = None,
    temporal_tls_ca: TemporalTLSCA = None,
    temporal_tls_cert: TemporalTLSCert = None,
    temporal_tls_key: TemporalTLSKey = None,
    temporal_tls_server_name: TemporalTLSServerName = None,
    temporal_api_key_file: TemporalApiKeyFile = None,
    insecure_plaintext_payloads: Annotated[
        bool,
        typer.Option(
            INSECURE_PLAINTEXT_FLAG,
            envvar=ENV_INSECURE_PLAINTEXT,
            help="Talk to Temporal WITHOUT payload encryption (plaintext). Tests only.",
        ),
    ] = False,
) -> None:
    settings.insecure_plaintext_payloads = insecure_plaintext_payloads
    settings.flags = cc.ClientFlags(
        config=config_file,
        context=context,
        temporal_address=temporal_address,
        temporal_namespace=temporal_namespace,
        cluster=cluster,
        state_dir=state_dir,
        temporal_tls=temporal_tls,
        temporal_tls_ca=temporal_tls_ca,
        temporal_tls_cert=temporal_tls_cert,
        temporal_tls_key=temporal_tls_key,
        temporal_tls_server_name=temporal_tls_server_name,
        temporal_api_key_file=temporal_api_key_file,
    )
    if ctx.invoked_subcommand == "config":
        return  # resolves on its own: a broken context must not block `use-context`
    # The embedded stack lives where --state-dir says, whatever context is current: a
    # context's state dir may be a production cluster's.
    dev = ctx.invoked_subcommand == "dev"
    if dev and (config_file is not None or context is not None):
        raise fail("`dev` commands use --state-dir, not a config file; drop --config/--context")
    try:
        client = cc.client_settings(settings.flags, use_config=not dev)
    except CloudlessError as err:
        raise fail(str(err)) from err
    settings.client = client
    settings.temporal_address = client.address.value
    settings.temporal_namespace = client.namespace.value
    settings.cluster = client.cluster.value
    settings.state_dir = client.state_dir.value


def run(fn: Callable[[CloudlessClient], Awaitable[T]]) -> T:
    """Connect, run ``fn`` and turn every expected failure into a one-line error."""

    async def go() -> T:
        client = settings.client
        assert client is not None, "the global callback resolves the settings"
        target = client.target()  # reads the TLS material and API key: errors name them
        # Fail closed: without transit nothing is sent, unless explicitly opted out.
        codec = require_codec(
            transit_codec(settings.state_dir),
            who="cloudlessctl",
            insecure_plaintext=settings.insecure_plaintext_payloads,
        )
        try:
            temporal = await connect(target, codec=codec)
        except RuntimeError as err:
            raise CloudlessError(
                f"cannot reach Temporal at {target.address} over {client.describe_tls()}: "
                f"{cc.connect_hint(client, str(err))}; settings: `cloudlessctl config view` "
                f"({err})"
            ) from err
        return await fn(CloudlessClient(temporal, settings.cluster))

    try:
        return asyncio.run(go())
    except CloudlessError as err:
        raise fail(str(err)) from err
    except WorkflowUpdateRPCTimeoutOrCancelledError as err:
        raise fail(
            f"no coordinator answered for cluster {settings.cluster!r}; is "
            "`cloudless-coordinator` running?"
        ) from err
    except RPCError as err:
        if err.status == RPCStatusCode.DEADLINE_EXCEEDED:
            raise fail(
                f"Temporal did not answer in time for cluster {settings.cluster!r}; is a "
                "coordinator running?"
            ) from err
        raise fail(f"Temporal refused the request: {err.message}") from err


audit.register(app, run)


# ----------------------------------------------------------------------------- apply


@app.command()
def apply(
    filename: Annotated[
        str, typer.Option("-f", "--filename", help="Manifest file, or - for stdin.")
    ],
    wait: Annotated[bool, typer.Option(help="Wait until replicas are running.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 120.0,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Create or update the workloads in a manifest."""
    try:
        workloads = (
            load_manifest_stream(sys.stdin.buffer, "<stdin>")
            if filename == "-"
            else load_manifest_file(filename)
        )
    except ManifestError as err:
        raise fail(str(err)) from err
    # All or nothing: a setting no runtime would enforce in any document stops the lot.
    refused = [issue for n, w in enumerate(workloads) for issue in unsupported_issues(w, n)]
    if refused:
        raise fail(str(ManifestError(refused, "<stdin>" if filename == "-" else filename)))

    async def go(c: CloudlessClient) -> list[Any]:
        return [await c.apply(w, wait=wait, timeout=timeout) for w in workloads]

    outcomes = run(go)
    if output != Output.TABLE:
        emit_data(
            [
                {
                    "namespace": o.namespace,
                    "name": o.name,
                    "action": o.action,
                    "generation": o.generation,
                    "status": o.status.model_dump(mode="json", exclude={"manifest"})
                    if o.status
                    else None,
                }
                for o in outcomes
            ],
            output,
        )
        if any(o.status and o.status.satisfied < o.status.desired for o in outcomes):
            raise typer.Exit(1)
        return
    failed = False
    for o in outcomes:
        console.print(f"workload/{o.namespace}/{o.name} {o.action} (generation {o.generation})")
        if o.status is not None:
            console.print(workloads_table([o.status]))
            failed |= o.status.satisfied < o.status.desired
    if failed:
        raise fail(
            "not every replica is running and ready; see `cloudlessctl describe workload NAME`"
        )


# ----------------------------------------------------------------------------- get


@get_app.command("workloads")
def get_workloads(
    namespace: NamespaceOpt = "default",
    all_namespaces: Annotated[bool, typer.Option("-A", "--all-namespaces")] = False,
    output: OutputOpt = Output.TABLE,
) -> None:
    """List workloads."""
    items = run(lambda c: c.list_workloads(None if all_namespaces else namespace))
    if output == Output.TABLE:
        console.print(workloads_table(items))
    else:
        emit_data([w.model_dump(mode="json", exclude={"manifest"}) for w in items], output)


@get_app.command("nodes")
def get_nodes(output: OutputOpt = Output.TABLE) -> None:
    """List nodes with their state and allocation."""
    items = run(lambda c: c.list_nodes())
    if output == Output.TABLE:
        console.print(nodes_table(items))
    else:
        emit_data([n.model_dump(mode="json") for n in items], output)


# ----------------------------------------------------------------------------- describe


@describe_app.command("workload")
def describe_workload(
    name: str, namespace: NamespaceOpt = "default", output: OutputOpt = Output.TABLE
) -> None:
    """Show a workload, its replicas and where they run."""
    status = run(lambda c: c.workload_status(namespace, name))
    if output == Output.TABLE:
        print_workload(status)
    else:
        emit_data(status.model_dump(mode="json"), output)


@describe_app.command("node")
def describe_node(name: str, output: OutputOpt = Output.TABLE) -> None:
    """Show a node, its capacity, allocation and state history."""
    details = run(lambda c: c.describe_node(name))
    if output == Output.TABLE:
        print_node(details)
    else:
        emit_data(
            {
                "node": details.node.model_dump(mode="json"),
                "status": details.status.model_dump(mode="json") if details.status else None,
                "workloads": details.workloads,
            },
            output,
        )


@app.command()
def explain(
    filename: Annotated[Path, typer.Option("-f", "--filename", help="Manifest file (YAML).")],
    top: Annotated[int, typer.Option(help="Candidates to show per replica.")] = 3,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Dry-run placement of a manifest against the current cluster; commits nothing."""
    try:
        workloads = load_manifest_file(filename)
    except ManifestError as err:
        raise fail(str(err)) from err
    except OSError as err:
        raise fail(f"cannot read {filename}: {err.strerror}") from err

    async def go(c: CloudlessClient) -> list[Any]:
        return [(w.key, await c.explain(w, top_k=top)) for w in workloads]

    results = run(go)
    if output != Output.TABLE:
        emit_data([{"workload": k, **r.model_dump(mode="json")} for k, r in results], output)
        return
    for key, result in results:
        console.print(f"[bold]{key}[/bold] (ledger version {result.ledger_version})")
        for line in result.lines:
            console.print("  " + line, markup=False, highlight=False)


# ----------------------------------------------------------------------------- scheduler

scheduler_app = typer.Typer(
    no_args_is_help=True, help="The cluster's scheduler settings (score weights, sampling)."
)
app.add_typer(scheduler_app, name="scheduler")


@scheduler_app.command("show")
def scheduler_show(output: OutputOpt = Output.TABLE) -> None:
    """Show the score weights and sampling bound every coordinator of the cluster uses."""
    current = run(lambda c: c.scheduler_settings())
    if output != Output.TABLE:
        emit_data(current.model_dump(mode="json"), output)
        return
    weights = {**DEFAULT_WEIGHTS, **current.weights}
    for factor in SCORE_FACTORS:
        mark = "" if factor not in current.weights else "  (set)"
        console.print(f"weight {factor:<18} {weights[factor]:g}{mark}")
    console.print(
        f"sample             max({current.sample_min}, {current.sample_percent:g}% of "
        "feasible nodes)"
    )
    console.print(f"top candidates     {current.top_k}")


def _weight_overrides(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise fail(
                f"--weight {item!r}: expected FACTOR=NUMBER, e.g. --weight reliability=0.4"
            ) from None
    return out


@scheduler_app.command("set")
def scheduler_set(
    weight: Annotated[
        list[str] | None,
        typer.Option("--weight", "-w", help="FACTOR=NUMBER (repeatable), e.g. reliability=0.4."),
    ] = None,
    unset_weight: Annotated[
        list[str] | None,
        typer.Option("--unset-weight", help="Back to the default weight for FACTOR."),
    ] = None,
    sample_min: Annotated[
        int | None, typer.Option(help="Always score at least this many feasible nodes.")
    ] = None,
    sample_percent: Annotated[
        float | None, typer.Option(help="Score this percentage of feasible nodes (0-100].")
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="Candidates kept per decision.")] = None,
    reset: Annotated[bool, typer.Option(help="Start from the defaults.")] = False,
) -> None:
    """Change the scheduler settings (merged into the current ones); every coordinator
    picks them up within a few seconds. Workloads' own placement.weights still win."""
    overrides = _weight_overrides(weight or [])

    async def go(c: CloudlessClient) -> tuple[SchedulerSettings, int]:
        current = SchedulerSettings() if reset else await c.scheduler_settings()
        data = current.model_dump()
        data["weights"] = {
            k: v
            for k, v in {**data["weights"], **overrides}.items()
            if k not in (unset_weight or [])
        }
        for key, value in (
            ("sample_min", sample_min), ("sample_percent", sample_percent), ("top_k", top_k)
        ):  # fmt: skip
            if value is not None:
                data[key] = value
        try:
            new = SchedulerSettings.model_validate(data)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                for e in err.errors()
            )
            raise CloudlessError(f"invalid scheduler settings: {problems}") from None
        return new, await c.set_scheduler_settings(new)

    new, version = run(go)
    console.print(
        f"scheduler settings updated (ledger version {version}): "
        f"{new.model_dump_json(exclude_defaults=True) or '{}'}"
    )


# ----------------------------------------------------------------------------- reaper


@app.command("reap")
def reap(
    grace: Annotated[
        str, typer.Option(help="Leave replicas an agent started less than this long ago.")
    ] = "60s",
    output: OutputOpt = Output.TABLE,
) -> None:
    """Run the reaper now (it also runs on a Schedule): release reservations whose
    workload workflow is over and stop replicas no workload places where they run."""
    try:
        seconds = parse_duration(grace).total_seconds()
    except ValueError as err:
        raise fail(f"--grace: {err}") from None
    report = run(lambda c: c.reap(seconds))
    if output != Output.TABLE:
        emit_data(report.model_dump(mode="json"), output)
        return
    w, o = report.workloads, report.orphans
    console.print(
        f"checked {w.checked} of {w.held} workload(s) holding reservations; "
        f"released {len(w.reaped)}"
    )
    for r in w.reaped:
        console.print(
            f"  {r.workload}: {sum(r.replicas.values())} replica(s) on "
            f"{', '.join(sorted(r.replicas)) or 'no node'} ({r.reason})",
            markup=False,
        )
    console.print(f"asked {o.nodes} Ready node(s); stopped {len(o.stopped)} replica(s)")
    for s in o.stopped:
        console.print(f"  {s.node_id}: {s.replica_id} of {s.workload} ({s.reason})", markup=False)
    for node_id, error in sorted(o.errors.items()):
        console.print(f"  {node_id}: not asked: {error}", markup=False)


# ----------------------------------------------------------------------------- certs


@certs_app.command("rotate")
def certs_rotate(
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Renew every coordinator and local admin certificate now, due or not "
            "(a suspected key compromise).",
        ),
    ] = False,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Run the cert-rotation look now (the Schedule cert-rotation/<cluster> runs it
    too): each live coordinator renews what is past 2/3 of its lifetime and shows every
    certificate it holds. Node certificates renew themselves (see `get nodes`)."""
    report = run(lambda c: c.rotate_certificates(force=force))
    if output != Output.TABLE:
        emit_data(report.model_dump(mode="json"), output)
        return
    table = Table("INSTANCE", "CERTIFICATE", "SERIAL", "RENEW AT", "EXPIRES", "RENEWED", "NOTE")
    for instance in report.instances:
        for cert in instance.certificates:
            table.add_row(
                instance.instance,
                cert.kind,
                cert.serial[:16],
                cert.renew_at.isoformat(timespec="seconds"),
                cert.not_after.isoformat(timespec="seconds"),
                "yes" if cert.renewed else "no",
                cert.note,
            )
    console.print(table)
    for name, why in sorted(report.unreachable.items()):
        console.print(f"{name}: not reached: {why}", markup=False)
    if report.unreachable:
        raise typer.Exit(1)


@certs_app.command("rotate-ca")
def certs_rotate_ca(
    overlap: Annotated[
        str,
        typer.Option(
            help="How long both CAs are trusted, before and after the switch: at least "
            "--node-cert-validity.",
        ),
    ],
    wait: Annotated[bool, typer.Option(help="Wait until the rotation is done.")] = False,
) -> None:
    """Rotate the cluster CA (admins only): make a new CA, trust both, let the new one
    issue, then drop the old one. Follow it in the Temporal UI (ca-rotation/<cluster>)."""
    try:
        span = parse_duration(overlap)
    except ValueError as err:
        raise fail(f"--overlap: {err}") from None

    async def go(c: CloudlessClient) -> str:
        started = await c.rotate_ca(span)
        if wait:
            done = await c.ca_rotation()
            return f"{started}: {done.phase}"
        return f"{started}: started (overlap {overlap}, twice)"

    console.print(run(go), markup=False)


# ----------------------------------------------------------------------------- delete/scale


@delete_app.command("workload")
def delete_workload(
    name: str,
    namespace: NamespaceOpt = "default",
    wait: Annotated[bool, typer.Option(help="Wait until every replica is stopped.")] = True,
    timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for the workload to tear itself down before checking "
            "whether its workflow is stuck (then it is terminated and torn down for it)."
        ),
    ] = DELETE_TIMEOUT_SECONDS,
) -> None:
    """Delete a workload: stop every replica, release its resources.

    Works for a Stuck workload too (its workflow cannot make progress): the workflow is
    terminated and a teardown run stops its replicas and frees what it holds.
    """
    run(lambda c: c.delete(namespace, name, wait=wait, timeout=timeout))
    console.print(f"workload/{namespace}/{name} deleted")


@scale_app.command("workload")
def scale_workload(
    name: str,
    replicas: Annotated[int, typer.Option("--replicas", "-r", help="Desired replica count.")],
    namespace: NamespaceOpt = "default",
    wait: Annotated[bool, typer.Option(help="Wait until the new count is reached.")] = True,
    timeout: float = 120.0,
) -> None:
    """Scale a workload up or down."""
    if replicas < 0:
        raise fail(f"--replicas must be 0 or more, got {replicas}")

    async def go(c: CloudlessClient) -> None:
        result = await c.scale(namespace, name, replicas)
        console.print(
            f"workload/{namespace}/{name} scaled to {replicas} (generation {result.generation})"
        )
        if wait:
            status = await c.wait(namespace, name, result.generation, timeout)
            console.print(workloads_table([status]))
            if status.satisfied < status.desired:
                raise CloudlessError(
                    f"{status.ready}/{status.desired} replicas running; see "
                    f"`cloudlessctl describe workload {name}`"
                )

    run(go)


# ----------------------------------------------------------------------------- nodes


@node_app.command("list")
def node_list(output: OutputOpt = Output.TABLE) -> None:
    """List nodes (same as `get nodes`)."""
    get_nodes(output)


@node_app.command("describe")
def node_describe(name: str, output: OutputOpt = Output.TABLE) -> None:
    """Show a node (same as `describe node`)."""
    describe_node(name, output)


def _admin(name: str, action: AdminAction, reason: str, done: str) -> None:
    # A drain can legitimately take long; the CLI waits, and Ctrl-C leaves it running.
    status = run(lambda c: c.node_admin(name, action, reason))
    console.print(f"node/{name} {done} (state {status.state.value})")


ReasonOpt = Annotated[str, typer.Option(help="Why; recorded in the node's transitions.")]


@node_app.command("cordon")
def node_cordon(name: str, reason: ReasonOpt = "") -> None:
    """Stop new placements on a node; what runs there keeps running."""
    _admin(name, AdminAction.CORDON, reason, "cordoned")


@node_app.command("uncordon")
def node_uncordon(name: str, reason: ReasonOpt = "") -> None:
    """Accept new placements on a node again."""
    _admin(name, AdminAction.UNCORDON, reason, "uncordoned")


@node_app.command("remove")
def node_remove(
    name: str,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Confirm: the removal cannot be undone.")
    ] = False,
    reason: ReasonOpt = "",
) -> None:
    """Retire a node for good (one that will never come back, or was enrolled by mistake):
    its replicas are replaced on other nodes (nothing running elsewhere is stopped), its
    reservations are freed, its agent's replicas are stopped if it can be reached, and its
    certificate is revoked. The name can enroll again with a new token."""
    if not yes:
        raise fail(
            f"removing node {name} cannot be undone (its certificate is revoked); "
            f"run `cloudlessctl node remove {name} --yes` to confirm"
        )
    status = run(lambda c: c.remove_node(name, reason))
    console.print(
        f"node/{name} removed (state {status.state.value}); its certificate is revoked",
        markup=False,
    )


@node_app.command("drain")
def node_drain(name: str, reason: ReasonOpt = "") -> None:
    """Move every replica elsewhere (replacements first; on a full cluster within each
    workload's minAvailable/maxUnavailable), then mark the node Drained. Waits until the
    node is empty."""
    _admin(name, AdminAction.DRAIN, reason, "drained")


# ----------------------------------------------------------------------------- tokens


@token_app.command("create")
def token_create(
    ttl: Annotated[
        str,
        typer.Option(
            help="Lifetime, e.g. 30m, 1h (1s to 24h). Refused from expiry plus a clock-skew "
            "leeway of 5s, or of the lifetime itself if shorter."
        ),
    ] = "1h",
    node: Annotated[str | None, typer.Option(help="Bind the token to this node name.")] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="Require this node label key=value (repeatable).")
    ] = None,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Mint a single-use enrollment token (run where the coordinator's state lives)."""
    coord_dir = config.coordinator_dir(settings.state_dir)
    labels: dict[str, str] = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"--label {item!r} must look like key=value")
        labels[key] = value
    try:
        lifetime = parse_duration(ttl)
        signer = TokenSigner.load(coord_dir)
        # The trust bundle: while the CA rotates, a new node trusts both.
        ca_pem = trust_bundle(coord_dir).decode()
        token, claims = signer.mint(
            cluster=settings.cluster, ca_pem=ca_pem, ttl=lifetime, node_name=node, labels=labels
        )
    except (CloudlessError, ValueError, OSError) as err:
        raise fail(f"{err} (coordinator state: {coord_dir})") from err
    if output == Output.TABLE:
        print(token)
        typer.secho(
            f"single use, expires {claims.expires_at.isoformat()}"
            + (f", bound to node {node}" if node else ""),
            err=True,
            fg=typer.colors.BRIGHT_BLACK,
        )
    else:
        emit_data({"token": token, **claims.to_dict()}, output)


# ----------------------------------------------------------------------------- dev stack


@dev_app.command("up")
def dev_up(
    example: Annotated[
        Path | None, typer.Option(help="Manifest to apply once the stack is up.")
    ] = Path("examples/hello.yaml"),
    runtime: Annotated[
        str | None, typer.Option(help="Force a runtime for the example: docker or exec.")
    ] = None,
    port_offset: Annotated[
        int,
        typer.Option(help="Shift every port (7233, 8233, 7443-7444, 7101-7103) by this much."),
    ] = 0,
) -> None:
    """Start Temporal, the coordinator and three agents, then apply the example workload."""
    dev.dev_up(settings, example, runtime, port_offset)


@dev_app.command("down")
def dev_down(
    purge: Annotated[bool, typer.Option(help="Also delete the state directory.")] = False,
) -> None:
    """Stop everything `dev up` started and remove the dev replicas."""
    dev.dev_down(settings, purge)


# ---------------------------------------------------------------- users


@user_app.command("create")
def user_create(
    name: str,
    role: Annotated[
        AccessRole, typer.Option(help="viewer reads; operator also operates; admin: all.")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Directory for the bundle (default ./<name>-<cluster>).")
    ] = None,
    validity: Annotated[str, typer.Option(help="Certificate lifetime, e.g. 90d.")] = "90d",
) -> None:
    """Issue a user's client certificate bundle (key, certificate, CA, config.yaml).

    Runs where the cluster CA is (the coordinator's state dir) and records the
    certificate in the cluster, so that `user revoke` can refuse it everywhere. The
    holder runs `cloudlessctl --config <dir>/config.yaml ...`."""
    directory = (out or Path(f"{name}-{settings.cluster}")).resolve()
    if directory.exists() and any(directory.iterdir()):
        raise fail(f"{directory} exists and is not empty; choose another --out")
    try:
        ca = CertificateAuthority.load(settings.state_dir / "coordinator")
        issued = issue_user(ca, settings.cluster, name, role, validity=parse_duration(validity))
    except (PKIError, CloudlessError, ValueError) as err:
        raise fail(f"{err} (user create runs where the cluster CA is: --state-dir)") from err
    run(lambda c: c.register_user(issued))
    try:
        config_path = write_bundle(directory, issued, settings.cluster, settings.temporal_address)
    except (CloudlessError, PKIError, OSError) as err:
        raise fail(f"{err}; the certificate is recorded: `user revoke {name}` retires it") from err
    console.print(
        f"user/{name} ({role.value}) created; certificate {issued.serial[:16]}… valid until "
        f"{issued.not_after:%Y-%m-%d %H:%M} UTC\n"
        f"  bundle: {directory}\n"
        f"  use it: cloudlessctl --config {config_path} get workloads"
    )


@user_app.command("list")
def user_list(output: OutputOpt = Output.TABLE) -> None:
    """The cluster's users, their roles and certificates (admins only)."""
    users = run(lambda c: c.users())
    if output != Output.TABLE:
        emit_data([u.model_dump(mode="json") for u in users], output)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "ROLE", "CERTIFICATES", "EXPIRES", "CREATED", "REVOKED"):
        table.add_column(column)
    for u in users:
        expires = max(u.certificates.values(), default=None)
        table.add_row(
            u.name,
            u.role,
            str(len(u.certificates)),
            f"{expires:%Y-%m-%d}" if expires else "-",
            f"{u.created_at:%Y-%m-%d %H:%M}",
            f"{u.revoked_at:%Y-%m-%d %H:%M}" if u.revoked_at else "",
        )
    console.print(table)


@user_app.command("revoke")
def user_revoke(
    name: str,
    reason: Annotated[str, typer.Option(help="Why; kept with the record.")] = "",
) -> None:
    """Revoke every certificate of a user: every front, gateway and SecretsService
    refuses them within seconds, and the user's UI sessions end."""
    result = run(lambda c: c.revoke_user(name, reason))
    console.print(f"user/{name} revoked ({result.certificates} certificate(s))")


def main() -> None:
    """Run the CLI, then leave without interpreter finalization.

    The Temporal client's native runtime keeps threads that may still call into Python
    while the interpreter finalizes, which can abort the process after the command has
    already succeeded. Exiting with ``os._exit`` once output is flushed avoids that.
    """
    code = 0
    try:
        app()  # standalone mode: usage errors are printed, and it ends in SystemExit
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
