"""The secrets audit log: one JSON line per operation or denial, in daily segment files.

Durability, by kind of record (docs/design/secrets.md "Audit"):

- **Committed** (:meth:`AuditLog.commit`): mutations (create, update, delete, revoke,
  rotate) and every denial. The line is written and then fsynced before the caller goes
  on, so the RPC answers only once its record is on disk. Group commit: at most one fsync
  is in flight; callers that arrive meanwhile share the next one, so N concurrent
  commits cost about two fsyncs, not N.
- **Recorded** (:meth:`AuditLog.record`): allowed reads (ACCESS, GENERATE_TOKEN, LIST,
  AUDIT, KEY_INFO). The line is written (``os.write`` on an ``O_APPEND`` descriptor, so a
  crashed *process* loses nothing it acknowledged) and rides the next group commit or the
  background fsync every ``fsync_interval`` seconds, which bounds what a power loss takes.

Entries carry metadata only: never a secret value and never a token (only its id).
Segments older than the retention are deleted.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

DEFAULT_RETENTION_DAYS = 90
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000

OPERATIONS = (
    "CREATE",
    "ACCESS",
    "UPDATE",
    "DELETE",
    "LIST",
    "GENERATE_TOKEN",
    "REVOKE",
    "ROTATE",
    "KEY_INFO",
    "AUDIT",
)
OUTCOMES = ("ALLOWED", "DENIED", "FAILED")
_SEGMENT = re.compile(r"^audit-(\d{4}-\d{2}-\d{2})\.(?P<who>[A-Za-z0-9_.-]+)\.jsonl$")


@dataclass(frozen=True)
class AuditEntry:
    time: float
    operation: str
    outcome: str
    actor: str
    source: str = ""
    namespace: str = ""
    name: str = ""
    token_id: str = ""
    reason: str = ""
    version: int = 0
    coordinator: str = ""


@dataclass(frozen=True)
class AuditQuery:
    namespace: str = ""
    name: str = ""
    since: float = 0.0
    until: float = 0.0
    operation: str = ""
    outcome: str = ""
    limit: int = DEFAULT_LIMIT

    def matches(self, e: AuditEntry) -> bool:
        return (
            (not self.namespace or e.namespace == self.namespace)
            and (not self.name or e.name == self.name)
            and (not self.since or e.time >= self.since)
            and (not self.until or e.time <= self.until)
            and (not self.operation or e.operation == self.operation)
            and (not self.outcome or e.outcome == self.outcome)
        )


def query_problem(q: AuditQuery) -> str | None:
    """Why a query is invalid (for the RPC's INVALID_ARGUMENT), or None."""
    if q.operation and q.operation not in OPERATIONS:
        return f"operation {q.operation!r} is not one of {', '.join(OPERATIONS)}"
    if q.outcome and q.outcome not in OUTCOMES:
        return f"outcome {q.outcome!r} is not one of {', '.join(OUTCOMES)}"
    if q.limit < 0 or q.limit > MAX_LIMIT:
        return f"limit must be between 0 (default {DEFAULT_LIMIT}) and {MAX_LIMIT}"
    if q.since and q.until and q.since > q.until:
        return "since is after until"
    return None


def _day(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d")


class AuditLog:
    """Append-only, day-segmented audit log for one coordinator."""

    def __init__(
        self,
        directory: Path,
        *,
        coordinator: str = "coordinator",
        retention_days: int = DEFAULT_RETENTION_DAYS,
        fsync_interval: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retention_days < 1:
            raise ValueError("audit retention must be at least 1 day")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", coordinator):
            raise ValueError(f"coordinator id {coordinator!r} is not file-name safe")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.coordinator = coordinator
        self.retention = timedelta(days=retention_days)
        self._clock = clock
        self._lock = threading.Lock()
        self._fd = -1
        self._fd_day = ""
        self._day_cache = (0.0, _day(0.0))  # (start of a UTC day, its name)
        self._dirty = False
        self._stop = threading.Event()
        self._interval = fsync_interval
        self._syncer: threading.Thread | None = None
        #: Lines written so far, and how many of them a finished fsync covers.
        self._written = 0
        self._synced = 0
        #: The group commit in flight (on the event loop), shared by every waiter.
        self._round: asyncio.Future[None] | None = None
        #: fsync runs here, not in the default pool, where hvac calls could starve it.
        self._fsyncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-commit")

    # ---- writing

    def start(self) -> None:
        """Prune old segments and start the background fsync thread."""
        self.prune()
        self._syncer = threading.Thread(target=self._sync_loop, name="audit-fsync", daemon=True)
        self._syncer.start()

    def record(self, operation: str, outcome: str, actor: str, **fields: object) -> AuditEntry:
        entry = AuditEntry(
            time=self._clock(),
            operation=operation,
            outcome=outcome,
            actor=actor,
            coordinator=self.coordinator,
            **fields,  # type: ignore[arg-type]
        )
        self.append(entry)
        return entry

    async def commit(
        self, operation: str, outcome: str, actor: str, **fields: object
    ) -> AuditEntry:
        """:meth:`record`, then wait until the line is on disk (shared group fsync)."""
        entry = self.record(operation, outcome, actor, **fields)
        await self.sync()
        return entry

    async def sync(self) -> None:
        """Return once every line written so far is fsynced.

        One fsync at a time: a caller whose line the running round may not cover waits for
        it, then starts (or joins) the next round, which covers everything written until
        it starts. An fsync failure raises here, so the RPC does not answer as if audited.
        """
        target = self._written
        while self._synced < target:
            current = self._round
            if current is None:
                current = self._round = asyncio.ensure_future(self._commit_round())
            await asyncio.shield(current)

    async def _commit_round(self) -> None:
        try:
            covered = self._written  # every one of these lines is already written
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._fsyncer, self._fsync_current)
            self._synced = max(self._synced, covered)
        finally:
            self._round = None

    def _fsync_current(self) -> None:
        """fsync the current segment without holding the lock (writers keep going): a
        duplicate descriptor stays valid even if the day's segment rotates meanwhile
        (rotation fsyncs the old segment before closing it)."""
        with self._lock:
            if self._fd < 0:
                return
            fd = os.dup(self._fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, entry: AuditEntry) -> None:
        # ``__dict__``, not ``asdict``: the fields are flat, and asdict's deep copy was
        # most of the ~30 µs an ACCESS record cost on the GetSecret hot path.
        line = json.dumps(entry.__dict__, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            fd = self._segment_fd(self._day_of(entry.time))
            os.write(fd, line)
            self._written += 1
            self._dirty = True

    def _day_of(self, moment: float) -> str:
        """``_day(moment)``, formatted once per UTC day instead of once per record."""
        start, name = self._day_cache
        if not start <= moment < start + 86_400:
            start = moment - moment % 86_400
            name = _day(start)
            self._day_cache = (start, name)
        return name

    def _segment_fd(self, day: str) -> int:
        if day != self._fd_day:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
            path = self.directory / f"audit-{day}.{self.coordinator}.jsonl"
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._fd_day = day
        return self._fd

    def flush(self) -> None:
        with self._lock:
            if self._fd >= 0 and self._dirty:
                os.fsync(self._fd)
                self._dirty = False

    def _sync_loop(self) -> None:
        last_prune = time.monotonic()
        while not self._stop.wait(self._interval):
            self.flush()
            if time.monotonic() - last_prune > 3600:
                self.prune()
                last_prune = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join(timeout=5)
        self.flush()
        self._fsyncer.shutdown(wait=True)
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                self._fd_day = ""

    # ---- retention and reading

    def _segments(self) -> list[tuple[str, Path]]:
        """(day, path) of every segment of every coordinator in the directory."""
        found = []
        for path in self.directory.iterdir():
            match = _SEGMENT.match(path.name)
            if match:
                found.append((match.group(1), path))
        return sorted(found)

    def prune(self) -> int:
        """Delete segments whose whole day is older than the retention; returns how many."""
        cutoff = _day(self._clock() - self.retention.total_seconds())
        removed = 0
        for day, path in self._segments():
            if day < cutoff and day != self._fd_day:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def query(self, q: AuditQuery) -> list[AuditEntry]:
        """Matching entries, newest first, at most ``q.limit`` (0: the default limit)."""
        limit = q.limit or DEFAULT_LIMIT
        since_day = _day(q.since) if q.since else ""
        until_day = _day(q.until) if q.until else "9999-99-99"
        days: dict[str, list[Path]] = {}
        for day, path in self._segments():
            if since_day <= day <= until_day:
                days.setdefault(day, []).append(path)
        out: list[AuditEntry] = []
        for day in sorted(days, reverse=True):
            entries = [e for p in days[day] for e in _read(p) if q.matches(e)]
            entries.sort(key=lambda e: e.time, reverse=True)
            out.extend(entries[: limit - len(out)])
            if len(out) >= limit:
                break
        return out


def _read(path: Path) -> Iterator[AuditEntry]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return
    fields = set(AuditEntry.__dataclass_fields__)
    for line in raw.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # a torn last line after a power loss
        if isinstance(obj, dict):
            yield AuditEntry(**{k: v for k, v in obj.items() if k in fields})
