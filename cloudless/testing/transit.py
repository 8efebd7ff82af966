"""A real ``cloudless-transit`` for synchronous tests and benchmarks.

It is the production server on a free loopback port with a real sealed keyring in a
directory, so tests exercise the same HTTP and disk paths as a deployment. The server is
asyncio; synchronous callers (most tests, :class:`cloudless.testing.LocalCluster`, the
benchmarks) get it on an event loop of its own in a helper thread. That thread is fixture
plumbing: in ``cloudless-transit`` the server runs on the process's main loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from transit.keyring import Clock
from transit.server import DEFAULT_MOUNT, TransitServer, open_state

#: Seconds to wait for the helper loop to start or stop the server.
_LOOP_TIMEOUT = 30.0


@contextlib.contextmanager
def serve_in_thread(server: TransitServer) -> Iterator[TransitServer]:
    """Run ``server`` on an event loop of its own, in a daemon thread, for the block.

    The thread runs ``asyncio.run``, so the loop ends as any asyncio program's does
    (leftover tasks cancelled, the worker threads joined); a failed start raises here.
    """
    ready: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Event]]
    ready = concurrent.futures.Future()

    async def lifetime() -> None:
        stop = asyncio.Event()
        try:
            await server.start()
        except BaseException as err:
            ready.set_exception(err)
            return
        ready.set_result((asyncio.get_running_loop(), stop))
        try:
            await stop.wait()
        finally:
            await server.stop()

    thread = threading.Thread(
        target=asyncio.run, args=(lifetime(),), name="transit-loop", daemon=True
    )
    thread.start()
    try:
        loop, stop = ready.result(_LOOP_TIMEOUT)
        try:
            yield server
        finally:
            loop.call_soon_threadsafe(stop.set)
    finally:
        thread.join(_LOOP_TIMEOUT)


@contextlib.contextmanager
def transit_server(
    data_dir: Path | None = None,
    *,
    token: str | None = None,
    mount: str = DEFAULT_MOUNT,
    clock: Clock = time.time,
    rotate_interval: float = 60.0,
) -> Iterator[TransitServer]:
    """Start a server on ``127.0.0.1:<free port>`` over ``data_dir`` (a temp dir if None).

    Reusing ``data_dir`` after the block restarts "the same" server: same keyring, same
    seal key, same root token (kept in the directory's token file unless ``token`` is given).
    """
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="transit-")))
        state = open_state(data_dir, token=token, clock=clock)
        server = TransitServer(
            state.keyring,
            state.token,
            host="127.0.0.1",
            port=0,
            mount=mount,
            rotate_interval=rotate_interval,
        )
        yield stack.enter_context(serve_in_thread(server))


@contextlib.contextmanager
def running_transit(data_dir: Path | None = None, **kwargs: object) -> Iterator[tuple[str, str]]:
    """Like :func:`transit_server`, yielding just ``(url, token)`` for ``hvac.Client``."""
    with transit_server(data_dir, **kwargs) as server:  # type: ignore[arg-type]
        yield server.url, server.token
