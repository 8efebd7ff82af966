"""Who did what to the cluster, when, from where, and how it ended: one audit record."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from cloudless.model._base import _Model


class AuditRecord(_Model):
    """One operation or denial seen by the front (``workers/front``)."""

    time: datetime  # UTC
    actor: str  # identity URI (cloudless://<cluster>/<role>/<name>) or ui:<user>
    role: str
    source: str  # the peer's address as the front saw it
    action: str  # the Temporal API method, or "HTTP <verb>" for the UI
    target: str  # workflow id, or the UI path
    message: str  # update/signal/query names or the workflow type started; may be ""
    outcome: Literal["allowed", "denied", "failed"]
    reason: str = ""  # why it was denied or failed (at most 300 characters)
