"""Process lifecycle helpers shared by the long-running entry points."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal

#: What "unlimited" open files counts as when a limit is sized from it.
UNLIMITED_FILES = 2**20


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, so a process can shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def open_files_limit() -> int:
    """This process's soft limit on open file descriptors (``RLIMIT_NOFILE``)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED_FILES if soft == resource.RLIM_INFINITY else soft


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard limit; the soft limit afterwards.

    Every server process calls this once at start, before it builds a listener: their
    connection caps are sized from the limit (at most half of it, so a flood of
    connections cannot starve the process of descriptors for its files and clients).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Linux refuses an infinite NOFILE (it is capped by fs.nr_open, 2**20 by default).
    target = UNLIMITED_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        # On failure keep what we have: the caps are sized from it.
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return open_files_limit()
