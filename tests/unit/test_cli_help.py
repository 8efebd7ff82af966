"""``--help`` of every ``cloudlessctl`` command and command group.

The tree is walked from the Typer app itself, so a command added later is covered without
touching this file. Help text goes through rich markup: square brackets in a docstring or
a parameter's help are parsed as style tags, which either crash the help
(``<namespace>[/<name>]`` closed a tag nobody opened) or silently swallow the text. So each
help must exit 0, and every parameter's help and the command's summary must be shown as
written.
"""

from __future__ import annotations

import pytest
import typer.main
from typer.core import TyperGroup
from typer.testing import CliRunner

from cloudless.cli.main import app

CommandPath = tuple[str, ...]


def _walk(command: object, path: CommandPath) -> list[tuple[CommandPath, object]]:
    found: list[tuple[CommandPath, object]] = [(path, command)]
    if isinstance(command, TyperGroup):
        for name, sub in sorted(command.commands.items()):
            found += _walk(sub, (*path, name))
    return found


COMMANDS = _walk(typer.main.get_command(app), ())


def _texts(command: object) -> list[str]:
    """What the help must show verbatim: the summary (first paragraph), each param's help."""
    summary = (getattr(command, "help", None) or "").strip().split("\n\n")[0]
    params = [getattr(p, "help", None) or "" for p in getattr(command, "params", [])]
    return [text for text in (summary, *params) if text]


def _words(text: str) -> str:
    return " ".join(text.split())


def test_the_walk_reaches_nested_commands() -> None:
    paths = {path for path, _ in COMMANDS}
    assert {(), ("apply",), ("get", "nodes"), ("secrets", "audit"), ("scheduler", "set")} <= paths
    groups = [cmd for _, cmd in COMMANDS if isinstance(cmd, TyperGroup)]
    assert len(groups) >= 10 and all(g.commands for g in groups)


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "cloudlessctl" for p, _ in COMMANDS]
)
def test_help(path: CommandPath, command: object) -> None:
    # Wide enough that no help line wraps, so the texts can be found as written.
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, (result.output, repr(result.exception))
    assert result.output.strip() and "Usage:" in result.output
    shown = _words(result.output)
    for text in _texts(command):
        assert _words(text) in shown, f"{' '.join(path)} --help does not show {text!r}"
