"""`cloudlessctl dev up` as a newcomer runs it: real processes, real ports, real containers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.runtime.base import LABEL_MANAGED, LABEL_NODE
from cloudless.cli.devstack import DEV_AGENTS

pytestmark = [pytest.mark.docker, pytest.mark.temporal]

REPO = Path(__file__).resolve().parents[2]
OFFSET = 1100  # clear of a running dev stack (0) and the chaos tests (1300, 1600)


def ctl(state_dir: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "cloudless.cli.main", "--state-dir", str(state_dir),
         "--temporal-address", f"127.0.0.1:{7233 + OFFSET}", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def dev_containers(docker_client: Any) -> list[Any]:
    names = {a.name for a in DEV_AGENTS}
    return [
        c
        for c in docker_client.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=true"})
        if c.labels.get(LABEL_NODE) in names
    ]


def test_dev_up_runs_the_example_and_dev_down_cleans_up(
    tmp_path: Path, docker_client: Any, busybox_image: str
) -> None:
    state = tmp_path / "state"
    try:
        up = ctl(state, "dev", "up", "--port-offset", str(OFFSET))
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Cloudless is up" in up.stdout
        assert f"https://127.0.0.1:{8233 + OFFSET}/login?token=" in up.stdout
        assert up.stdout.count("Running") >= 3
        listed = ctl(state, "get", "workloads", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        (hello,) = json.loads(listed.stdout)
        assert (hello["name"], hello["ready"], hello["desired"]) == ("hello", 3, 3)
        assert len(dev_containers(docker_client)) == 3
        nodes = ctl(state, "get", "nodes", "-o", "yaml")
        assert nodes.returncode == 0 and "zone-b-1" in nodes.stdout and "edge-1" in nodes.stdout
        # Secrets work out of the box: the stack runs transit and the admin cert exists.
        secrets = ("secrets", "--address", f"127.0.0.1:{7444 + OFFSET}")
        made = ctl(
            state, *secrets, "create", "default/demo", "--data", "K=v4lue", "--audience", "app"
        )
        assert made.returncode == 0, made.stdout + made.stderr
        got = ctl(state, *secrets, "get", "default/demo", "--key", "K")
        assert (got.returncode, got.stdout) == (0, "v4lue"), got.stderr
        # A second `dev up` sees the running stack and leaves it alone.
        again = ctl(state, "dev", "up", "--port-offset", str(OFFSET))
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        down = ctl(state, "dev", "down")
    assert down.returncode == 0, down.stderr
    assert dev_containers(docker_client) == []
    assert not (state / "dev.json").exists()
