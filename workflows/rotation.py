"""``key-rotation/<cluster>``: rotate the secrets master key and rewrap every data key.

Started by the Temporal Schedule created at bootstrap (default every 90 days) or on
demand (``cloudlessctl secrets rotate``). Steps: rotate the transit key; rewrap, in
batches, every secret whose data key is wrapped under an older version (found through
the ``CloudlessKeyVersion`` search attribute); once nothing is left and a settle period
has passed, raise ``min_decryption_version`` so old key versions can no longer decrypt.
Every step is an idempotent activity, so a worker killed mid-rotation resumes where the
history says it was. Progress is in the memo, the ``CloudlessPhase`` search attribute and
the ``progress`` query, so it shows in the Temporal UI.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from cloudless.contracts import rotation
    from cloudless.contracts.names import SA_PHASE
    from cloudless.secrets.model import (
        FinalizeInput,
        KeyVersions,
        RewrapBatchInput,
        RewrapBatchResult,
        RotateKeyInput,
        RotationInput,
        RotationProgress,
        SecretRef,
        SecretsBelowInput,
    )

_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
_SHORT = timedelta(seconds=30)
#: Empty listings in a row (visibility is eventually consistent) before settling.
EMPTY_ROUNDS = 2


@workflow.defn(name=rotation.WORKFLOW.name)
class KeyRotationWorkflow:
    def __init__(self) -> None:
        self._progress = RotationProgress()

    @workflow.query(name=rotation.PROGRESS.name)
    def progress(self) -> RotationProgress:
        return self._progress

    def _report(self, state: str) -> None:
        self._progress.state = state
        workflow.upsert_search_attributes([SA_PHASE.value_set(state)])
        workflow.upsert_memo({"progress": self._progress.model_dump()})

    @workflow.run
    async def run(self, inp: RotationInput) -> RotationProgress:
        self._progress.started_at = workflow.now().timestamp()
        self._report("Rotating")
        versions: KeyVersions = await workflow.execute_activity(
            "master_key_versions",
            start_to_close_timeout=_SHORT,
            retry_policy=_RETRY,
            result_type=KeyVersions,
        )
        target: int = await workflow.execute_activity(
            "rotate_master_key",
            RotateKeyInput(key_name=inp.key_name, expected_latest=versions.latest_version),
            start_to_close_timeout=_SHORT,
            retry_policy=_RETRY,
            result_type=int,
        )
        self._progress.target_version = target
        self._report("Rewrapping")
        await self._rewrap_all(inp, target)
        self._report("Finalizing")
        await workflow.execute_activity(
            "finalize_rotation",
            FinalizeInput(key_name=inp.key_name, min_decryption_version=target),
            start_to_close_timeout=_SHORT,
            retry_policy=_RETRY,
        )
        self._progress.finished_at = workflow.now().timestamp()
        self._report("Done")
        return self._progress

    async def _rewrap_all(self, inp: RotationInput, target: int) -> None:
        empty = 0
        settled = False
        while True:
            batch: list[SecretRef] = await workflow.execute_activity(
                "secrets_below",
                SecretsBelowInput(target_version=target, limit=inp.batch_size),
                start_to_close_timeout=_SHORT,
                retry_policy=_RETRY,
                result_type=list[SecretRef],
            )
            if not batch:
                empty += 1
                if empty >= EMPTY_ROUNDS and settled:
                    return
                if empty >= EMPTY_ROUNDS:
                    # Let creates/updates that took an old data key commit and show up.
                    await workflow.sleep(timedelta(seconds=inp.settle_seconds))
                    settled, empty = True, 0
                else:
                    await workflow.sleep(timedelta(seconds=1))
                continue
            empty, settled = 0, False
            self._progress.remaining = len(batch)
            result: RewrapBatchResult = await workflow.execute_activity(
                "rewrap_batch",
                RewrapBatchInput(key_name=inp.key_name, target_version=target, secrets=batch),
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=_RETRY,
                result_type=RewrapBatchResult,
            )
            self._progress.rewrapped += result.rewrapped
            self._progress.remaining = 0
            self._report("Rewrapping")
            if result.rewrapped == 0:
                # Visibility still lists secrets that are already rewrapped; let it catch up.
                await workflow.sleep(timedelta(seconds=1))
            elif inp.batch_interval_seconds > 0:
                await workflow.sleep(timedelta(seconds=inp.batch_interval_seconds))
