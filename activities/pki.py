"""Certificate signing for enrollment and renewal; the CA key never leaves the
coordinator's disk."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from cloudless.errors import PKIError
from cloudless.model import SignCertificateInput, SignCertificateResult
from cloudless.pki import (
    CertificateAuthority,
    Identity,
    cert_key_id,
    cert_not_after,
    cert_not_before,
    cert_serial,
)
from cloudless.pki.authority import CLOCK_SKEW

#: How long a node certificate is valid (enrollment and renewal alike); agents renew at
#: about two thirds of it (``policies.renewal``).
NODE_CERT_VALIDITY = timedelta(days=30)


class PKIActivities:
    """``node_validity``: the lifetime of the node certificates this coordinator issues
    (``--node-cert-validity``; tests shorten it to a few seconds)."""

    def __init__(
        self, ca: CertificateAuthority, *, node_validity: timedelta = NODE_CERT_VALIDITY
    ) -> None:
        if node_validity <= timedelta(0):
            raise PKIError(f"node certificate validity must be positive, got {node_validity}")
        self._ca = ca
        self._trust = ca.cert_pem
        self._node_validity = node_validity

    def retrust(self, ca: CertificateAuthority, trust: bytes) -> None:
        """Sign with ``ca`` and answer ``trust`` (the bundle agents take) from now on."""
        self._ca, self._trust = ca, trust

    @activity.defn(name="sign_node_certificate")
    async def sign_node_certificate(self, inp: SignCertificateInput) -> SignCertificateResult:
        identity = Identity(cluster=inp.cluster, role="node", name=inp.node_id)
        try:
            cert = self._ca.sign_csr(
                inp.csr_pem.encode(),
                identity,
                dns_names=inp.dns_names,
                validity=self._node_validity,
                server=True,
                client=True,
            )
        except PKIError as err:
            raise ApplicationError(str(err), type="InvalidCSR", non_retryable=True) from err
        return SignCertificateResult(
            certificate_pem=cert.decode(),
            ca_pem=self._trust.decode(),
            not_after=cert_not_after(cert),
            serial=cert_serial(cert),
            issued_at=cert_not_before(cert) + CLOCK_SKEW,
            key_id=cert_key_id(cert),
        )
