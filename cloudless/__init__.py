"""Cloudless: the shared kernel every process imports.

Manifest models (:mod:`cloudless.spec`), Temporal payload models (:mod:`cloudless.model`),
the entity contracts and their typed handles (:mod:`cloudless.contracts`), PKI and
enrollment tokens, mTLS helpers, the gRPC API (:mod:`cloudless.api`), the client library
behind ``cloudlessctl`` and the CLI itself. It imports nothing of ``workflows``,
``activities``, ``workers``, ``agent`` or ``transit`` (``lint-imports`` checks), except
:mod:`cloudless.testing`, the test fixtures on top.
"""

__version__ = "0.1.0"
