"""``cloudlessctl audit``: who did what to the cluster through the front, newest first."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cloudless.cli.output import Output, console, emit_data, fail
from cloudless.client import CloudlessClient
from cloudless.durations import parse_duration
from cloudless.model import MAX_AUDIT_LIMIT, AuditEntries, AuditFilter, AuditRecord

#: ``cloudless.cli.main.run``: connect, run, turn expected failures into one line.
Runner = Callable[[Callable[[CloudlessClient], Awaitable[AuditEntries]]], AuditEntries]

COLUMNS = ("TIME", "ACTOR", "SOURCE", "ACTION", "TARGET", "MESSAGE", "OUTCOME", "REASON")


class Outcome(enum.StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"
    FAILED = "failed"


def since_time(since: str, now: datetime) -> datetime | None:
    """The start of the ``--since`` window (``all``: no start)."""
    if since.strip().lower() == "all":
        return None
    try:
        return now - parse_duration(since)
    except ValueError as err:
        raise fail(f"--since: {err}; or `all` for every record the log keeps") from None


def audit_table(records: list[AuditRecord]) -> Table:
    table = Table(box=None, pad_edge=False)
    for col in COLUMNS:
        table.add_column(col)
    for r in records:
        table.add_row(
            r.time.strftime("%Y-%m-%d %H:%M:%SZ"),
            *(escape(v or "-") for v in (r.actor, r.source, r.action, r.target, r.message)),
            r.outcome,
            escape(r.reason),
        )
    return table


def register(app: typer.Typer, run: Runner) -> None:
    """Add ``audit`` to ``app``; ``run`` connects the way every other command does."""

    @app.command("audit")
    def audit(
        since: Annotated[
            str, typer.Option(help="How far back: a duration (30m, 1h, 7d) or `all`.")
        ] = "1h",
        actor: Annotated[
            str,
            typer.Option(help="Part of the actor (identity URI or ui:<user>), any case."),
        ] = "",
        outcome: Annotated[
            Outcome | None, typer.Option(help="Only allowed, denied or failed calls.")
        ] = None,
        action: Annotated[
            str,
            typer.Option(help="The action, exactly: UpdateWorkflowExecution, 'HTTP POST'..."),
        ] = "",
        target: Annotated[
            str,
            typer.Option(help="Start of the target: workload/default/, node/n1, a UI path."),
        ] = "",
        limit: Annotated[
            int, typer.Option(min=1, max=MAX_AUDIT_LIMIT, help="Records shown at most.")
        ] = 100,
        output: Annotated[
            Output, typer.Option("-o", "--output", help="table, json or yaml.")
        ] = Output.TABLE,
    ) -> None:
        """List the audit log: every call that changed something (or tried to) through
        the coordinator's front, who made it, when, from where and its outcome, denials
        included. Newest first."""
        where = AuditFilter(
            since=since_time(since, datetime.now(UTC)),
            actor=actor,
            outcome=outcome.value if outcome else None,
            action=action,
            target=target,
            limit=limit,
        )
        found = run(lambda c: c.audit(where))
        if output != Output.TABLE:
            emit_data(found.model_dump(mode="json"), output)
            return
        if not found.records:
            kept = (
                f"the log keeps {found.retained} record(s) since {found.oldest.isoformat()}"
                if found.oldest
                else "the log is empty"
            )
            typer.secho(f"no audit records match ({kept})", err=True)
            return
        console.print(audit_table(found.records))
        if found.truncated:
            typer.secho(
                f"showing the newest {len(found.records)}; more match: narrow the filter "
                f"or raise --limit (at most {MAX_AUDIT_LIMIT})",
                err=True,
            )
