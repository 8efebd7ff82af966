"""Error types shared by every Cloudless process.

Each error carries enough context for a one-line, actionable message: what was wrong,
where, and how to fix it. The CLI prints ``str(error)`` and exits non-zero.
"""

from __future__ import annotations


class CloudlessError(Exception):
    """Base class for every error Cloudless raises on purpose."""


class ConfigError(CloudlessError):
    """A setting, flag or file needed to start a process is missing or invalid."""


class EnrollmentError(CloudlessError):
    """An enrollment token or CSR was refused; the message says why."""


class PKIError(CloudlessError):
    """A certificate, key or CSR could not be created, loaded or validated."""


class RuntimeDriverError(CloudlessError):
    """A runtime driver could not run, stop or inspect a replica."""


class NotFoundError(CloudlessError):
    """A named object (workload, node, replica) does not exist."""


class SecretError(CloudlessError):
    """A secret operation was refused or failed; ``code`` maps to a gRPC status."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.code = code


class PayloadTooLargeError(CloudlessError):
    """A value is over a bound at the Temporal boundary (``cloudless.contracts.limits``);
    the message names the value, its size and the limit. Nothing was sent."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit
