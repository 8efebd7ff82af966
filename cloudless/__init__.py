"""Cloudless: the shared kernel every process imports.

Manifest models (:mod:`cloudless.spec`), Temporal payload models (:mod:`cloudless.model`),
stable names (:mod:`cloudless.naming`), PKI and enrollment tokens, mTLS helpers, the gRPC
API (:mod:`cloudless.api`), the client library behind ``cloudlessctl`` and the CLI itself.
It imports nothing of ``workflows``, ``activities``, ``workers`` or ``agent``.
"""

__version__ = "0.1.0"
