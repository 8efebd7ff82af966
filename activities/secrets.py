"""Activities of master-key rotation: transit calls and rewrapping secret workflows.

Each one is idempotent so the rotation workflow can retry it after a worker dies: rotate
only when transit is still at the version the workflow saw, rewrap only data keys still
below the target version, and swap a rewrapped key in only if the secret still holds the
key that was rewrapped.
"""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError

from cloudless.contracts import SecretHandle, gone, secret
from cloudless.secrets.masterkey import MasterKey
from cloudless.secrets.model import (
    FinalizeInput,
    KeyVersions,
    RewrapBatchInput,
    RewrapBatchResult,
    RewrapInput,
    RotateKeyInput,
    SecretRef,
    SecretsBelowInput,
    SecretView,
)

#: Secret workflows updated at once while rewrapping one batch.
REWRAP_CONCURRENCY = 16


class SecretActivities:
    def __init__(self, client: Client, master: MasterKey, cluster: str) -> None:
        self._client = client
        self._master = master
        self._cluster = cluster

    @activity.defn(name="master_key_versions")
    async def master_key_versions(self) -> KeyVersions:
        info = await asyncio.to_thread(self._master.ensure)
        return KeyVersions(
            latest_version=info.latest_version, min_decryption_version=info.min_decryption_version
        )

    @activity.defn(name="rotate_master_key")
    async def rotate_master_key(self, inp: RotateKeyInput) -> int:
        """Rotate once; a retry after a rotation that already happened rotates no more."""
        info = await asyncio.to_thread(self._master.info)
        if info.latest_version != inp.expected_latest:
            return info.latest_version
        return await asyncio.to_thread(self._master.rotate)

    @activity.defn(name="secrets_below")
    async def secrets_below(self, inp: SecretsBelowInput) -> list[SecretRef]:
        """Live secrets whose data key is wrapped under an older master-key version."""
        query = secret.live_secrets_query(
            self._cluster, f"CloudlessKeyVersion < {int(inp.target_version)}"
        )
        found: list[SecretRef] = []
        async for wf in self._client.list_workflows(query, limit=inp.limit):
            namespace, name = secret.split_workflow_id(wf.id)
            found.append(SecretRef(namespace=namespace, name=name))
        return found

    @activity.defn(name="rewrap_batch")
    async def rewrap_batch(self, inp: RewrapBatchInput) -> RewrapBatchResult:
        views = await asyncio.gather(*(self._view(ref) for ref in inp.secrets))
        stale = [v for v in views if v is not None and v.record.key_version < inp.target_version]
        if not stale:
            return RewrapBatchResult(rewrapped=0, skipped=len(inp.secrets))
        fresh = await asyncio.to_thread(self._master.rewrap, [v.record.wrapped_key for v in stale])
        gate = asyncio.Semaphore(REWRAP_CONCURRENCY)
        done = 0

        async def swap(view: SecretView, wrapped: str) -> bool:
            nonlocal done
            async with gate:
                applied = await self._swap(view, wrapped, inp.target_version)
            done += 1
            activity.heartbeat(done)
            return applied

        applied = await asyncio.gather(*(swap(v, w) for v, w in zip(stale, fresh, strict=True)))
        count = sum(applied)
        return RewrapBatchResult(rewrapped=count, skipped=len(inp.secrets) - count)

    async def _view(self, ref: SecretRef) -> SecretView | None:
        try:
            return await SecretHandle(self._client, ref.namespace, ref.name).view()
        except RPCError as err:
            if gone(err):
                return None
            raise

    async def _swap(self, view: SecretView, wrapped: str, version: int) -> bool:
        rec = view.record
        handle = SecretHandle(self._client, rec.namespace, rec.name)
        try:
            result = await handle.rewrap(
                RewrapInput(
                    expected_wrapped_key=rec.wrapped_key, wrapped_key=wrapped, key_version=version
                )
            )
        except WorkflowUpdateFailedError:
            return False  # deleted meanwhile (the validator refused)
        except RPCError as err:
            if gone(err):
                return False  # deleted and completed meanwhile
            raise
        return result.applied

    @activity.defn(name="finalize_rotation")
    async def finalize_rotation(self, inp: FinalizeInput) -> None:
        """Old master-key versions stop decrypting: nothing wrapped under them is left."""
        info = await asyncio.to_thread(self._master.info)
        if info.min_decryption_version < inp.min_decryption_version:
            await asyncio.to_thread(
                self._master.set_min_decryption_version, inp.min_decryption_version
            )
