"""The cluster CA rotates through an overlap, on the coordinator's disk.

Three stages, each idempotent, each a few file operations under an exclusive lock on the
CA's directory (coordinators sharing the directory never interleave them):

1. :func:`prepare`: a next CA is made (``ca-next.key``/``ca-next.crt``, same cluster) and
   the trust bundle ``trust.pem`` becomes the current CA and the next. Every party learns
   the bundle (the coordinators at once, agents with their next certificate renewal,
   the local admin's files) while the current CA still issues.
2. :func:`switch`: the next CA becomes the issuer (``ca.key``/``ca.crt``); the old
   certificate is kept as ``ca-prev.crt``, and the bundle still holds both, so every
   certificate of the old CA is still accepted while the new one replaces them.
3. :func:`retire`: the bundle becomes the new CA alone; certificates of the old CA are
   refused from then on.

``trust.pem`` absent means the bundle is ``ca.crt`` alone (no rotation under way).
A crash between the two renames of :func:`switch` leaves ``ca.key`` of the new CA with
``ca.crt`` of the old; :func:`finish_interrupted_switch` (run by every stage and by
:func:`trust_bundle`) completes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

from cloudless.errors import PKIError
from cloudless.pki.authority import CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority
from cloudless.pki.files import read_public_file, write_public_file

TRUST_FILE = "trust.pem"
NEXT_KEY_FILE = "ca-next.key"
NEXT_CERT_FILE = "ca-next.crt"
PREV_CERT_FILE = "ca-prev.crt"
LOCK_FILE = ".ca.lock"


class CAStage(StrEnum):
    """Where a CA rotation is."""

    #: No rotation under way: one CA issues and is trusted.
    STEADY = "Steady"
    #: A next CA exists and is trusted; the current one still issues.
    PREPARED = "Prepared"
    #: The next CA issues; the previous one is still trusted.
    SWITCHED = "Switched"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def finish_interrupted_switch(directory: Path) -> bool:
    """Complete a :func:`switch` a crash interrupted between its renames; True if it did."""
    next_cert = directory / NEXT_CERT_FILE
    if not next_cert.exists() or (directory / NEXT_KEY_FILE).exists():
        return False
    # ca.key is the next CA's already; its certificate still waits as ca-next.crt, and
    # ca.crt is still the previous CA's.
    if not (directory / PREV_CERT_FILE).exists():
        write_public_file(directory / PREV_CERT_FILE, read_public_file(directory / CA_CERT_FILE))
    os.replace(next_cert, directory / CA_CERT_FILE)
    return True


def trust_bundle(directory: Path) -> bytes:
    """The CA certificates every party of the cluster must trust now."""
    finish_interrupted_switch(directory)
    path = directory / TRUST_FILE
    return read_public_file(path if path.exists() else directory / CA_CERT_FILE)


def stage(directory: Path) -> CAStage:
    """Where the CA rotation in ``directory`` is."""
    finish_interrupted_switch(directory)
    if (directory / NEXT_KEY_FILE).exists():
        return CAStage.PREPARED
    if (directory / PREV_CERT_FILE).exists():
        return CAStage.SWITCHED
    return CAStage.STEADY


def prepare(directory: Path) -> bytes:
    """Stage 1: make the next CA (unless one is made) and trust both; the bundle."""
    with _locked(directory):
        finish_interrupted_switch(directory)
        if (directory / PREV_CERT_FILE).exists():
            raise PKIError(
                "a CA rotation is still switched (ca-prev.crt exists): retire the previous "
                "CA before preparing another rotation"
            )
        current = CertificateAuthority.load(directory)
        if not (directory / NEXT_KEY_FILE).exists():
            nxt = CertificateAuthority.bootstrap(
                directory, current.cluster, key_file=NEXT_KEY_FILE, cert_file=NEXT_CERT_FILE
            )
        else:
            nxt = CertificateAuthority.load(
                directory, key_file=NEXT_KEY_FILE, cert_file=NEXT_CERT_FILE
            )
        bundle = current.cert_pem + nxt.cert_pem
        write_public_file(directory / TRUST_FILE, bundle)
        return bundle


def switch(directory: Path) -> bytes:
    """Stage 2: the next CA becomes the issuer; the bundle (still both) is returned."""
    with _locked(directory):
        if finish_interrupted_switch(directory) or not (directory / NEXT_KEY_FILE).exists():
            if stage(directory) != CAStage.SWITCHED:
                raise PKIError("no CA rotation is prepared: nothing to switch to")
            return trust_bundle(directory)
        CertificateAuthority.load(directory, key_file=NEXT_KEY_FILE, cert_file=NEXT_CERT_FILE)
        write_public_file(directory / PREV_CERT_FILE, read_public_file(directory / CA_CERT_FILE))
        # Key first: a crash after it is completed by finish_interrupted_switch.
        os.replace(directory / NEXT_KEY_FILE, directory / CA_KEY_FILE)
        os.replace(directory / NEXT_CERT_FILE, directory / CA_CERT_FILE)
        CertificateAuthority.load(directory)  # the pair matches
        return trust_bundle(directory)


def retire(directory: Path) -> bytes:
    """Stage 3: trust the issuer alone; the bundle (one CA) is returned."""
    with _locked(directory):
        finish_interrupted_switch(directory)
        if (directory / NEXT_KEY_FILE).exists():
            raise PKIError("the next CA was prepared but not switched to: switch first")
        issuer = read_public_file(directory / CA_CERT_FILE)
        write_public_file(directory / TRUST_FILE, issuer)
        with contextlib.suppress(FileNotFoundError):
            (directory / PREV_CERT_FILE).unlink()
        return issuer


__all__ = [
    "NEXT_CERT_FILE",
    "NEXT_KEY_FILE",
    "PREV_CERT_FILE",
    "TRUST_FILE",
    "CAStage",
    "finish_interrupted_switch",
    "prepare",
    "retire",
    "stage",
    "switch",
    "trust_bundle",
]
