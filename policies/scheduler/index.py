"""A columnar index of nodes: one numpy array per node fact, so filters and scores are
vectorized scans instead of Python loops over node objects.

Why columns: at 5,000 nodes a Python loop that merely touches each node object costs about
1.7 ms, more than the whole decision budget; a numpy pass over a column costs microseconds.
Strings (zones, regions, label values, runtimes, taints) are interned to small ints once, when
a node is written, so a decision compares ints (or indexes lookup tables) and never strings.

Layout (``n`` slots; a removed node leaves a free slot that the next new node reuses):

- ``present`` bool, ``state`` int16 code, ``zone``/``region`` int32 codes (0 = none)
- ``capacity``/``allocated`` int64, shape ``(5, n)``: cpu, memory, storage, gpu, bandwidth
- ``runtime`` int64 bitmask over interned runtimes and runtime classes
- ``taints`` uint64 bitset, shape ``(words, n)``, over the interned taint vocabulary
- ``uptime``, ``churn``, ``latency``, ``cost`` float64: history and price facts for scoring
- one int32 column per label key holding the interned value (0 = label absent)

Replica counts per workload (for affinity and spread) are kept sparse and in both
directions: per node ``workload key -> count`` and per workload ``slot -> count``; workload
labels sit beside them with an inverted index, so a selector finds its workloads without
scanning them all.

Mutations (:meth:`NodeIndex.allocate`, :meth:`NodeIndex.release`, :meth:`NodeIndex.update_node`)
are O(1) in the number of nodes and write columns in place. :meth:`NodeIndex.snapshot` is
copy-on-write: it shares every column, and whichever index writes a column first copies just
that column, so a decision can hold a stable view while the live index keeps changing.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cloudless.vocabulary import RESOURCE_FIELDS, NodeState, Resources
from policies.scheduler.request import LabelSelector, Taint

READY = NodeState.READY.value
#: Node states of the ``node/<id>`` state machine (the vocabulary's); only Ready accepts
#: new replicas.
NODE_STATES: tuple[str, ...] = tuple(s.value for s in NodeState)
N_RESOURCES = len(RESOURCE_FIELDS)
CPU, MEMORY, STORAGE, GPU, BANDWIDTH = range(N_RESOURCES)
#: The runtime bitmask is one int64; 63 distinct runtimes and classes are plenty.
MAX_RUNTIME_BITS = 63

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
Int32Array = npt.NDArray[np.int32]
FloatArray = npt.NDArray[np.float64]


class Interner:
    """Append-only ``str -> int`` codes starting at 1; code 0 means "absent".

    With 0 reserved, a request turns into a lookup table indexed by the column itself
    (``lut[column]``), and absent labels fall on ``lut[0]``. Interners only ever grow, so a
    snapshot can share them: codes it has never seen are simply unused.
    """

    __slots__ = ("_codes", "_empty_is_absent", "_names", "_numeric")

    def __init__(self, *, empty_is_absent: bool = False) -> None:
        self._codes: dict[str, int] = {}
        self._names: list[str] = [""]
        self._numeric: FloatArray = np.full(1, np.nan)
        self._empty_is_absent = empty_is_absent

    def code(self, name: str) -> int:
        """The code for ``name``, interning it on first sight."""
        if self._empty_is_absent and name == "":
            return 0
        found = self._codes.get(name)
        if found is None:
            found = len(self._names)
            self._codes[name] = found
            self._names.append(name)
        return found

    def lookup(self, name: str) -> int:
        """The code for ``name`` or 0 when never interned (a request never interns)."""
        return self._codes.get(name, 0)

    def name(self, code: int) -> str:
        return self._names[code]

    def __len__(self) -> int:
        """Number of codes including the reserved 0: the size a lookup table needs."""
        return len(self._names)

    def numeric(self) -> FloatArray:
        """Each code's value as a number (NaN when not an integer), for ``Gt``/``Lt``."""
        if len(self._numeric) < len(self._names):
            extra = [_to_float(s) for s in self._names[len(self._numeric) :]]
            self._numeric = np.concatenate([self._numeric, np.asarray(extra, dtype=np.float64)])
        return self._numeric


def _to_float(text: str) -> float:
    try:
        return float(int(text))
    except ValueError:
        return float("nan")


