"""``cloudlessctl config``: the config file's contexts and the effective connection settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cloudless import clientconfig as cc
from cloudless.cli.output import Output, console, emit_data, fail
from cloudless.cli.settings import settings
from cloudless.errors import CloudlessError

app = typer.Typer(
    no_args_is_help=True,
    help="The config file (contexts, like a kubeconfig) and the effective settings.",
)

OutputOpt = Annotated[Output, typer.Option("-o", "--output", help="table, json or yaml.")]


def _config_file() -> tuple[Path, str]:
    found = cc.locate_config(settings.flags)
    if found is None:
        raise fail(
            f"no config file: none given (--config, {cc.ENV_CONFIG}) and neither "
            f"<state-dir>/{cc.CONFIG_FILE_NAME} nor ~/.cloudless/{cc.CONFIG_FILE_NAME} exists"
        )
    return found


@app.command("view")
def view(output: OutputOpt = Output.YAML) -> None:
    """Show the effective settings (flags, then environment, then the context, then
    defaults) and where each came from. The API key is never shown."""
    try:
        effective = cc.client_settings(settings.flags)
    except CloudlessError as err:
        raise fail(str(err)) from err
    data = effective.view()
    if output != Output.TABLE:
        emit_data(data, output)
        return
    sources = data["sources"]
    table = Table("SETTING", "VALUE", "SOURCE", box=None)
    table.add_row("config-file", data["config-file"] or "none", _file_source(effective))
    if effective.context is not None:
        table.add_row("context", effective.context.value, effective.context.source)
    for key in ("cluster", "state-dir"):
        table.add_row(key, data[key], sources[key])
    temporal = data["temporal"]
    for key in ("address", "namespace"):
        table.add_row(key, temporal[key], sources[key])
    tls = temporal["tls"]
    table.add_row("tls", "on" if tls is not None else "off", sources.get("tls", "default"))
    for key, value in (tls or {}).items():
        if value is not None:
            table.add_row(f"tls.{key}", value, sources[f"tls.{key}"])
    for key in ("api-key-file", "api-key"):
        if key in temporal:
            table.add_row(key, temporal[key], sources[key])
    console.print(table)


def _file_source(effective: cc.ClientSettings) -> str:
    return effective.config_file.source if effective.config_file is not None else ""


@app.command("get-contexts")
def get_contexts(output: OutputOpt = Output.TABLE) -> None:
    """List the config file's contexts; the current one is marked *."""
    path, _ = _config_file()
    try:
        loaded = cc.load_config(path)
    except CloudlessError as err:
        raise fail(str(err)) from err
    rows = cc.context_rows(loaded)
    if output != Output.TABLE:
        emit_data(rows, output)
        return
    table = Table("CURRENT", "NAME", "CLUSTER", "TEMPORAL", "NAMESPACE", "AUTH", box=None)
    for row in rows:
        table.add_row(
            "*" if row["current"] else "",
            row["name"],
            row["cluster"],
            row["address"],
            row["namespace"],
            row["auth"],
        )
    console.print(table)


@app.command("use-context")
def use_context(name: str) -> None:
    """Make NAME the config file's current-context (the file is rewritten atomically,
    its mode kept)."""
    path, _ = _config_file()
    try:
        cc.use_context(path, name)
    except CloudlessError as err:
        raise fail(str(err)) from err
    console.print(f"current context is now {name!r} ({path})")
