"""The highest placement epoch this agent has seen per replica id, kept on disk.

The control plane numbers every placement of a replica (its *epoch*). A RunReplica that
arrives late (a retried call, a coordinator that acted on an old view) carries an older
epoch than one the agent already accepted for that id, or the epoch of a placement the
control plane has since stopped; running it would resurrect a replica the control plane
has moved, replaced or removed, so the agent refuses it. The record survives agent restarts
and outlives the replica itself, because a stale request is most dangerous right after the
replica was stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from cloudless.pki import write_private_file

EPOCHS_FILE = "epochs.json"
#: Entries untouched this long are dropped: no request is delayed by a week.
RETAIN_SECONDS = 7 * 24 * 3600.0


@dataclass(frozen=True)
class _Seen:
    epoch: int
    at: float
    stopped: bool = False  # the control plane stopped this epoch: it may not run again


@dataclass(frozen=True)
class Refusal:
    """Why a RunReplica is stale: the newest epoch known, and whether it was stopped."""

    newest: int
    stopped: bool

    def explain(self, replica_id: str, epoch: int, node_id: str) -> str:
        if self.stopped and epoch == self.newest:
            return (
                f"replica {replica_id}: this RunReplica carries placement epoch {epoch}, "
                f"which the control plane already stopped on node {node_id}; the request is "
                "stale and was refused"
            )
        return (
            f"replica {replica_id}: this RunReplica carries placement epoch {epoch}, but node "
            f"{node_id} already accepted epoch {self.newest} for it; the control plane placed "
            "the replica again since, so the request is stale and was refused"
        )


@dataclass
class EpochStore:
    state_dir: Path
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _loaded: bool = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        path = self.state_dir / EPOCHS_FILE
        if path.exists():
            raw = json.loads(path.read_text())
            self._seen = {rid: _Seen(int(v[0]), float(v[1]), bool(v[2])) for rid, v in raw.items()}

    def newest(self, replica_id: str) -> int:
        """The highest epoch accepted for the replica id (0: none, or unknown)."""
        self._load()
        seen = self._seen.get(replica_id)
        return seen.epoch if seen else 0

    def accept(self, replica_id: str, epoch: int) -> Refusal | None:
        """Record ``epoch`` for a RunReplica; a :class:`Refusal` instead if it is stale.

        Epoch 0 means none was given (a direct RPC, not a placement): accepted, never
        recorded.
        The same epoch again is accepted (retries must stay idempotent) unless it was
        stopped.
        """
        self._load()
        seen = self._seen.get(replica_id)
        if (
            seen is not None
            and epoch
            and (epoch < seen.epoch or (seen.stopped and epoch == seen.epoch))
        ):
            return Refusal(seen.epoch, seen.stopped)
        if epoch and (seen is None or epoch > seen.epoch):
            self._record(replica_id, _Seen(epoch, time.time()))
        return None

    def stop(self, replica_id: str, epoch: int) -> None:
        """The control plane stopped placement ``epoch``: refuse it (and older) from now on."""
        self._load()
        seen = self._seen.get(replica_id)
        if epoch and (seen is None or epoch >= seen.epoch):
            self._record(replica_id, _Seen(epoch, time.time(), stopped=True))

    def _record(self, replica_id: str, seen: _Seen) -> None:
        self._seen[replica_id] = seen
        self._seen = {rid: s for rid, s in self._seen.items() if seen.at - s.at < RETAIN_SECONDS}
        data = {rid: [s.epoch, s.at, s.stopped] for rid, s in self._seen.items()}
        write_private_file(self.state_dir / EPOCHS_FILE, json.dumps(data).encode())
