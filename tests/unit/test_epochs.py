"""The agent's per-replica placement epochs: stale requests refused, state kept on disk."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent import epochs
from agent.epochs import EPOCHS_FILE, EpochStore, Refusal


def test_older_epochs_are_refused_equal_and_newer_accepted(tmp_path: Path) -> None:
    store = EpochStore(tmp_path)
    assert store.accept("r1", 3) is None
    assert store.accept("r1", 3) is None  # a retry of the same placement
    assert store.accept("r1", 2) == Refusal(3, stopped=False)
    assert store.accept("r1", 5) is None
    assert store.accept("r1", 4) == Refusal(5, stopped=False)
    assert store.accept("r2", 1) is None  # per replica id
    assert store.newest("r1") == 5
    message = Refusal(5, False).explain("r1", 4, "n1")
    assert message.startswith("replica r1: this RunReplica carries placement epoch 4")
    assert "node n1 already accepted epoch 5" in message


def test_a_stopped_epoch_never_runs_again(tmp_path: Path) -> None:
    store = EpochStore(tmp_path)
    assert store.accept("r1", 3) is None
    store.stop("r1", 3)
    assert store.accept("r1", 3) == Refusal(3, stopped=True)
    assert "already stopped on node n1" in Refusal(3, True).explain("r1", 3, "n1")
    assert store.accept("r1", 2) == Refusal(3, stopped=True)
    assert store.accept("r1", 4) is None  # a new placement of the id may run
    store.stop("r1", 2)  # a late stop of an older placement changes nothing
    assert store.accept("r1", 4) is None
    store.stop("r9", 1)  # stopping an id never run here still fences it
    assert store.accept("r9", 1) == Refusal(1, stopped=True)


def test_epoch_zero_is_unknown_and_never_recorded(tmp_path: Path) -> None:
    store = EpochStore(tmp_path)
    assert store.accept("r1", 0) is None
    store.stop("r1", 0)
    assert not (tmp_path / EPOCHS_FILE).exists()
    store.accept("r1", 2)
    assert store.accept("r1", 0) is None  # an old coordinator cannot be judged


def test_survives_a_restart_privately(tmp_path: Path) -> None:
    EpochStore(tmp_path).accept("r1", 7)
    EpochStore(tmp_path).stop("r2", 1)
    assert (tmp_path / EPOCHS_FILE).stat().st_mode & 0o777 == 0o600
    assert EpochStore(tmp_path).accept("r1", 6) == Refusal(7, stopped=False)
    assert EpochStore(tmp_path).accept("r2", 1) == Refusal(1, stopped=True)


def test_old_entries_are_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = EpochStore(tmp_path)
    store.accept("old", 1)
    later = time.time() + epochs.RETAIN_SECONDS + 1
    monkeypatch.setattr(time, "time", lambda: later)
    store.accept("new", 1)
    assert set(json.loads((tmp_path / EPOCHS_FILE).read_text())) == {"new"}
