"""Process-wide settings every server applies at start (cloudless.process)."""

from __future__ import annotations

import resource
import subprocess
import sys


def test_servers_raise_their_open_files_limit_to_the_hard_limit() -> None:
    """In a child whose soft limit starts at 256 (as a login shell's often is)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    code = (
        "import resource\n"
        "from cloudless.process import open_files_limit, raise_open_files_limit\n"
        "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "assert open_files_limit() == 256\n"
        "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    expected = 2**20 if hard == resource.RLIM_INFINITY else hard
    assert out.stdout.split() == [str(expected), str(expected)]
