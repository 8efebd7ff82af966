"""``cert-rotation/<cluster>``: what one look at the control plane's certificates did.

The Schedule ``cert-rotation/<cluster>`` starts the look; every coordinator answers for
the certificates it holds (its own, which its front and listeners serve, and the local
admin's) on its own task queue.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from cloudless.model._base import _Model

#: A coordinator instance's name (``<host>-<agent port>``): bounded, so reports are.
INSTANCE_MAX = 200


class CertRotationInput(_Model):
    """One look. ``force``: renew every certificate now, due or not (a suspected key
    compromise; ``cloudlessctl certs rotate --force``). ``reach_seconds``: how long an
    instance has to take and finish its renewal before it is reported unreachable."""

    cluster: str
    force: bool = False
    reach_seconds: float = Field(30.0, ge=1.0, le=600.0)


class CoordinatorInstances(_Model):
    """The coordinator instances Temporal sees polling the cluster's task queue."""

    instances: list[str] = Field(default_factory=list, max_length=1000)


class RenewCertificatesInput(_Model):
    """What one coordinator instance is asked (its certificates, its files).

    ``issued_before``: renew every certificate issued before then, due or not (a forced
    run's start: instances sharing a state directory then renew its files once)."""

    issued_before: datetime | None = None


class CertificateState(_Model):
    """One certificate after the look: renewed or not, and when it is due next."""

    kind: str = Field(max_length=32)  # "coordinator" | "admin"
    identity: str = Field(max_length=512)
    serial: str = Field(max_length=64)
    not_after: datetime
    renew_at: datetime
    renewed: bool = False
    #: Why it was not renewed although due (e.g. the admin was revoked); "" otherwise.
    note: str = Field("", max_length=512)


class InstanceRenewal(_Model):
    """One coordinator instance's answer."""

    instance: str = Field(max_length=INSTANCE_MAX)
    certificates: list[CertificateState] = Field(default_factory=list, max_length=8)


class CARotationInput(_Model):
    """A rotation of the cluster CA. ``overlap_seconds``: how long every party trusts
    both CAs before the new one issues, and again before the old one is dropped. It must
    let every node renew its certificate once (nodes learn the new bundle by renewing):
    at least the node certificates' lifetime."""

    cluster: str
    overlap_seconds: float = Field(ge=1.0, le=400 * 86_400)
    reach_seconds: float = Field(30.0, ge=1.0, le=600.0)


class CAStageInput(_Model):
    """One stage on one coordinator instance: ``prepare``, ``switch`` or ``retire``."""

    stage: str = Field(pattern="^(prepare|switch|retire)$")


class CAStageResult(_Model):
    """An instance after a stage: the CAs it trusts and the one that issues (SHA-256
    fingerprints), and its certificates (reissued by the new CA after ``switch``)."""

    instance: str = Field(max_length=INSTANCE_MAX)
    stage: str = Field(max_length=16)
    trusted: list[str] = Field(default_factory=list, max_length=4)
    issuer: str = Field(max_length=64)
    certificates: list[CertificateState] = Field(default_factory=list, max_length=8)


class CARotationReport(_Model):
    """Where the rotation is and what each instance said at each stage."""

    cluster: str
    phase: str = "Preparing"
    started_at: datetime
    finished_at: datetime | None = None
    stages: list[CAStageResult] = Field(default_factory=list, max_length=3000)
    unreachable: dict[str, str] = Field(default_factory=dict, max_length=1000)


class CertRotationReport(_Model):
    """What the look found and did: each instance's certificates, and the instances
    that did not answer (their own fallback renews their certificates in time)."""

    cluster: str
    force: bool = False
    started_at: datetime
    finished_at: datetime | None = None
    instances: list[InstanceRenewal] = Field(default_factory=list, max_length=1000)
    unreachable: dict[str, str] = Field(default_factory=dict, max_length=1000)

    @property
    def renewed(self) -> list[str]:
        """``<instance>/<kind>`` of every certificate this look renewed."""
        return [
            f"{i.instance}/{c.kind}" for i in self.instances for c in i.certificates if c.renewed
        ]


__all__ = [
    "INSTANCE_MAX",
    "CARotationInput",
    "CARotationReport",
    "CAStageInput",
    "CAStageResult",
    "CertRotationInput",
    "CertRotationReport",
    "CertificateState",
    "CoordinatorInstances",
    "InstanceRenewal",
    "RenewCertificatesInput",
]
