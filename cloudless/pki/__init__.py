"""Cluster certificate authority and certificate helpers (being split by concern: see the
next commit)."""

from cloudless.pki.authority import *  # noqa: F403
from cloudless.pki.authority import check_csr as check_csr
