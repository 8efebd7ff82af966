"""cloudless.cli.jail: refuses to expose anything outside a private network namespace."""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cloudless.cli.jail import namespace_is_private, parse_forward, private_dir


def test_forwards_are_name_equals_port() -> None:
    assert parse_forward("frontend=7233") == ("frontend", 7233)
    for bad in ("7233", "=7233", "a b=1", "ui=0", "ui=70000", "ui=x"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=PORT"):
            parse_forward(bad)


def test_the_socket_dir_is_private(tmp_path: Path) -> None:
    made = private_dir(tmp_path / "jail")
    assert made.stat().st_mode & 0o777 == 0o700
    (tmp_path / "open").mkdir(mode=0o755)
    (tmp_path / "open").chmod(0o755)
    with pytest.raises(SystemExit, match="mode 0700"):
        private_dir(tmp_path / "open")


@pytest.mark.skipif(
    [n for _, n in socket.if_nameindex()] == ["lo"], reason="this host has only loopback"
)
def test_outside_a_private_namespace_the_jail_refuses_to_start(tmp_path: Path) -> None:
    assert not namespace_is_private()
    done = subprocess.run(
        [sys.executable, "-m", "cloudless.cli.jail", "--socket-dir", str(tmp_path / "s"),
         "--forward", "x=7233", "--", "true"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and "unshare --net" in done.stderr
    assert not (tmp_path / "s").exists()  # nothing was created, nothing listens


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_inside_a_fresh_namespace_only_loopback_exists() -> None:
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c",
         "from cloudless.cli.jail import namespace_is_private as p; print(p())"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip("this user may not create network namespaces")
    assert done.stdout.strip() == "True", done.stderr
