"""``enrollment/<jti>``: a verified enrollment request and the certificate it yields."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from cloudless.model._base import _Model
from cloudless.model.nodes import NodeRecord


class EnrollmentInput(_Model):
    """Verified token claims plus the agent's request; the raw token never enters history."""

    cluster: str
    jti: str
    token_expires_at: datetime
    #: When the token was minted: its lifetime caps the clock-skew leeway. None (an input
    #: from a gateway older than the field) allows no leeway at all.
    token_issued_at: datetime | None = None
    bound_node_name: str | None = None
    bound_labels: dict[str, str] = Field(default_factory=dict)
    csr_pem: str
    record: NodeRecord


class EnrollmentResult(_Model):
    node_id: str
    certificate_pem: str
    ca_pem: str
    cluster: str


class SignCertificateInput(_Model):
    cluster: str
    node_id: str
    csr_pem: str
    dns_names: list[str] = Field(default_factory=list)


class SignCertificateResult(_Model):
    certificate_pem: str
    ca_pem: str
    not_after: datetime
    serial: str = ""  # hex (cloudless.pki.cert_serial): what removing the node revokes
    #: When the CA issued it (its lifetime starts here; ``not_before`` is backdated).
    issued_at: datetime | None = None
    #: Which key it certifies (cloudless.pki.public_key_id).
    key_id: str = ""


class RenewCertificateInput(_Model):
    """A node asks for a certificate for a new key (the ``renew_certificate`` Update on
    ``node/<id>``). The gateway authenticated the caller as the node, checked the CSR and
    that its key is not the one being renewed; ``key_id`` names the CSR's key."""

    csr_pem: str
    key_id: str
    #: Serial of the certificate the caller presented (for the log and the audit trail).
    presented_serial: str = ""