class _SlotCounts:
    """``key -> {slot: replicas}``, copy-on-write after a fork, with cached numpy arrays.

    Keys are workload keys or workload label pairs. After :meth:`fork` both sides share the
    dicts; the first write to a key copies that key's dict (and once, the outer dict).
    """

    __slots__ = ("_arrays", "_data", "_owned")

    def __init__(self) -> None:
        self._data: dict[Hashable, dict[int, int]] = {}
        self._owned: set[Hashable] | None = None  # None: everything is ours
        self._arrays: dict[Hashable, tuple[IntArray, IntArray]] = {}

    def fork(self) -> _SlotCounts:
        other = _SlotCounts()
        other._data = self._data
        other._arrays = dict(self._arrays)
        self._owned = set()
        other._owned = set()
        return other

    def get(self, key: Hashable) -> Mapping[int, int]:
        return self._data.get(key, {})

    def add(self, key: Hashable, slot: int, delta: int) -> None:
        if self._owned is not None and key not in self._owned:
            if not self._owned:  # first write since the fork: own the outer dict
                self._data = dict(self._data)
            self._data[key] = dict(self._data.get(key, {}))
            self._owned.add(key)
        self._arrays.pop(key, None)
        per_slot = self._data.setdefault(key, {})
        value = per_slot.get(slot, 0) + delta
        if value:
            per_slot[slot] = value
        else:
            per_slot.pop(slot, None)

    def arrays(self, key: Hashable) -> tuple[IntArray, IntArray]:
        """Slots and counts as int64 arrays (cached until the key is next written)."""
        cached = self._arrays.get(key)
        if cached is None:
            per_slot = self._data.get(key, {})
            cached = (
                np.fromiter(per_slot.keys(), dtype=np.int64, count=len(per_slot)),
                np.fromiter(per_slot.values(), dtype=np.int64, count=len(per_slot)),
            )
            self._arrays[key] = cached
        return cached


