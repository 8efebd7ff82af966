"""cloudless.cli.jail: refuses to expose anything outside a private network namespace."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloudless.cli.jail import parse_forward, private_dir
from tests.conftest import unavailable


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


def _in_fresh_namespace(*command: str) -> subprocess.CompletedProcess[str]:
    """``command`` in a new network namespace (``unshare --net``); unavailable (a failure
    under CI=true, never a silent skip) where this machine cannot make one."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        unavailable("util-linux's unshare and iproute2's ip are needed (scripts/setup)")
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", *command],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if done.returncode != 0 and "unshare failed" in done.stderr:
        unavailable(f"this user may not create network namespaces: {done.stderr.strip()}")
    return done


def test_outside_a_private_namespace_the_jail_refuses_to_start(tmp_path: Path) -> None:
    """A namespace with an interface besides lo (as the host's always has): refused
    before anything is created or listens."""
    done = _in_fresh_namespace(
        "ip link add cl-jail0 type veth peer name cl-jail1 && "
        f"exec {sys.executable} -m cloudless.cli.jail "
        f"--socket-dir {tmp_path / 's'} --forward x=7233 -- true"
    )
    assert done.returncode != 0 and "unshare --net" in done.stderr, done.stderr
    assert not (tmp_path / "s").exists()  # nothing was created, nothing listens


def test_inside_a_fresh_namespace_only_loopback_exists() -> None:
    probe = "from cloudless.cli.jail import namespace_is_private as p; print(p())"
    done = _in_fresh_namespace(f"{sys.executable} -c '{probe}'")
    assert done.stdout.strip() == "True", done.stderr
