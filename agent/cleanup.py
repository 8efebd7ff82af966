"""``python -m agent.cleanup``: stop the process replicas a (stopped) agent left running.

Exec replicas outlive their agent by design (an agent restart adopts them). Tearing a
dev stack down has to stop them too; the dev supervisor runs this module as a process so
that the CLI never imports the agent (DESIGN section 1).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from agent.runtime.exec import ExecDriver

app = typer.Typer(add_completion=False)


async def stop_all(state_dir: Path, names: list[str], grace_seconds: float) -> int:
    """Stop every exec replica recorded under ``<state_dir>/agents/<name>``; the count."""
    count = 0
    for name in names:
        agent_dir = state_dir / "agents" / name
        if not (agent_dir / "replicas").exists():
            continue
        driver = ExecDriver(name, agent_dir)
        for status in await driver.list():
            await driver.stop(status.replica_id, grace_seconds)
            count += 1
        await driver.close()
    return count


@app.command()
def main_command(
    state_dir: Annotated[Path, typer.Option(help="The dev stack's state directory.")],
    name: Annotated[list[str], typer.Argument(help="Agent (node) names.")],
    grace: Annotated[float, typer.Option(help="Seconds between SIGTERM and SIGKILL.")] = 5.0,
) -> None:
    """Stop the exec replicas of the named agents; prints how many were stopped."""
    typer.echo(asyncio.run(stop_all(state_dir, name, grace)))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
