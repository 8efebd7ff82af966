"""``cloudlessctl ui login``: a one-time link into the Temporal UI, through the front."""

from __future__ import annotations

from typing import Annotated

import typer

from cloudless.cli import devstack
from cloudless.cli.output import fail
from cloudless.cli.settings import settings
from cloudless.config import DEFAULT_UI
from cloudless.durations import parse_duration
from cloudless.errors import CloudlessError, PKIError
from cloudless.logins import mint_login_url
from cloudless.vocabulary import AccessRole

app = typer.Typer(no_args_is_help=True, help="The Temporal UI, behind the front's login.")


@app.command("login")
def login(
    user: Annotated[str, typer.Option(help="Who the session is for (shown in the logs).")] = (
        "admin"
    ),
    role: Annotated[
        AccessRole, typer.Option(help="The session's role: viewers browse, admins also act.")
    ] = AccessRole.ADMIN,
    ttl: Annotated[str, typer.Option(help="How long the link may wait to be opened.")] = "10m",
    url: Annotated[
        str | None,
        typer.Option(
            help="The front's UI address (default: the dev stack's, else " + DEFAULT_UI + ")."
        ),
    ] = None,
) -> None:
    """Print a login link for the Temporal UI; it works once, within --ttl.

    Minting needs the cluster's token key (``<state>/coordinator``), i.e. an admin on the
    coordinator's machine, who chooses the session's role. A revoked user's link is
    refused, and their sessions end.
    """
    state = devstack.load_state(settings.state_dir)
    if url is None:
        url = (
            f"https://127.0.0.1:{state.ports['ui']}"
            if state is not None and "ui" in state.ports
            else DEFAULT_UI
        )
    try:
        link = mint_login_url(
            settings.state_dir / "coordinator",
            url,
            cluster=settings.cluster,
            user=user,
            role=role.value,
            ttl=parse_duration(ttl),
        )
    except PKIError as err:
        raise fail(f"{err}; run this where the coordinator's state dir is (--state-dir)") from err
    except (CloudlessError, ValueError) as err:
        raise fail(str(err)) from err
    typer.echo(link)
