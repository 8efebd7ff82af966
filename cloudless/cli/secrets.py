"""``cloudlessctl secrets``: create, read, rotate and audit secrets.

Talks to the coordinator's SecretsService over mutual TLS with the local admin
certificate (``<state>/admin/``, written by the coordinator at bootstrap).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from google.protobuf.json_format import MessageToDict
from rich.table import Table

from cloudless import config
from cloudless.api import secrets_pb2
from cloudless.cli.output import Output, console, emit_data, fail
from cloudless.cli.settings import settings
from cloudless.durations import parse_duration
from cloudless.errors import CloudlessError
from cloudless.secrets.client import SecretsClient

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, help="Envelope-encrypted secrets and their tokens.")

OutputOpt = Annotated[Output, typer.Option("-o", "--output", help="table, json or yaml.")]
RefArg = Annotated[str, typer.Argument(help="<namespace>/<name>, e.g. production/postgres-creds")]
DataOpt = Annotated[
    list[str] | None,
    typer.Option("--data", "-d", help="KEY=VALUE (repeatable); KEY=@path reads a file."),
]


class _Where:
    address: str = config.DEFAULT_AGENT_GATEWAY
    admin_dir: Path | None = None
    state_dir: Path = Path(".cloudless")


where = _Where()


@app.callback()
def _options(
    address: Annotated[
        str,
        typer.Option(
            envvar=config.ENV_SECRETS_ADDRESS,
            help="SecretsService host:port (the coordinator's mTLS agent port).",
        ),
    ] = config.DEFAULT_AGENT_GATEWAY,
    admin_dir: Annotated[
        Path | None,
        typer.Option(envvar=config.ENV_ADMIN_DIR, help="Admin certificate directory."),
    ] = None,
) -> None:
    where.address = address
    where.admin_dir = admin_dir


def _run(fn: Callable[[SecretsClient], Awaitable[T]]) -> T:
    directory = where.admin_dir or config.admin_dir(settings.state_dir)

    async def go() -> T:
        async with SecretsClient.from_dir(where.address, directory) as client:
            return await fn(client)

    try:
        return asyncio.run(go())
    except CloudlessError as err:
        raise fail(str(err)) from err


def _ref(ref: str) -> tuple[str, str]:
    namespace, slash, name = ref.partition("/")
    if not slash or not namespace or not name or "/" in name:
        raise fail(f"{ref!r} must be <namespace>/<name>, e.g. production/postgres-creds")
    return namespace, name


def _data(items: list[str] | None) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"--data {item.split('=')[0]!r}... must look like KEY=VALUE or KEY=@file")
        if key in data:
            raise fail(f"--data key {key!r} is given twice")
        if value.startswith("@"):
            try:
                data[key] = Path(value[1:]).read_bytes()
            except OSError as err:
                raise fail(f"--data {key}=@{value[1:]}: {err.strerror}") from err
        else:
            data[key] = value.encode()
    return data


def _seconds(text: str | None, what: str) -> float:
    if not text:
        return 0.0
    try:
        return parse_duration(text).total_seconds()
    except ValueError as err:
        raise fail(f"{what}: {err}") from err


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else "-"


def _meta_dict(meta: secrets_pb2.SecretMetadata) -> dict[str, Any]:
    return MessageToDict(meta, preserving_proto_field_name=True)


def _print_meta(metas: list[secrets_pb2.SecretMetadata], output: Output) -> None:
    if output != Output.TABLE:
        emit_data([_meta_dict(m) for m in metas], output)
        return
    table = Table(box=None, pad_edge=False)
    for col in (
        "NAMESPACE",
        "NAME",
        "VERSION",
        "KEYS",
        "AUDIENCES",
        "IMMUTABLE",
        "KEY-V",
        "EXPIRES",
    ):
        table.add_column(col)
    for m in metas:
        table.add_row(
            m.namespace,
            m.name,
            str(m.version),
            ",".join(m.keys),
            ",".join(m.audiences),
            "yes" if m.immutable else "no",
            str(m.key_version),
            _when(m.expires_at),
        )
    console.print(table)


@app.command("create")
def create(
    ref: RefArg,
    data: DataOpt = None,
    audience: Annotated[
        list[str] | None, typer.Option(help="Who may read it (repeatable, exact names).")
    ] = None,
    immutable: Annotated[bool, typer.Option(help="Refuse every later update.")] = False,
    ttl: Annotated[str | None, typer.Option(help="Delete it after this long, e.g. 90d.")] = None,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Create a secret; values are sealed under a fresh data key before they leave."""
    namespace, name = _ref(ref)
    values = _data(data)
    if not values:
        raise fail("give at least one --data KEY=VALUE")
    if not audience:
        raise fail("give at least one --audience (who may read the secret)")
    lifetime = _seconds(ttl, "--ttl")
    meta = _run(
        lambda c: c.create(
            namespace, name, values, list(audience), immutable=immutable, ttl_seconds=lifetime
        )
    )
    if output == Output.TABLE:
        print(f"secret {namespace}/{name} created (version {meta.version})")
    else:
        emit_data(_meta_dict(meta), output)