@dataclass(frozen=True)
class NodeSpec:
    """Everything the scheduler knows about one node; the unit of :meth:`NodeIndex.upsert`.

    ``uptime_ratio`` (0..1) and ``churn`` (joins/losses in the recent window) come from the
    node's recorded history; ``latency_ms`` is the measured round trip from the coordinator
    or the users it serves; ``cost_per_core_hour`` is the owner's price.
    """

    node_id: str
    capacity: Resources
    allocated: Resources = field(default_factory=Resources)
    zone: str = ""
    region: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    state: str = READY
    runtimes: frozenset[str] = frozenset({"docker", "exec"})
    runtime_classes: frozenset[str] = frozenset({"runc"})
    taints: tuple[Taint, ...] = ()
    uptime_ratio: float = 1.0
    churn: float = 0.0
    cost_per_core_hour: float = 0.0
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        if not self.node_id:
            raise ValueError("node_id must not be empty")
        self.capacity.check_non_negative()
        self.allocated.check_non_negative()
        if not 0.0 <= self.uptime_ratio <= 1.0:
            raise ValueError(f"uptime_ratio must be in 0..1, got {self.uptime_ratio}")
        for name in ("churn", "cost_per_core_hour", "latency_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True)
class Columns:
    """A read-only view of the index's columns trimmed to the used slots.

    Decisions read only this; it stays valid until the index is next mutated.
    """

    n: int
    present: BoolArray
    state: npt.NDArray[np.int16]
    zone: Int32Array
    region: Int32Array
    capacity: IntArray
    allocated: IntArray
    runtime: IntArray
    taints: npt.NDArray[np.uint64]
    uptime: FloatArray
    churn: FloatArray
    latency: FloatArray
    cost: FloatArray
    labels: Mapping[str, Int32Array]
    node_ids: Sequence[str | None]
    ready_code: int
    zones: Interner
    regions: Interner
    values: Interner
    runtimes: Interner
    taint_vocab: Sequence[Taint]


_SCALAR_COLUMNS: dict[str, npt.DTypeLike] = {
    "present": np.bool_,
    "state": np.int16,
    "zone": np.int32,
    "region": np.int32,
    "runtime": np.int64,
    "uptime": np.float64,
    "churn": np.float64,
    "latency": np.float64,
    "cost": np.float64,
}


class NodeIndex:
    """The scheduler's soft-state view of the cluster (see the module docstring)."""

    def __init__(self, nodes: Iterable[NodeSpec] = (), *, initial_capacity: int = 64) -> None:
        cap = max(1, initial_capacity)
        self._cap = cap
        self._n = 0
        self._cols: dict[str, npt.NDArray[Any]] = {
            name: np.zeros(cap, dtype=dtype) for name, dtype in _SCALAR_COLUMNS.items()
        }
        self._cols["capacity"] = np.zeros((N_RESOURCES, cap), dtype=np.int64)
        self._cols["allocated"] = np.zeros((N_RESOURCES, cap), dtype=np.int64)
        self._cols["taints"] = np.zeros((1, cap), dtype=np.uint64)
        self._labels_cols: dict[str, Int32Array] = {}
        self._owned_cols: set[str] = set(self._cols)
        self._owned_labels: set[str] = set()
        # interners (append-only, shared by snapshots)
        self._states = Interner()
        for s in NODE_STATES:
            self._states.code(s)
        self._zones = Interner(empty_is_absent=True)
        self._regions = Interner(empty_is_absent=True)
        self._values = Interner()
        self._runtime_bits = Interner()
        self._taint_bits: dict[Taint, int] = {}
        self._taint_vocab: list[Taint] = []
        # per-slot metadata
        self._ids: list[str | None] = []
        self._pos: dict[str, int] = {}
        self._free: list[int] = []
        self._node_labels: list[Mapping[str, str]] = []
        self._node_taints: list[tuple[Taint, ...]] = []
        self._node_runtimes: list[frozenset[str]] = []
        self._node_classes: list[frozenset[str]] = []
        self._node_wl: list[dict[str, int]] = []
        self._meta_owned = True
        self._node_wl_owned: set[int] | None = None  # None: every inner dict is owned
        # workloads
        self._wl_labels: dict[str, Mapping[str, str]] = {}
        self._wl_by_label: dict[tuple[str, str], set[str]] = {}
        self._wl_by_key: dict[str, set[str]] = {}
        self._wl_index_owned = True
        self._by_workload = _SlotCounts()  # workload key -> {slot: replicas}
        self._by_pair = _SlotCounts()  # (label, value) of workloads -> {slot: replicas}
        # caches
        self._view: Columns | None = None
        self._rank: IntArray | None = None
        for spec in nodes:
            self.upsert(spec)

    # --- copy-on-write ---------------------------------------------------------------

    def snapshot(self) -> NodeIndex:
        """A stable copy in O(columns): both sides share data until one of them writes it."""
        other = NodeIndex.__new__(NodeIndex)
        other.__dict__.update(self.__dict__)
        other._cols = dict(self._cols)
        other._labels_cols = dict(self._labels_cols)
        other._by_workload = self._by_workload.fork()
        other._by_pair = self._by_pair.fork()
        for idx in (self, other):
            idx._owned_cols = set()
            idx._owned_labels = set()
            idx._meta_owned = False
            idx._node_wl_owned = set()
            idx._wl_index_owned = False
        return other

    def _w(self, name: str) -> npt.NDArray[Any]:
        """The column ``name``, copied first if it is still shared with a snapshot."""
        if name not in self._owned_cols:
            self._cols[name] = self._cols[name].copy()
            self._owned_cols.add(name)
            self._view = None
        return self._cols[name]

    def _label_col(self, key: str) -> Int32Array:
        col = self._labels_cols.get(key)
        if col is None:
            col = np.zeros(self._cap, dtype=np.int32)
            self._labels_cols[key] = col
            self._owned_labels.add(key)
            self._view = None
        elif key not in self._owned_labels:
            col = col.copy()
            self._labels_cols[key] = col
            self._owned_labels.add(key)
            self._view = None
        return col

    def _own_meta(self) -> None:
        if self._meta_owned:
            return
        self._ids = list(self._ids)
        self._pos = dict(self._pos)
        self._free = list(self._free)
        self._node_labels = list(self._node_labels)
        self._node_taints = list(self._node_taints)
        self._node_runtimes = list(self._node_runtimes)
        self._node_classes = list(self._node_classes)
        self._node_wl = list(self._node_wl)
        self._meta_owned = True
        self._view = None

    def _own_node_wl(self, slot: int) -> dict[str, int]:
        if self._node_wl_owned is not None and slot not in self._node_wl_owned:
            self._own_meta()
            self._node_wl[slot] = dict(self._node_wl[slot])
            self._node_wl_owned.add(slot)
        return self._node_wl[slot]

    def _own_wl_index(self) -> None:
        if self._wl_index_owned:
            return
        self._wl_labels = dict(self._wl_labels)
        self._wl_by_label = {k: set(v) for k, v in self._wl_by_label.items()}
        self._wl_by_key = {k: set(v) for k, v in self._wl_by_key.items()}
        self._wl_index_owned = True

    def _grow(self) -> None:
        new_cap = self._cap * 2
        for name, col in list(self._cols.items()):
            shape = (*col.shape[:-1], new_cap)
            grown = np.zeros(shape, dtype=col.dtype)
            grown[..., : self._cap] = col
            self._cols[name] = grown
            self._owned_cols.add(name)
        for key, lcol in list(self._labels_cols.items()):
            lgrown = np.zeros(new_cap, dtype=np.int32)
            lgrown[: self._cap] = lcol
            self._labels_cols[key] = lgrown
            self._owned_labels.add(key)
        self._cap = new_cap
        self._view = None

    # --- reads -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._pos)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._pos

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._pos))

    def slot(self, node_id: str) -> int:
        try:
            return self._pos[node_id]
        except KeyError:
            raise KeyError(f"unknown node {node_id!r}") from None

    def columns(self) -> Columns:
        """The current column view (cached until a mutation replaces a column)."""
        view = self._view
        if view is not None:
            return view
        n = self._n
        c = self._cols
        view = Columns(
            n=n,
            present=c["present"][:n],
            state=c["state"][:n],
            zone=c["zone"][:n],
            region=c["region"][:n],
            capacity=c["capacity"][:, :n],
            allocated=c["allocated"][:, :n],
            runtime=c["runtime"][:n],
            taints=c["taints"][:, :n],
            uptime=c["uptime"][:n],
            churn=c["churn"][:n],
            latency=c["latency"][:n],
            cost=c["cost"][:n],
            labels={k: v[:n] for k, v in self._labels_cols.items()},
            node_ids=self._ids,
            ready_code=self._states.lookup(READY),
            zones=self._zones,
            regions=self._regions,
            values=self._values,
            runtimes=self._runtime_bits,
            taint_vocab=self._taint_vocab,
        )
        self._view = view
        return view

    def id_rank(self) -> IntArray:
        """Each slot's rank in node-id order (free slots last), for order-independent ties.

        Recomputed only after nodes join or leave, never on allocation.
        """
        if self._rank is None or len(self._rank) != self._n:
            order = sorted(range(self._n), key=lambda s: (self._ids[s] is None, self._ids[s] or ""))
            rank = np.empty(self._n, dtype=np.int64)
            rank[np.asarray(order, dtype=np.int64)] = np.arange(self._n, dtype=np.int64)
            self._rank = rank
        return self._rank

    def node(self, node_id: str) -> NodeSpec:
        """The node as last written, with its current allocation."""
        s = self.slot(node_id)
        c = self._cols
        return NodeSpec(
            node_id=node_id,
            capacity=Resources.of([int(v) for v in c["capacity"][:, s]]),
            allocated=Resources.of([int(v) for v in c["allocated"][:, s]]),
            zone=self._zones.name(int(c["zone"][s])),
            region=self._regions.name(int(c["region"][s])),
            labels=dict(self._node_labels[s]),
            state=self._states.name(int(c["state"][s])),
            runtimes=self._node_runtimes[s],
            runtime_classes=self._node_classes[s],
            taints=self._node_taints[s],
            uptime_ratio=float(c["uptime"][s]),
            churn=float(c["churn"][s]),
            cost_per_core_hour=float(c["cost"][s]),
            latency_ms=float(c["latency"][s]),
        )

    def free(self, node_id: str) -> Resources:
        s = self.slot(node_id)
        cap = self._cols["capacity"][:, s]
        used = self._cols["allocated"][:, s]
        return Resources.of([max(0, int(a - b)) for a, b in zip(cap, used, strict=True)])

    def node_workloads(self, node_id: str) -> dict[str, int]:
        """``workload key -> replicas`` on this node."""
        return dict(self._node_wl[self.slot(node_id)])

    def workload_labels(self, workload_key: str) -> Mapping[str, str]:
        return self._wl_labels.get(workload_key, {})

    def matching_workloads(self, selector: LabelSelector) -> list[str]:
        """Workload keys whose labels the selector matches, sorted.

        Narrows by the inverted label index when the selector pins a value or requires a
        key, so the cost follows the matches, not the number of workloads.
        """
        candidates: set[str] | None = None
        unchecked = []
        for expr in selector.expressions():
            if expr.operator == "In":
                found: set[str] = set()
                for v in expr.values:
                    found |= self._wl_by_label.get((expr.key, v), set())
            elif expr.operator in ("Exists", "Gt", "Lt"):
                found = self._wl_by_key.get(expr.key, set())
                if expr.operator != "Exists":
                    unchecked.append(expr)
            else:
                unchecked.append(expr)
                continue
            candidates = found if candidates is None else candidates & found
            if not candidates:
                return []
        pool: Iterable[str] = self._wl_labels if candidates is None else candidates
        labels = self._wl_labels
        return sorted(k for k in pool if all(e.matches(labels[k]) for e in unchecked))

    def selector_slots(self, selector: LabelSelector) -> tuple[IntArray, IntArray]:
        """Slots holding replicas the selector matches and the count on each (may repeat).

        A one-label selector (the common ``app: web``) reads the per-label-pair counts
        directly; anything else sums the matching workloads.
        """
        exprs = selector.expressions()
        if len(exprs) == 1 and exprs[0].operator == "In":
            return _concat([self._by_pair.arrays((exprs[0].key, v)) for v in exprs[0].values])
        return self.replica_slots(self.matching_workloads(selector))

    def replica_slots(self, workload_keys: Iterable[str]) -> tuple[IntArray, IntArray]:
        """Slots holding replicas of these workloads and the count on each (may repeat)."""
        return _concat([self._by_workload.arrays(k) for k in workload_keys])

    # --- writes ----------------------------------------------------------------------

    def upsert(self, spec: NodeSpec) -> None:
        """Add a node or replace all its facts (including its allocation; replica counts stay)."""
        slot = self._pos.get(spec.node_id)
        if slot is None:
            self._own_meta()
            if self._free:
                slot = self._free.pop()
            else:
                if self._n == self._cap:
                    self._grow()
                slot = self._n
                self._n += 1
                self._ids.append(None)
                self._node_labels.append({})
                self._node_taints.append(())
                self._node_runtimes.append(frozenset())
                self._node_classes.append(frozenset())
                self._node_wl.append({})
            self._ids[slot] = spec.node_id
            self._pos[spec.node_id] = slot
            self._node_wl[slot] = {}
            if self._node_wl_owned is not None:
                self._node_wl_owned.add(slot)
            self._rank = None
            self._view = None
        self._w("present")[slot] = True
        self._w("capacity")[:, slot] = spec.capacity.as_tuple()
        self._w("allocated")[:, slot] = spec.allocated.as_tuple()
        self._write_facts(
            slot,
            state=spec.state,
            zone=spec.zone,
            region=spec.region,
            labels=spec.labels,
            runtimes=spec.runtimes,
            runtime_classes=spec.runtime_classes,
            taints=spec.taints,
            uptime_ratio=spec.uptime_ratio,
            churn=spec.churn,
            cost_per_core_hour=spec.cost_per_core_hour,
            latency_ms=spec.latency_ms,
        )

    def update_node(
        self,
        node_id: str,
        *,
        state: str | None = None,
        capacity: Resources | None = None,
        zone: str | None = None,
        region: str | None = None,
        labels: Mapping[str, str] | None = None,
        runtimes: frozenset[str] | None = None,
        runtime_classes: frozenset[str] | None = None,
        taints: tuple[Taint, ...] | None = None,
        uptime_ratio: float | None = None,
        churn: float | None = None,
        cost_per_core_hour: float | None = None,
        latency_ms: float | None = None,
    ) -> None:
        """Change some facts of a known node, leaving the rest (and its allocation) alone."""
        slot = self.slot(node_id)
        if capacity is not None:
            self._w("capacity")[:, slot] = capacity.as_tuple()
        self._write_facts(
            slot,
            state=state,
            zone=zone,
            region=region,
            labels=labels,
            runtimes=runtimes,
            runtime_classes=runtime_classes,
            taints=taints,
            uptime_ratio=uptime_ratio,
            churn=churn,
            cost_per_core_hour=cost_per_core_hour,
            latency_ms=latency_ms,
        )

    def set_state(self, node_id: str, state: str) -> None:
        self.update_node(node_id, state=state)

    def _write_facts(
        self,
        slot: int,
        *,
        state: str | None,
        zone: str | None,
        region: str | None,
        labels: Mapping[str, str] | None,
        runtimes: frozenset[str] | None,
        runtime_classes: frozenset[str] | None,
        taints: tuple[Taint, ...] | None,
        uptime_ratio: float | None,
        churn: float | None,
        cost_per_core_hour: float | None,
        latency_ms: float | None,
    ) -> None:
        if state is not None:
            self._w("state")[slot] = self._states.code(state)
        if zone is not None:
            self._w("zone")[slot] = self._zones.code(zone)
        if region is not None:
            self._w("region")[slot] = self._regions.code(region)
        if labels is not None:
            self._write_labels(slot, labels)
        if runtimes is not None or runtime_classes is not None:
            self._own_meta()
            if runtimes is not None:
                self._node_runtimes[slot] = frozenset(runtimes)
            if runtime_classes is not None:
                self._node_classes[slot] = frozenset(runtime_classes)
            self._w("runtime")[slot] = self._runtime_mask(
                self._node_runtimes[slot], self._node_classes[slot]
            )
        if taints is not None:
            self._write_taints(slot, tuple(taints))
        for name, value in (
            ("uptime", uptime_ratio),
            ("churn", churn),
            ("cost", cost_per_core_hour),
            ("latency", latency_ms),
        ):
            if value is not None:
                if name == "uptime" and not 0.0 <= value <= 1.0:
                    raise ValueError(f"uptime_ratio must be in 0..1, got {value}")
                if value < 0:
                    raise ValueError(f"{name} must be >= 0, got {value}")
                self._w(name)[slot] = value

    def _write_labels(self, slot: int, labels: Mapping[str, str]) -> None:
        self._own_meta()
        old = self._node_labels[slot]
        for key in old:
            if key not in labels:
                self._label_col(key)[slot] = 0
        for key, value in labels.items():
            if old.get(key) != value:
                code = self._values.code(value)
                self._label_col(key)[slot] = code
        self._node_labels[slot] = dict(labels)

    def _runtime_mask(self, runtimes: frozenset[str], classes: frozenset[str]) -> int:
        mask = 0
        for name in [f"rt:{r}" for r in sorted(runtimes)] + [f"rc:{c}" for c in sorted(classes)]:
            bit = self._runtime_bits.code(name) - 1
            if bit >= MAX_RUNTIME_BITS:
                raise ValueError(f"more than {MAX_RUNTIME_BITS} runtimes and runtime classes")
            mask |= 1 << bit
        return mask

    def _write_taints(self, slot: int, taints: tuple[Taint, ...]) -> None:
        self._own_meta()
        for t in taints:
            if t not in self._taint_bits:
                self._taint_bits[t] = len(self._taint_vocab)
                self._taint_vocab.append(t)
        words_needed = max(1, (len(self._taint_vocab) + 63) // 64)
        if self._cols["taints"].shape[0] < words_needed:
            old = self._cols["taints"]
            grown = np.zeros((words_needed, self._cap), dtype=np.uint64)
            grown[: old.shape[0]] = old
            self._cols["taints"] = grown
            self._owned_cols.add("taints")
            self._view = None
        col = self._w("taints")
        col[:, slot] = 0
        for t in taints:
            bit = self._taint_bits[t]
            col[bit // 64, slot] |= np.uint64(1 << (bit % 64))
        self._node_taints[slot] = taints

    def remove(self, node_id: str) -> None:
        """Forget a node and the replica counts on it; its slot is reused by the next join."""
        slot = self.slot(node_id)
        self._own_meta()
        for key in list(self._node_labels[slot]):
            self._label_col(key)[slot] = 0
        for wkey, count in self._node_wl[slot].items():
            self._index_replicas(slot, wkey, self._wl_labels.get(wkey, {}), -count)
        self._node_wl[slot] = {}
        if self._node_wl_owned is not None:
            self._node_wl_owned.add(slot)
        self._node_labels[slot] = {}
        self._node_taints[slot] = ()
        self._node_runtimes[slot] = frozenset()
        self._node_classes[slot] = frozenset()
        for name in ("present", "state", "zone", "region", "runtime"):
            self._w(name)[slot] = 0
        self._w("capacity")[:, slot] = 0
        self._w("allocated")[:, slot] = 0
        self._w("taints")[:, slot] = 0
        self._ids[slot] = None
        del self._pos[node_id]
        self._free.append(slot)
        self._rank = None
        self._view = None

    def register_workload(self, workload_key: str, labels: Mapping[str, str]) -> None:
        """Record a workload's labels so that selectors in other requests can match it."""
        self._own_wl_index()
        old = self._wl_labels.get(workload_key)
        if old is not None:
            for item in old.items():
                self._wl_by_label.get(item, set()).discard(workload_key)
            for key in old:
                self._wl_by_key.get(key, set()).discard(workload_key)
            placed = dict(self._by_workload.get(workload_key))
            for slot, count in placed.items():  # relabel: move the per-pair counts
                for pair in old.items():
                    self._by_pair.add(pair, slot, -count)
                for pair in labels.items():
                    self._by_pair.add(pair, slot, count)
        self._wl_labels[workload_key] = dict(labels)
        for item in labels.items():
            self._wl_by_label.setdefault(item, set()).add(workload_key)
        for key in labels:
            self._wl_by_key.setdefault(key, set()).add(workload_key)

    def allocate(
        self,
        node_id: str,
        resources: Resources,
        *,
        workload_key: str | None = None,
        replicas: int = 1,
    ) -> None:
        """Add ``resources`` (the total for ``replicas``) to a node and count the replicas.

        The index mirrors what the ledger committed, so it records over-commitment if told
        to rather than refusing; the filters then see negative free room.
        """
        slot = self.slot(node_id)
        self._w("allocated")[:, slot] += np.asarray(resources.as_tuple(), dtype=np.int64)
        if workload_key is not None and replicas:
            if workload_key not in self._wl_labels:
                self.register_workload(workload_key, {})
            self._count(slot, workload_key, replicas)

    def release(
        self,
        node_id: str,
        resources: Resources,
        *,
        workload_key: str | None = None,
        replicas: int = 1,
    ) -> None:
        """Undo :meth:`allocate`; releasing more than is allocated is a caller bug."""
        slot = self.slot(node_id)
        vec = np.asarray(resources.as_tuple(), dtype=np.int64)
        col = self._cols["allocated"]
        if np.any(col[:, slot] < vec):
            raise ValueError(f"release of {resources} exceeds what {node_id!r} has allocated")
        if workload_key is not None and replicas:
            have = self._node_wl[slot].get(workload_key, 0)
            if have < replicas:
                raise ValueError(f"{node_id!r} holds {have} replicas of {workload_key!r}")
            self._count(slot, workload_key, -replicas)
        self._w("allocated")[:, slot] -= vec

    def _count(self, slot: int, workload_key: str, delta: int) -> None:
        per_node = self._own_node_wl(slot)
        value = per_node.get(workload_key, 0) + delta
        if value:
            per_node[workload_key] = value
        else:
            per_node.pop(workload_key, None)
        self._index_replicas(slot, workload_key, self._wl_labels[workload_key], delta)

    def _index_replicas(
        self, slot: int, workload_key: str, labels: Mapping[str, str], delta: int
    ) -> None:
        self._by_workload.add(workload_key, slot, delta)
        for pair in labels.items():
            self._by_pair.add(pair, slot, delta)


def _concat(parts: list[tuple[IntArray, IntArray]]) -> tuple[IntArray, IntArray]:
    parts = [p for p in parts if len(p[0])]
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
