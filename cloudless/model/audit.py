"""``audit/<cluster>``: who did what to the cluster, when, from where, and how it went.

The coordinator's front records every mutating call an operator makes through it, every
one that failed and every one it denied (:class:`AuditRecord`); a sink batches them into
the cluster's audit workflow (:class:`AuditBatch`), which keeps the newest ones and
answers filtered reads (:class:`AuditFilter` -> :class:`AuditEntries`).

Every text field is clipped to a bound on construction and on decoding, so no caller
can make a record (and with it a batch, the workflow's state or an answer) outgrow what
Temporal stores: a record encodes to 2 KiB at most.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, Literal

from pydantic import Field, field_validator

from cloudless.model._base import _Model

AuditOutcome = Literal["allowed", "denied", "failed"]
#: Every outcome, in the order the CLI lists them.
AUDIT_OUTCOMES: Final[tuple[AuditOutcome, ...]] = ("allowed", "denied", "failed")

#: The actor of a call refused before it showed who it was.
UNAUTHENTICATED: Final = "unauthenticated"
#: The denial reason or error status, as kept.
MAX_AUDIT_REASON_CHARS: Final = 300
#: Workflow ids and UI paths (Temporal allows ids of 1,000 characters).
MAX_AUDIT_TARGET_CHARS: Final = 512
#: Identity URIs, peer addresses, method names, message names, roles.
MAX_AUDIT_FIELD_CHARS: Final = 256
#: What one read may ask for at most (the answer is also bounded in bytes).
MAX_AUDIT_LIMIT: Final = 10_000


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _utc(value: datetime) -> datetime:
    """Aware and in UTC (a naive time is taken as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class AuditRecord(_Model):
    """One decision of the front: an operator's call, allowed, denied or failed."""

    #: When the front decided (UTC; now, unless given).
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    #: The caller's identity URI (``cloudless://dev/admin/admin``) or ``ui:<user>``.
    actor: str
    role: str
    #: The peer address, as gRPC names it (``ipv4:127.0.0.1:5555``).
    source: str
    #: The Temporal API method (``UpdateWorkflowExecution``), or ``HTTP POST`` for the UI.
    action: str
    #: The workflow id, or the UI path.
    target: str
    #: The update, signal or query name, or the type of a started workflow; may be "".
    message: str
    outcome: AuditOutcome
    #: Why it was denied, or the error status of a failed call.
    reason: str = ""

    @field_validator("time")
    @classmethod
    def _time_in_utc(cls, value: datetime) -> datetime:
        return _utc(value)

    @field_validator("actor", "role", "source", "action", "message")
    @classmethod
    def _bounded(cls, value: str) -> str:
        return _clip(value, MAX_AUDIT_FIELD_CHARS)

    @field_validator("target")
    @classmethod
    def _bounded_target(cls, value: str) -> str:
        return _clip(value, MAX_AUDIT_TARGET_CHARS)

    @field_validator("reason")
    @classmethod
    def _bounded_reason(cls, value: str) -> str:
        return _clip(value, MAX_AUDIT_REASON_CHARS)


class AuditBatch(_Model):
    """Records a sink sends at once (signal ``record``)."""

    records: list[AuditRecord] = Field(default_factory=list)


class AuditFilter(_Model):
    """Which records a read wants (query ``entries``); every condition must hold."""

    #: Records at or after this time.
    since: datetime | None = None
    #: Records at or before this time.
    until: datetime | None = None
    #: A substring of the actor (case-insensitive).
    actor: str = ""
    outcome: AuditOutcome | None = None
    #: The action, exactly (case-insensitive): ``UpdateWorkflowExecution``, ``HTTP POST``.
    action: str = ""
    #: A prefix of the target: ``workload/default/`` is every workload of ``default``.
    target: str = ""
    #: Newest first, at most this many.
    limit: int = Field(default=100, ge=1, le=MAX_AUDIT_LIMIT)

    @field_validator("since", "until")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _utc(value)


class AuditEntries(_Model):
    """The answer to a read: matching records, newest first."""

    records: list[AuditRecord] = Field(default_factory=list)
    #: More records matched than the answer holds: the limit, or the answer's byte bound.
    truncated: bool = False
    #: How many records the log keeps now, and the time of the oldest (its retention).
    retained: int = 0
    oldest: datetime | None = None


class AuditWorkflowInput(_Model):
    """``audit/<cluster>``'s run input; continue-as-new carries the log in ``packed``."""

    cluster: str
    #: The retained records, compressed (see ``workflows/audit.py``); "" when empty.
    packed: str = ""
    #: Records kept at most (None: the workflow's default). Tests lower it.
    max_records: int | None = Field(default=None, ge=1)
    #: History events before continue-as-new (None: the workflow's default).
    max_history_events: int | None = Field(default=None, ge=100)


__all__ = [
    "AUDIT_OUTCOMES",
    "MAX_AUDIT_FIELD_CHARS",
    "MAX_AUDIT_LIMIT",
    "MAX_AUDIT_REASON_CHARS",
    "MAX_AUDIT_TARGET_CHARS",
    "AuditBatch",
    "AuditEntries",
    "AuditFilter",
    "AuditOutcome",
    "AuditRecord",
    "AuditWorkflowInput",
]
