"""Master-key rotation survives ``kill -9`` of the coordinator mid-rewrap.

Real processes: ``cloudless-transit``, the Temporal dev server (SQLite) and a coordinator
with its SecretsService, as ``cloudlessctl dev up`` starts them. The rotation rewraps in
small, paced batches so the kill lands between batches; the restarted coordinator's worker replays
the workflow history and finishes: every data key under the new version, old versions
disabled, and every secret readable before, during and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from cloudless.devstack import DevPorts, spawn_coordinator, spawn_temporal, spawn_transit
from cloudless.secrets.client import SecretsCallError, SecretsClient

pytestmark = pytest.mark.temporal

PORTS = DevPorts.shifted(1600)  # clear of dev (0), devstack (1100), crash (1300)
CLUSTER = "rotchaos"
SECRETS = 12


@pytest.fixture
def rotation_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small, paced batches (inherited by the coordinator subprocesses)."""
    monkeypatch.setenv("CLOUDLESS_ROTATION_BATCH_SIZE", "2")
    monkeypatch.setenv("CLOUDLESS_ROTATION_BATCH_INTERVAL", "0.7")
    monkeypatch.setenv("CLOUDLESS_ROTATION_SETTLE_SECONDS", "1")


def kill9(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


async def eventually(check: Any, timeout: float, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            result = await check()
        except SecretsCallError:
            result = None  # the coordinator is (re)starting
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_kill9_coordinator_mid_rotation_then_finish(
    tmp_path: Path, rotation_env: None
) -> None:
    state = tmp_path / "stack"
    state.mkdir()
    pids: list[int] = []
    try:
        pids.append(await asyncio.to_thread(spawn_transit, state, PORTS))
        pids.append(await asyncio.to_thread(spawn_temporal, state, PORTS))
        coordinator = await asyncio.to_thread(spawn_coordinator, state, CLUSTER, PORTS)
        address = f"127.0.0.1:{PORTS.gateway + 1}"
        admin = SecretsClient.from_dir(address, state / "admin")
        names = [f"s{i}" for i in range(SECRETS)]
        for n in names:
            await admin.create("prod", n, {"K": n.encode()}, ["app"])
        tokens = {n: (await admin.token("prod", n, "app")).token for n in names}
        before = await admin.key_info()

        started = await admin.rotate(wait=False)
        assert started.state in ("Rotating", "Rewrapping")

        async def some_rewrapped() -> bool:
            last = (await admin.key_info()).last_rotation
            return last.state == "Rewrapping" and 0 < last.rewrapped < SECRETS

        await eventually(some_rewrapped, 30, "the first rewrapped batch")
        kill9(coordinator)
        await admin.close()

        pids.append(await asyncio.to_thread(spawn_coordinator, state, CLUSTER, PORTS))
        admin = SecretsClient.from_dir(address, state / "admin")
        # Reads work while the rotation resumes (old and new key versions both decrypt).
        for n in names:
            got = await eventually(lambda n=n: admin.get("prod", n, tokens[n]), 30, "a read")
            assert got.data["K"] == n.encode()

        async def finished() -> Any:
            info = await admin.key_info()
            return info if info.last_rotation.state == "Done" else None

        info = await eventually(finished, 90, "the rotation to finish")
        target = before.latest_version + 1
        assert info.latest_version == target  # rotated exactly once despite the crash
        assert info.min_decryption_version == target
        assert info.last_rotation.rewrapped == SECRETS
        for meta in await admin.list_secrets("prod"):
            assert meta.key_version == target, meta
        for n in names:
            assert (await admin.get("prod", n, tokens[n])).data["K"] == n.encode()
        await admin.close()
    finally:
        for pid in pids:
            kill9(pid)
        if "coordinator" in locals():
            kill9(coordinator)
