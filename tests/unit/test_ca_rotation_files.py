"""The CA rotation's stages on disk (:mod:`cloudless.pki.rotation`): prepare, switch,
retire, each idempotent, and a crash inside the switch completed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudless.errors import PKIError
from cloudless.pki import CertificateAuthority, Identity, load_trust_bundle, verify_issued_by
from cloudless.pki.rotation import (
    NEXT_CERT_FILE,
    NEXT_KEY_FILE,
    CAStage,
    prepare,
    retire,
    stage,
    switch,
    trust_bundle,
)
from cloudless.tls import TLSMaterial

CLUSTER = "rot"


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    d = tmp_path / "coordinator"
    CertificateAuthority.bootstrap(d, CLUSTER)
    return d


def test_a_rotation_trusts_both_then_issues_with_the_new_then_trusts_it_alone(
    directory: Path,
) -> None:
    old = CertificateAuthority.load(directory)
    assert stage(directory) == CAStage.STEADY and trust_bundle(directory) == old.cert_pem
    _, by_old = old.issue(Identity(CLUSTER, "node", "a"))

    both = prepare(directory)
    assert prepare(directory) == both  # again: the same next CA
    assert stage(directory) == CAStage.PREPARED
    assert len(load_trust_bundle(both)) == 2 and both.startswith(old.cert_pem)
    assert CertificateAuthority.load(directory).cert_pem == old.cert_pem  # still issues

    assert switch(directory) == both
    assert switch(directory) == both  # again: nothing more
    assert stage(directory) == CAStage.SWITCHED
    new = CertificateAuthority.load(directory)
    assert new.cert_pem != old.cert_pem and new.cluster == CLUSTER
    _, by_new = new.issue(Identity(CLUSTER, "node", "b"))
    for cert in (by_old, by_new):
        verify_issued_by(cert, trust_bundle(directory))

    assert retire(directory) == new.cert_pem
    assert stage(directory) == CAStage.STEADY and trust_bundle(directory) == new.cert_pem
    with pytest.raises(PKIError):
        verify_issued_by(by_old, trust_bundle(directory))


def test_stages_out_of_order_are_refused_with_the_next_step(directory: Path) -> None:
    with pytest.raises(PKIError, match="no CA rotation is prepared"):
        switch(directory)
    prepare(directory)
    with pytest.raises(PKIError, match="switch first"):
        retire(directory)
    switch(directory)
    with pytest.raises(PKIError, match="retire the previous CA"):
        prepare(directory)


def test_a_crash_between_the_switchs_renames_is_completed(directory: Path) -> None:
    prepare(directory)
    # What a crash after the key's rename and before the certificate's leaves:
    os.replace(directory / NEXT_KEY_FILE, directory / "ca.key")
    with pytest.raises(PKIError, match="do not match"):
        CertificateAuthority.load(directory)
    assert stage(directory) == CAStage.SWITCHED  # completed on the next look
    assert not (directory / NEXT_CERT_FILE).exists()
    CertificateAuthority.load(directory)


def test_the_coordinators_material_trusts_the_bundle(directory: Path) -> None:
    ca = CertificateAuthority.load(directory)
    key, cert = ca.issue(Identity(CLUSTER, "coordinator", "coordinator"))
    (directory / "tls.key").write_bytes(key)
    (directory / "tls.key").chmod(0o600)
    (directory / "tls.crt").write_bytes(cert)
    assert TLSMaterial.load(directory).ca_pem == ca.cert_pem
    both = prepare(directory)
    assert TLSMaterial.load(directory).ca_pem == both
