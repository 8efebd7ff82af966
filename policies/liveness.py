"""The liveness table: soft state that turns heartbeats into node state *changes*.

Pure logic with an injected clock, so it is tested directly. The gateway feeds it stream
events and heartbeats and periodically asks it which deadlines passed; only the
transitions it returns are written to Temporal.

- A broken stream is a strong signal (process died, device went to sleep): the node turns
  Suspect at once and Offline if it has not reconnected within ``suspect_grace``.
- Silence without a broken stream (a partition keeps TCP half-open) is caught by the TTL:
  no heartbeat for ``ttl`` means Offline. Each node's TTL is stretched by a fixed random
  factor in ``[1, 1 + jitter]`` so thousands of nodes that lost the same link do not all
  expire in the same instant.

Deadlines sit in a min-heap that heartbeats never touch: a beat only stamps ``last_seen``.
The sweep pops due deadlines, re-checks the entry and pushes the real one back if the node
was heard from meanwhile, so a sweep costs O(due) instead of O(nodes) and each healthy
node costs one heap operation per TTL rather than one per beat.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

from cloudless.vocabulary import NodeHealth

#: Heartbeat health: the vocabulary's node health (this table never reports Joining).
Health = NodeHealth


@dataclass(frozen=True)
class Transition:
    node_id: str
    health: Health
    reason: str
    at: float
    #: A Suspect caused by the agent closing its stream on purpose (a planned restart).
    graceful: bool = False
    #: Epoch of the stream it is about (set by the gateway, which knows the streams).
    epoch: int = 0


@dataclass
class _Entry:
    health: Health
    connected: bool
    last_seen: float
    ttl: float
    disconnected_at: float | None = None


@dataclass
class LivenessTable:
    """In-memory liveness of every node this gateway knows; rebuilt after a restart."""

    ttl: float = 10.0
    suspect_grace: float = 1.0
    jitter: float = 0.2
    seed: int | None = None
    _nodes: dict[str, _Entry] = field(default_factory=dict)
    _deadlines: list[tuple[float, str]] = field(default_factory=list)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        if self.ttl <= 0 or self.suspect_grace < 0 or self.jitter < 0:
            raise ValueError("ttl must be positive; suspect_grace and jitter non-negative")
        self._rng = random.Random(self.seed)

    def _ttl(self) -> float:
        return self.ttl * (1.0 + self._rng.uniform(0.0, self.jitter))

    def health(self, node_id: str) -> Health | None:
        entry = self._nodes.get(node_id)
        return entry.health if entry else None

    def connected_nodes(self) -> list[str]:
        return [n for n, e in self._nodes.items() if e.connected]

    def adopt(self, nodes: dict[str, Health], now: float) -> None:
        """After a restart, start from the health Temporal recorded: healthy and suspect
        nodes get one TTL to reconnect (a coordinator restart never marks healthy nodes
        Offline), and a node that reconnects from Suspect or Offline is reported Ready."""
        for node_id, health in nodes.items():
            if node_id not in self._nodes:
                self._add(node_id, _Entry(health, False, now, self._ttl()))

    def _add(self, node_id: str, entry: _Entry) -> None:
        self._nodes[node_id] = entry
        self._watch(node_id, entry)

    def _watch(self, node_id: str, entry: _Entry) -> None:
        """Schedule the entry's next deadline check."""
        heapq.heappush(self._deadlines, (self._due(entry), node_id))

    def _due(self, entry: _Entry) -> float:
        """The entry's next deadline; ``expire`` compares exactly these sums."""
        due = entry.last_seen + entry.ttl
        if entry.disconnected_at is not None:
            due = min(due, entry.disconnected_at + self.suspect_grace)
        return due

    def connected(self, node_id: str, now: float) -> Transition | None:
        entry = self._nodes.get(node_id)
        if entry is None:
            self._add(node_id, _Entry(Health.READY, True, now, self._ttl()))
            return Transition(node_id, Health.READY, "heartbeat stream opened", now)
        entry.connected, entry.last_seen, entry.disconnected_at = True, now, None
        return self._to(node_id, entry, Health.READY, "heartbeat stream opened", now)

    def beat(self, node_id: str, now: float) -> Transition | None:
        entry = self._nodes.get(node_id)
        if entry is None:
            return self.connected(node_id, now)
        entry.last_seen = now
        return self._to(node_id, entry, Health.READY, "heartbeats resumed", now)

    def disconnected(
        self, node_id: str, now: float, *, graceful: bool = False
    ) -> Transition | None:
        """The stream ended. A graceful close (agent restarting) gets the TTL to come
        back; a broken one only ``suspect_grace``."""
        entry = self._nodes.get(node_id)
        if entry is None or not entry.connected:
            return None
        entry.connected = False
        entry.disconnected_at = None if graceful else now
        if graceful:
            entry.last_seen = now
        self._watch(node_id, entry)  # the grace deadline is earlier than the TTL
        if entry.health is Health.OFFLINE:
            return None  # already written off (TTL on a half-open stream): stays Offline
        reason = "agent closed its stream (restarting)" if graceful else "heartbeat stream broke"
        t = self._to(node_id, entry, Health.SUSPECT, reason, now)
        return Transition(t.node_id, t.health, t.reason, t.at, graceful) if t else None

    def expire(self, now: float) -> list[Transition]:
        """Transitions whose deadlines have passed by ``now``."""
        out = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, node_id = heapq.heappop(heap)
            entry = self._nodes.get(node_id)
            if entry is None or entry.health is Health.OFFLINE:
                continue  # forgotten, or already written off (a return re-arms it)
            # The same sums as the heap key (no ``now - x >= y``, which rounding can make
            # disagree with it and spin here forever).
            grace_due = (
                entry.disconnected_at + self.suspect_grace
                if entry.disconnected_at is not None
                else math.inf
            )
            if grace_due <= now:
                reason = f"did not reconnect within {self.suspect_grace:g}s"
            elif entry.last_seen + entry.ttl <= now:
                reason = f"no heartbeat for {entry.ttl:.1f}s"
            else:
                self._watch(node_id, entry)  # heard from meanwhile: check again later
                continue
            t = self._to(node_id, entry, Health.OFFLINE, reason, now)
            if t is not None:
                out.append(t)
        return out

    def forget(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    def _to(
        self, node_id: str, entry: _Entry, health: Health, reason: str, now: float
    ) -> Transition | None:
        if entry.health is health:
            return None
        if entry.health is Health.OFFLINE:
            self._watch(node_id, entry)  # back from Offline: deadlines apply again
        entry.health = health
        return Transition(node_id, health, reason, now)
