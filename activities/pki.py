"""Certificate signing for enrollment; the CA key never leaves the coordinator's disk."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from cloudless.errors import PKIError
from cloudless.model import SignCertificateInput, SignCertificateResult
from cloudless.pki import CertificateAuthority, Identity, cert_not_after, cert_serial

NODE_CERT_VALIDITY = timedelta(days=30)


class PKIActivities:
    def __init__(self, ca: CertificateAuthority) -> None:
        self._ca = ca

    @activity.defn(name="sign_node_certificate")
    async def sign_node_certificate(self, inp: SignCertificateInput) -> SignCertificateResult:
        identity = Identity(cluster=inp.cluster, role="node", name=inp.node_id)
        try:
            cert = self._ca.sign_csr(
                inp.csr_pem.encode(),
                identity,
                dns_names=inp.dns_names,
                validity=NODE_CERT_VALIDITY,
                server=True,
                client=True,
            )
        except PKIError as err:
            raise ApplicationError(str(err), type="InvalidCSR", non_retryable=True) from err
        return SignCertificateResult(
            certificate_pem=cert.decode(),
            ca_pem=self._ca.cert_pem.decode(),
            not_after=cert_not_after(cert),
            serial=cert_serial(cert),
        )