@app.command("get")
def get(
    ref: RefArg,
    token: Annotated[
        str | None, typer.Option(envvar="CLOUDLESS_SECRET_TOKEN", help="Access token to use.")
    ] = None,
    audience: Annotated[
        str | None, typer.Option(help="Without --token: mint a one-use token for this audience.")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Print only this key's raw value.")] = None,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Read a secret's values (every read is audited)."""
    namespace, name = _ref(ref)

    async def read(c: SecretsClient) -> secrets_pb2.GetSecretResponse:
        use = token
        if not use:
            chosen = audience
            if not chosen:
                metas = [m for m in await c.list_secrets(namespace) if m.name == name]
                if not metas:
                    raise CloudlessError(f"secret {namespace}/{name} does not exist")
                if len(metas[0].audiences) != 1:
                    raise CloudlessError(
                        f"secret {namespace}/{name} has audiences "
                        f"{', '.join(metas[0].audiences)}; choose one with --audience"
                    )
                chosen = metas[0].audiences[0]
            use = (await c.token(namespace, name, chosen, ttl_seconds=60, max_uses=1)).token
        return await c.get(namespace, name, use)

    got = _run(read)
    if key is not None:
        if key not in got.data:
            raise fail(
                f"secret {namespace}/{name} has no key {key!r} (keys: {', '.join(got.data)})"
            )
        sys.stdout.buffer.write(got.data[key])
        sys.stdout.flush()
        return
    values = {k: v.decode(errors="replace") for k, v in sorted(got.data.items())}
    if output == Output.TABLE:
        for k, v in values.items():
            print(f"{k}={v}")
    else:
        emit_data({"metadata": _meta_dict(got.metadata), "data": values}, output)


@app.command("update")
def update(
    ref: RefArg,
    data: DataOpt = None,
    expected_version: Annotated[
        int, typer.Option(help="Refuse unless the secret is at this version (0: any).")
    ] = 0,
) -> None:
    """Replace a secret's values (a new version under a new data key)."""
    namespace, name = _ref(ref)
    values = _data(data)
    if not values:
        raise fail("give at least one --data KEY=VALUE")
    meta = _run(lambda c: c.update(namespace, name, values, expected_version))
    print(f"secret {namespace}/{name} updated (version {meta.version})")


@app.command("delete")
def delete(ref: RefArg) -> None:
    """Delete a secret."""
    namespace, name = _ref(ref)
    _run(lambda c: c.delete(namespace, name))
    print(f"secret {namespace}/{name} deleted")


@app.command("list")
def list_secrets(
    namespace: Annotated[str, typer.Option("-n", "--namespace", help="Only this one.")] = "",
    output: OutputOpt = Output.TABLE,
) -> None:
    """List secrets (metadata only, never values)."""
    _print_meta(_run(lambda c: c.list_secrets(namespace)), output)


@app.command("token")
def token(
    ref: RefArg,
    audience: Annotated[str, typer.Option(help="The audience the token is for.")],
    ttl: Annotated[str, typer.Option(help="Lifetime (default 1h, at most 24h).")] = "1h",
    max_uses: Annotated[int, typer.Option(min=0, help="Uses allowed (0: unlimited).")] = 0,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Mint a short-lived access token for one secret and audience."""
    namespace, name = _ref(ref)
    lifetime = _seconds(ttl, "--ttl")
    out = _run(
        lambda c: c.token(namespace, name, audience, ttl_seconds=lifetime, max_uses=max_uses)
    )
    if output == Output.TABLE:
        print(out.token)
        typer.secho(
            f"token id {out.token_id}, expires {_when(out.expires_at)}"
            + (f", {max_uses} uses" if max_uses else ""),
            err=True,
            fg=typer.colors.BRIGHT_BLACK,
        )
    else:
        emit_data(MessageToDict(out, preserving_proto_field_name=True), output)


@app.command("revoke")
def revoke(ref: RefArg, token_id: Annotated[str, typer.Argument(help="The token's id.")]) -> None:
    """Revoke an access token before it expires."""
    namespace, name = _ref(ref)
    fresh = _run(lambda c: c.revoke(namespace, name, token_id))
    print(f"token {token_id} revoked" if fresh else f"token {token_id} was already revoked")


@app.command("audit")
def audit(
    ref: Annotated[
        str | None, typer.Argument(help="<namespace> or <namespace>/<name>; all if omitted.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Only the last, e.g. 1h, 7d.")] = None,
    operation: Annotated[str, typer.Option(help="CREATE, ACCESS, UPDATE, ...")] = "",
    outcome: Annotated[str, typer.Option(help="ALLOWED, DENIED or FAILED.")] = "",
    limit: Annotated[int, typer.Option(min=0, max=10_000)] = 100,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Show the audit log, newest first."""
    namespace, _, name = (ref or "").partition("/")
    request = secrets_pb2.GetSecretAuditLogRequest(
        namespace=namespace,
        name=name,
        since=time.time() - _seconds(since, "--since") if since else 0.0,
        operation=operation.upper(),
        outcome=outcome.upper(),
        limit=limit,
    )
    entries = _run(lambda c: c.audit(request))
    if output != Output.TABLE:
        emit_data([MessageToDict(e, preserving_proto_field_name=True) for e in entries], output)
        return
    table = Table(box=None, pad_edge=False)
    for col in ("TIME", "OPERATION", "OUTCOME", "SECRET", "ACTOR", "TOKEN", "REASON"):
        table.add_column(col)
    for e in entries:
        table.add_row(
            _when(e.time),
            e.operation,
            e.outcome,
            f"{e.namespace}/{e.name}" if e.name else e.namespace or "-",
            e.actor,
            e.token_id or "-",
            e.reason,
        )
    console.print(table)


@app.command("rotate")
def rotate(
    wait: Annotated[bool, typer.Option(help="Wait until every data key is rewrapped.")] = False,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Rotate the master key now and rewrap every data key (also runs on a Schedule)."""
    progress = _run(lambda c: c.rotate(wait=wait))
    if output == Output.TABLE:
        print(
            f"rotation {progress.workflow_id}: {progress.state}, target version "
            f"{progress.target_version or '?'}, {progress.rewrapped} data keys rewrapped"
        )
    else:
        emit_data(MessageToDict(progress, preserving_proto_field_name=True), output)


@app.command("key-info")
def key_info(output: OutputOpt = Output.TABLE) -> None:
    """Show the master key's versions and the rotation schedule."""
    info = _run(lambda c: c.key_info())
    data = MessageToDict(info, preserving_proto_field_name=True)
    if output != Output.TABLE:
        emit_data(data, output)
        return
    last = info.last_rotation
    print(f"key:                    {info.key_name} ({info.key_type})")
    print(f"latest version:         {info.latest_version}")
    print(f"min decryption version: {info.min_decryption_version}")
    print(f"last rotated:           {_when(info.last_rotated_at)}")
    print(
        f"schedule:               {info.schedule_id or '-'} every {info.rotation_interval or '-'}"
    )
    print(f"next rotation:          {_when(info.next_rotation_at)}")
    if last.workflow_id:
        print(
            f"last rotation run:      {last.workflow_id} {last.state} "
            f"(v{last.target_version}, {last.rewrapped} rewrapped)"
        )
