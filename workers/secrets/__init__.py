"""SecretsService: the coordinator's gRPC front for secrets (mTLS on the agent port).

Values are sealed here (envelope encryption, cloudless/secrets/envelope.py) before they
reach Temporal, where each secret is a ``secret/<ns>/<name>`` workflow holding ciphertext
only. The hot read path (GetSecret with a warm cache) touches neither Temporal nor
transit: records, unwrapped data keys and decrypted values are cached in this process's
memory, invalidated by local writes and bounded by a short TTL for writes made through
another coordinator. Every operation and denial is written to the audit log before the
RPC answers; mutations and denials are also fsynced first (group commit, see
cloudless/secrets/audit.py). See docs/design/secrets.md.

One module per concern:

- :mod:`~workers.secrets.service`: the gRPC servicer (one method per RPC) and the
  runtime the coordinator starts;
- :mod:`~workers.secrets.refusals`: who the caller is, and audited refusals;
- :mod:`~workers.secrets.authorization`: who may mint an access token;
- :mod:`~workers.secrets.validation`: request checks and the metadata the API shows;
- :mod:`~workers.secrets.store`: the cached records, data keys and use leases;
- :mod:`~workers.secrets.rotation`: master-key rotation control and its Schedule.
"""

from __future__ import annotations

from workers.secrets.authorization import NODE_AUTHZ_TTL, MintAuthorization
from workers.secrets.refusals import ANONYMOUS, Refusals
from workers.secrets.rotation import RotationControl, ensure_rotation_schedule
from workers.secrets.service import MAX_CLIENT_CACHE, SecretsRuntime, SecretsServicer
from workers.secrets.store import DATA_KEY_CACHE, RECORD_TTL, RPC_TIMEOUT, USE_BLOCK, SecretStore
from workers.secrets.validation import MAX_AUDIENCES, MAX_DATA_BYTES

__all__ = [
    "ANONYMOUS",
    "DATA_KEY_CACHE",
    "MAX_AUDIENCES",
    "MAX_CLIENT_CACHE",
    "MAX_DATA_BYTES",
    "NODE_AUTHZ_TTL",
    "RECORD_TTL",
    "RPC_TIMEOUT",
    "USE_BLOCK",
    "MintAuthorization",
    "Refusals",
    "RotationControl",
    "SecretStore",
    "SecretsRuntime",
    "SecretsServicer",
    "ensure_rotation_schedule",
]
