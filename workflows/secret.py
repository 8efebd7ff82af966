"""``secret/<namespace>/<name>``: one secret's durable state, ciphertext only.

The coordinator's SecretsService seals values before they reach this workflow; what is
kept here is the sealed data, the wrapped data key, metadata, the use counts of
use-limited access tokens and revoked token ids. Updates serialize every change per
secret; validators refuse bad requests before anything enters history. Deleting (or
expiring) completes the workflow; creating the name again starts a new run.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from cloudless.contracts import secret
    from cloudless.contracts.names import SA_KEY_VERSION, SA_NAMESPACE, SA_PHASE
    from cloudless.secrets.model import (
        CreateSecretInput,
        DeleteSecretInput,
        ReserveUsesInput,
        RevokeInput,
        RewrapInput,
        RewrapResult,
        SecretRecord,
        SecretState,
        SecretView,
        SecretWorkflowInput,
        TokenUses,
        UpdateSecretInput,
    )

#: A secret workflow that never received its create Update gives up after this.
CREATE_WAIT = timedelta(minutes=1)
#: Keep use counts and revocations this long past the token's expiry (clock skew).
TOKEN_GRACE = 300.0
#: Unexpired use-limited tokens, and unexpired revocations, one secret tracks at most.
#: Both tables ride in the workflow's state beside the sealed record (up to ~910 KiB);
#: 4,096 entries each (~90 and ~60 bytes) keep the state far below Temporal's 2 MiB
#: payload limit, so no number of tokens can wedge the secret's workflow.
MAX_TRACKED_TOKENS = 4096
MAX_HISTORY_EVENTS = 5_000


def _error(kind: str, message: str) -> ApplicationError:
    """Refusals the service maps to gRPC codes by ``type``; never retried."""
    return ApplicationError(message, type=kind, non_retryable=True)


@workflow.defn(name=secret.WORKFLOW.name)
class SecretWorkflow:
    @workflow.init
    def __init__(self, inp: SecretWorkflowInput) -> None:
        self._state: SecretState | None = inp.carried
        self._gone = False

    @workflow.run
    async def run(self, inp: SecretWorkflowInput) -> None:
        try:
            await workflow.wait_condition(lambda: self._state is not None, timeout=CREATE_WAIT)
        except TimeoutError:
            return
        while not self._gone:
            state = self._state
            assert state is not None
            timeout = None
            if state.record.expires_at:
                left = state.record.expires_at - workflow.now().timestamp()
                timeout = timedelta(seconds=max(0.0, left))
            try:
                await workflow.wait_condition(
                    lambda: self._gone or self._should_continue_as_new(), timeout=timeout
                )
            except TimeoutError:
                workflow.logger.info("secret expired")
                self._gone = True
            if not self._gone and self._should_continue_as_new():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(SecretWorkflowInput(carried=self._state))
        await workflow.wait_condition(workflow.all_handlers_finished)

    @staticmethod
    def _should_continue_as_new() -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() > MAX_HISTORY_EVENTS
        )

    # ------------------------------------------------------------------ helpers

    def _current(self) -> SecretState:
        if self._state is None or self._gone:
            raise _error("NotFound", "secret does not exist")
        return self._state

    def _publish(self) -> None:
        """Search attributes and memo: what the UI and ListSecrets show (no values)."""
        rec = self._current().record
        workflow.upsert_search_attributes(
            [
                SA_NAMESPACE.value_set(rec.namespace),
                SA_KEY_VERSION.value_set(rec.key_version),
                SA_PHASE.value_set("Active"),
            ]
        )
        workflow.upsert_memo({"metadata": rec.model_dump(exclude={"ciphertext", "wrapped_key"})})

    def _prune(self) -> None:
        state = self._current()
        horizon = self._horizon()
        state.uses = {k: u for k, u in state.uses.items() if u.expires_at > horizon}
        state.revoked = {k: exp for k, exp in state.revoked.items() if exp > horizon}

    @staticmethod
    def _horizon() -> float:
        """Entries that expired before this (with grace) are dropped by the next prune."""
        return workflow.now().timestamp() - TOKEN_GRACE

    def _check_room(self, table: str, live: int) -> None:
        """Refuse a new entry in a token table that is full of unexpired ones."""
        if live >= MAX_TRACKED_TOKENS:
            rec = self._current().record
            raise _error(
                "ResourceExhausted",
                f"secret {rec.namespace}/{rec.name} already tracks {MAX_TRACKED_TOKENS} "
                f"unexpired {table} (MAX_TRACKED_TOKENS in workflows/secret.py); they drop "
                "out as they expire (24 h at most): wait, or mint tokens with shorter TTLs",
            )

    # ------------------------------------------------------------------ queries

    @workflow.query(name=secret.VIEW.name)
    def view(self) -> SecretView | None:
        if self._state is None or self._gone:
            return None
        return SecretView(record=self._state.record, revoked=dict(self._state.revoked))

    # ------------------------------------------------------------------ updates

    @workflow.update(name=secret.CREATE.name)
    def create(self, inp: CreateSecretInput) -> SecretRecord:
        self._state = SecretState(record=inp.record)
        self._publish()
        return inp.record

    @create.validator
    def _check_create(self, inp: CreateSecretInput) -> None:
        if self._gone:
            raise _error("Aborted", "the secret is being deleted; retry the create")
        if self._state is not None:
            rec = self._state.record
            raise _error(
                "AlreadyExists",
                f"secret {rec.namespace}/{rec.name} already exists (version {rec.version}); "
                "use update, or delete it first",
            )

    @workflow.update(name=secret.UPDATE.name)
    def update(self, inp: UpdateSecretInput) -> SecretRecord:
        state = self._current()
        rec = state.record
        rec.version = inp.expected_version + 1
        rec.ciphertext = inp.ciphertext
        rec.wrapped_key = inp.wrapped_key
        rec.key_version = inp.key_version
        rec.keys = list(inp.keys)
        rec.updated_at = inp.updated_at
        self._prune()
        self._publish()
        return rec

    @update.validator
    def _check_update(self, inp: UpdateSecretInput) -> None:
        rec = self._current().record
        if rec.immutable:
            raise _error(
                "FailedPrecondition",
                f"secret {rec.namespace}/{rec.name} is immutable; create a new secret "
                "under another name instead",
            )
        if inp.expected_version != rec.version:
            raise _error(
                "Aborted",
                f"secret {rec.namespace}/{rec.name} is at version {rec.version}, "
                f"not {inp.expected_version}; re-read and retry",
            )

    @workflow.update(name=secret.DELETE.name)
    def delete(self, inp: DeleteSecretInput) -> bool:
        self._current()
        self._gone = True
        workflow.upsert_search_attributes([SA_PHASE.value_set("Deleted")])
        return True

    @delete.validator
    def _check_delete(self, inp: DeleteSecretInput) -> None:
        self._current()

    @workflow.update(name=secret.RESERVE_USES.name)
    def reserve_uses(self, inp: ReserveUsesInput) -> int:
        """Grant up to ``want`` more uses of a use-limited token; 0 once exhausted."""
        state = self._current()
        self._prune()
        uses = state.uses.setdefault(
            inp.token_id, TokenUses(max_uses=inp.max_uses, expires_at=inp.expires_at)
        )
        grant = max(0, min(inp.want, uses.max_uses - uses.reserved))
        uses.reserved += grant
        return grant

    @reserve_uses.validator
    def _check_reserve(self, inp: ReserveUsesInput) -> None:
        state = self._current()
        if inp.token_id in state.revoked:
            raise _error("PermissionDenied", f"access token {inp.token_id} was revoked")
        if inp.max_uses <= 0 or inp.want <= 0:
            raise _error("InvalidArgument", "reserve_uses needs max_uses > 0 and want > 0")
        if inp.token_id not in state.uses:
            horizon = self._horizon()
            live = sum(1 for u in state.uses.values() if u.expires_at > horizon)
            self._check_room("use-limited tokens", live)

    @workflow.update(name=secret.REVOKE.name)
    def revoke(self, inp: RevokeInput) -> bool:
        state = self._current()
        self._prune()
        fresh = inp.token_id not in state.revoked
        state.revoked[inp.token_id] = inp.expires_at
        return fresh

    @revoke.validator
    def _check_revoke(self, inp: RevokeInput) -> None:
        state = self._current()
        if inp.token_id not in state.revoked:
            horizon = self._horizon()
            live = sum(1 for exp in state.revoked.values() if exp > horizon)
            self._check_room("revocations", live)

    @workflow.update(name=secret.REWRAP.name)
    def rewrap(self, inp: RewrapInput) -> RewrapResult:
        """Swap in a data key rewrapped under a newer master-key version.

        Applied only if the stored wrapped key is still the one that was rewrapped: an
        update in between brought its own (already current) data key.
        """
        rec = self._current().record
        if rec.wrapped_key != inp.expected_wrapped_key or inp.key_version < rec.key_version:
            return RewrapResult(applied=False, key_version=rec.key_version)
        rec.wrapped_key = inp.wrapped_key
        rec.key_version = inp.key_version
        self._publish()
        return RewrapResult(applied=True, key_version=rec.key_version)
