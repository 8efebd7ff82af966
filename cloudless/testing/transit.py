"""A real ``cloudless-transit`` in a thread, for tests and benchmarks.

It is the production server on a free loopback port with a real sealed keyring in a
directory, so tests exercise the same HTTP and disk paths as a deployment.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from transit.keyring import Clock
from transit.server import DEFAULT_MOUNT, TransitServer, open_state


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
        server.start()
        stack.callback(server.stop)
        yield server


@contextlib.contextmanager
def running_transit(data_dir: Path | None = None, **kwargs: object) -> Iterator[tuple[str, str]]:
    """Like :func:`transit_server`, yielding just ``(url, token)`` for ``hvac.Client``."""
    with transit_server(data_dir, **kwargs) as server:  # type: ignore[arg-type]
        yield server.url, server.token
