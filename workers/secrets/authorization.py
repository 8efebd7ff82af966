"""Who may mint an access token: an admin, or a node running a replica that references the
secret for that audience."""

from __future__ import annotations

import time
from collections.abc import Callable

from temporalio.client import Client
from temporalio.service import RPCError

from cloudless.contracts import LedgerHandle, WorkloadHandle
from cloudless.errors import SecretError
from cloudless.pki import Identity
from cloudless.spec import audience_problem
from cloudless.workloads import secret_references
from workers.secrets.store import RPC_TIMEOUT

#: Node authorization (which secrets a node's replicas reference) is re-read this often.
NODE_AUTHZ_TTL = 5.0

Reference = tuple[str, str, str]  # (namespace, name, audience)


class MintAuthorization:
    def __init__(
        self, client: Client, cluster: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._client = client
        self._cluster = cluster
        self._clock = clock
        self._node_refs: dict[str, tuple[float, frozenset[Reference]]] = {}

    async def check(self, caller: Identity, namespace: str, name: str, audience: str) -> None:
        """Raise :class:`SecretError` unless ``caller`` may mint a token for the secret
        and audience (whether the secret declares the audience is the caller's check)."""
        problem = audience_problem(audience)
        if problem:
            raise SecretError(f"audience {problem}")
        if caller.role == "node":
            if (namespace, name, audience) not in await self.node_references(caller.name):
                raise SecretError(
                    f"node {caller.name} runs no replica that references secret "
                    f"{namespace}/{name} for audience {audience!r}",
                    "PERMISSION_DENIED",
                )
        elif caller.role != "admin":
            raise SecretError(
                f"{caller.role} certificates cannot mint access tokens", "PERMISSION_DENIED"
            )

    async def node_references(self, node_id: str) -> frozenset[Reference]:
        """(namespace, name, audience) of every secret the node's replicas reference."""
        cached = self._node_refs.get(node_id)
        now = self._clock()
        if cached is not None and now - cached[0] < NODE_AUTHZ_TTL:
            return cached[1]
        ledger = LedgerHandle(self._client, self._cluster)
        workloads = await ledger.node_workloads(node_id, rpc_timeout=RPC_TIMEOUT)
        refs: set[Reference] = set()
        for key in workloads:
            try:
                status = await WorkloadHandle.of(self._client, key).status(rpc_timeout=RPC_TIMEOUT)
            except RPCError:
                continue
            if status.manifest is not None:
                refs |= secret_references(status.manifest)
        result = frozenset(refs)
        self._node_refs[node_id] = (now, result)
        return result
