"""The secrets audit log: one JSON line per operation or denial, in daily segment files.

Every entry is written (``os.write`` on an ``O_APPEND`` descriptor) before the RPC answers,
so a crashed coordinator loses nothing it acknowledged; ``fsync`` runs in the background
every ``fsync_interval`` seconds, bounding what a power loss can take. Entries carry
metadata only: never a secret value and never a token (only its id). Segments older than
the retention are deleted.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
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
        self._dirty = False
        self._stop = threading.Event()
        self._interval = fsync_interval
        self._syncer: threading.Thread | None = None

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

    def append(self, entry: AuditEntry) -> None:
        line = json.dumps(asdict(entry), separators=(",", ":")).encode() + b"\n"
        with self._lock:
            fd = self._segment_fd(_day(entry.time))
            os.write(fd, line)
            self._dirty = True

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
