"""Run a server where no network peer and no other local user can reach it.

``python -m cloudless.cli.jail --socket-dir DIR --forward NAME=PORT ... -- COMMAND ...``
is started by the dev-stack supervisor inside a fresh, private network namespace
(``unshare --net``; ``--user --map-root-user`` as well when not root). There the
namespace has nothing but its own loopback: this process brings it up, starts
``COMMAND`` (the Temporal dev server: frontend, HTTP API, UI), waits for every forwarded
port to listen, and then offers each as a Unix socket ``DIR/NAME.sock``. The directory
is 0700 and each socket 0600, so only the stack's own user connects; the
coordinator's authenticating front (``workers.front``) is that user's process, and it
is the only door other clients get.

A Unix socket path is reachable across network namespaces (it is a file), which is the
whole trick: no TCP port of the server exists in the host's namespace at all.

The process exits with the command's status when the command exits, and stops the
command when it is signalled (SIGTERM/SIGINT), so the supervisor manages one process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import functools
import os
import signal
import socket
import stat
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

#: ``ioctl`` requests and flag of ``<linux/sockios.h>`` / ``<net/if.h>``.
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sH14x")

#: How long the command may take to listen on every forwarded port.
READY_TIMEOUT = 120.0
COPY_CHUNK = 256 * 1024


def loopback_up() -> None:
    """Bring ``lo`` up: a new network namespace starts with it down (no 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = _IFREQ.pack(b"lo", 0)
        flags = _IFREQ.unpack(fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))


def namespace_is_private() -> bool:
    """True when this process's network namespace holds nothing but loopback, i.e. it
    cannot be the host's (checked before anything listens, so a missing ``unshare``
    can never expose the server on the host)."""
    return sorted(name for _, name in socket.if_nameindex()) == ["lo"]


def parse_forward(value: str) -> tuple[str, int]:
    name, sep, port = value.partition("=")
    if not sep or not name.isidentifier() or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"--forward {value!r}: expected NAME=PORT, e.g. frontend=7233"
        )
    return name, int(port)


def private_dir(path: Path) -> Path:
    """Create ``path`` 0700 (or check an existing one is ours and 0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.stat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise SystemExit(
            f"jail: {path} must be a directory owned by uid {os.getuid()} with mode 0700 "
            f"(it is uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}); remove it"
        )
    return path


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(COPY_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _bridge(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One Unix-socket client <-> one TCP connection to the jailed server."""
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        writer.close()
        return
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:
        for w in (writer, up_writer):
            w.close()
            with contextlib.suppress(ConnectionError, OSError):
                await w.wait_closed()


async def _listening(port: int, proc: asyncio.subprocess.Process) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT
    while True:
        if proc.returncode is not None:
            raise SystemExit(f"jail: the command exited ({proc.returncode}) before :{port}")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if loop.time() > deadline:
                raise SystemExit(
                    f"jail: nothing listened on :{port} in {READY_TIMEOUT:.0f} s"
                ) from None
            await asyncio.sleep(0.1)


async def run(socket_dir: Path, forwards: Sequence[tuple[str, int]], command: list[str]) -> int:
    directory = private_dir(socket_dir)
    for name, _ in forwards:
        (directory / f"{name}.sock").unlink(missing_ok=True)
    proc = await asyncio.create_subprocess_exec(*command)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    servers: list[asyncio.AbstractServer] = []
    try:
        for name, port in forwards:
            await _listening(port, proc)
            path = directory / f"{name}.sock"
            old = os.umask(0o177)  # the socket is born 0600: no window where it is wider
            try:
                servers.append(
                    await asyncio.start_unix_server(
                        functools.partial(_bridge, port), path=str(path)
                    )
                )
            finally:
                os.umask(old)
        print(f"jail: ready ({', '.join(n for n, _ in forwards)})", flush=True)
        exited = asyncio.ensure_future(proc.wait())
        stop = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
    finally:
        for server in servers:
            server.close()
        for name, _ in forwards:
            (directory / f"{name}.sock").unlink(missing_ok=True)
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    return proc.returncode or 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cloudless-jail", description=__doc__.split("\n")[0])
    parser.add_argument("--socket-dir", type=Path, required=True)
    parser.add_argument("--forward", type=parse_forward, action="append", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    if not namespace_is_private():
        raise SystemExit(
            "jail: this network namespace has interfaces besides lo; start the jail with "
            "`unshare --net` (the supervisor does) so the server is reachable from nowhere"
        )
    loopback_up()
    sys.exit(asyncio.run(run(args.socket_dir, args.forward, command)))


if __name__ == "__main__":
    main()
