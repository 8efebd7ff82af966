"""Waiting on Temporal's visibility store, which is eventually consistent.

A search-attribute upsert is visible to ``list_workflows`` some time after the workflow
task that made it completed; a test that lists once right after an update is a flake.
"""

from __future__ import annotations

import asyncio

from temporalio.client import Client


async def visible_workflow_ids(client: Client, query: str, timeout: float = 10.0) -> list[str]:
    """The ids ``query`` lists, once it lists any (or whatever it lists at ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = [wf.id async for wf in client.list_workflows(query)]
        if found or loop.time() > deadline:
            return found
        await asyncio.sleep(0.2)
