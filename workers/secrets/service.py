"""SecretsService: the coordinator's gRPC front for secrets (mTLS on the agent port).

Each RPC checks its caller and request (:mod:`~workers.secrets.refusals`,
:mod:`~workers.secrets.validation`), works on the cached view of the secret workflows
(:mod:`~workers.secrets.store`) and audits the outcome before it answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from temporalio.client import Client

from activities.secrets import SecretActivities
from cloudless.api import secrets_pb2, secrets_pb2_grpc
from cloudless.contracts import secret
from cloudless.errors import SecretError
from cloudless.pki import Identity, is_dns_label
from cloudless.revocation import RevocationList
from cloudless.secrets.access import MAX_TTL, AccessClaims, AccessTokens
from cloudless.secrets.audit import AuditLog, AuditQuery, query_problem
from cloudless.secrets.masterkey import MasterKey
from cloudless.secrets.model import (
    CreateSecretInput,
    DeleteSecretInput,
    RevokeInput,
    RotationInput,
    SecretRecord,
    UpdateSecretInput,
)
from workers.secrets.authorization import MintAuthorization
from workers.secrets.refusals import Context, Refusals
from workers.secrets.rotation import RotationControl
from workers.secrets.store import RPC_TIMEOUT, SecretStore
from workers.secrets.validation import audience_problems, data_problems, metadata

#: Upper bound on how long an agent may keep a value in memory.
MAX_CLIENT_CACHE = 300.0


class SecretsServicer(secrets_pb2_grpc.SecretsServiceServicer):
    def __init__(
        self,
        client: Client,
        cluster: str,
        master: MasterKey,
        tokens: AccessTokens,
        audit: AuditLog,
        *,
        on_change: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        rotation: RotationControl | None = None,
        revocations: RevocationList | None = None,
    ) -> None:
        self._client = client
        self._cluster = cluster
        self._master = master
        self._tokens = tokens
        self._audit = audit
        self.on_change = on_change
        self._clock = clock
        self._rotation = rotation
        self.store = SecretStore(client, master, clock)
        self._refusals = Refusals(cluster, audit, revocations)
        self._mint_authorization = MintAuthorization(client, cluster, clock)

    def _changed(self, namespace: str, name: str) -> None:
        self.store.forget(namespace, name)
        if self.on_change is not None:
            self.on_change(f"{namespace}/{name}")

    # ------------------------------------------------------------------ RPCs

    async def CreateSecret(
        self, request: secrets_pb2.CreateSecretRequest, context: Context
    ) -> secrets_pb2.CreateSecretResponse:
        op, ns, name = "CREATE", request.namespace, request.name
        caller = await self._refusals.caller(context, op, namespace=ns, name=name)
        await self._refusals.require_admin(context, op, caller, namespace=ns, name=name)
        await self._refusals.check_ref(context, op, caller, ns, name)
        audiences = list(request.audiences)
        problems = data_problems(request.data) + audience_problems(audiences)
        if request.ttl_seconds < 0:
            problems.append("ttl_seconds must be >= 0 (0: never expires)")
        await self._refusals.invalid(context, op, caller, problems, namespace=ns, name=name)
        record = await self._refusals.guard(
            context, op, caller, self._create(caller, request, audiences), namespace=ns, name=name
        )
        self._changed(ns, name)
        await self._audit.commit(
            op, "ALLOWED", caller.uri(), source=context.peer(), namespace=ns, name=name, version=1
        )
        return secrets_pb2.CreateSecretResponse(metadata=metadata(record))

    async def _create(
        self, caller: Identity, request: secrets_pb2.CreateSecretRequest, audiences: list[str]
    ) -> SecretRecord:
        ns, name, now = request.namespace, request.name, self._clock()
        ciphertext, wrapped, key_version = await self.store.sealed(ns, name, 1, request.data)
        record = SecretRecord(
            namespace=ns,
            name=name,
            version=1,
            audiences=audiences,
            immutable=request.immutable,
            keys=sorted(request.data),
            created_at=now,
            updated_at=now,
            expires_at=now + request.ttl_seconds if request.ttl_seconds else 0.0,
            created_by=caller.uri(),
            ciphertext=ciphertext,
            wrapped_key=wrapped,
            key_version=key_version,
        )
        return await self.store.handle(ns, name).create(
            CreateSecretInput(record=record), cluster=self._cluster, rpc_timeout=RPC_TIMEOUT
        )

    async def GetSecret(
        self, request: secrets_pb2.GetSecretRequest, context: Context
    ) -> secrets_pb2.GetSecretResponse:
        op, ns, name = "ACCESS", request.namespace, request.name
        caller = await self._refusals.caller(context, op, namespace=ns, name=name)
        response = await self._refusals.guard(
            context, op, caller, self._get(caller, request, context.peer()), namespace=ns, name=name
        )
        return response

    async def _get(
        self, caller: Identity, request: secrets_pb2.GetSecretRequest, peer: str
    ) -> secrets_pb2.GetSecretResponse:
        ns, name = request.namespace, request.name
        claims = self._tokens.verify(request.token, now=self._clock())
        if (claims.namespace, claims.name) != (ns, name):
            raise SecretError(
                f"access token {claims.token_id} is for {claims.scope}, not {ns}/{name}",
                "PERMISSION_DENIED",
            )
        if claims.subject and claims.subject != caller.uri():
            raise SecretError(
                f"access token {claims.token_id} was issued to {claims.subject}, "
                f"not {caller.uri()}",
                "PERMISSION_DENIED",
            )
        entry = await self.store.load(ns, name)
        rec = entry.view.record
        now = self._clock()
        if claims.audience not in rec.audiences:
            raise SecretError(
                f"audience {claims.audience!r} may not read {ns}/{name} "
                f"(allowed: {', '.join(rec.audiences)})",
                "PERMISSION_DENIED",
            )
        if claims.token_id in entry.view.revoked:
            raise SecretError(f"access token {claims.token_id} was revoked", "PERMISSION_DENIED")
        if rec.expires_at and now >= rec.expires_at:
            raise SecretError(f"secret {ns}/{name} expired", "NOT_FOUND")
        if claims.max_uses:
            await self.store.take_use(claims)
        data = await self.store.open(entry)
        ttl = min(claims.expires_at - now, MAX_CLIENT_CACHE)
        if rec.expires_at:
            ttl = min(ttl, rec.expires_at - now)
        self._audit.record(
            "ACCESS",
            "ALLOWED",
            caller.uri(),
            source=peer,
            namespace=ns,
            name=name,
            token_id=claims.token_id,
            version=rec.version,
        )
        return secrets_pb2.GetSecretResponse(
            metadata=metadata(rec), data=data, cache_ttl_seconds=max(0.0, ttl)
        )

    async def UpdateSecret(
        self, request: secrets_pb2.UpdateSecretRequest, context: Context
    ) -> secrets_pb2.UpdateSecretResponse:
        op, ns, name = "UPDATE", request.namespace, request.name
        caller = await self._refusals.caller(context, op, namespace=ns, name=name)
        await self._refusals.require_admin(context, op, caller, namespace=ns, name=name)
        await self._refusals.check_ref(context, op, caller, ns, name)
        problems = data_problems(request.data)
        await self._refusals.invalid(context, op, caller, problems, namespace=ns, name=name)
        record = await self._refusals.guard(
            context, op, caller, self._update(request), namespace=ns, name=name
        )
        self._changed(ns, name)
        await self._audit.commit(
            op,
            "ALLOWED",
            caller.uri(),
            source=context.peer(),
            namespace=ns,
            name=name,
            version=record.version,
        )
        return secrets_pb2.UpdateSecretResponse(metadata=metadata(record))

    async def _update(self, request: secrets_pb2.UpdateSecretRequest) -> SecretRecord:
        ns, name = request.namespace, request.name
        current = (await self.store.load(ns, name, fresh=True)).view.record
        if current.immutable:
            raise SecretError(
                f"secret {ns}/{name} is immutable; create a new secret under another name",
                "FAILED_PRECONDITION",
            )
        expected = request.expected_version or current.version
        if expected != current.version:
            raise SecretError(
                f"secret {ns}/{name} is at version {current.version}, not {expected}",
                "FAILED_PRECONDITION",
            )
        ciphertext, wrapped, key_version = await self.store.sealed(
            ns, name, expected + 1, request.data
        )
        return await self.store.handle(ns, name).update(
            UpdateSecretInput(
                expected_version=expected,
                ciphertext=ciphertext,
                wrapped_key=wrapped,
                key_version=key_version,
                keys=sorted(request.data),
                updated_at=self._clock(),
            ),
            rpc_timeout=RPC_TIMEOUT,
        )

    async def DeleteSecret(
        self, request: secrets_pb2.DeleteSecretRequest, context: Context
    ) -> secrets_pb2.DeleteSecretResponse:
        op, ns, name = "DELETE", request.namespace, request.name
        caller = await self._refusals.caller(context, op, namespace=ns, name=name)
        await self._refusals.require_admin(context, op, caller, namespace=ns, name=name)
        await self._refusals.check_ref(context, op, caller, ns, name)
        await self._refusals.guard(
            context,
            op,
            caller,
            self.store.handle(ns, name).delete(
                DeleteSecretInput(actor=caller.uri()),
                rpc_timeout=RPC_TIMEOUT,
            ),
            namespace=ns,
            name=name,
        )
        self._changed(ns, name)
        await self._audit.commit(
            op, "ALLOWED", caller.uri(), source=context.peer(), namespace=ns, name=name
        )
        return secrets_pb2.DeleteSecretResponse(deleted=True)

    async def ListSecrets(
        self, request: secrets_pb2.ListSecretsRequest, context: Context
    ) -> secrets_pb2.ListSecretsResponse:
        op, ns = "LIST", request.namespace
        caller = await self._refusals.caller(context, op, namespace=ns)
        await self._refusals.require_admin(context, op, caller, namespace=ns)
        if ns and not is_dns_label(ns):
            await self._refusals.deny(
                context,
                op,
                caller,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"namespace {ns!r} must be a DNS-1123 label",
                namespace=ns,
            )
        records = await self._refusals.guard(context, op, caller, self._list(ns), namespace=ns)
        self._audit.record(op, "ALLOWED", caller.uri(), source=context.peer(), namespace=ns)
        return secrets_pb2.ListSecretsResponse(secrets=[metadata(r) for r in records])

    async def _list(self, namespace: str) -> list[SecretRecord]:
        by_namespace = [f"CloudlessNamespace = '{namespace}'"] if namespace else []
        query = secret.live_secrets_query(self._cluster, *by_namespace)
        out = []
        async for wf in self._client.list_workflows(query):
            memo = await wf.memo()
            meta = memo.get("metadata")
            if isinstance(meta, dict):
                out.append(SecretRecord.model_validate(meta))
        return sorted(out, key=lambda r: (r.namespace, r.name))

    async def GenerateAccessToken(
        self, request: secrets_pb2.GenerateAccessTokenRequest, context: Context
    ) -> secrets_pb2.GenerateAccessTokenResponse:
        op, ns, name = "GENERATE_TOKEN", request.namespace, request.name
        caller = await self._refusals.caller(context, op, namespace=ns, name=name)
        await self._refusals.check_ref(context, op, caller, ns, name)
        claims, token = await self._refusals.guard(
            context, op, caller, self._mint(caller, request), namespace=ns, name=name
        )
        self._audit.record(
            op,
            "ALLOWED",
            caller.uri(),
            source=context.peer(),
            namespace=ns,
            name=name,
            token_id=claims.token_id,
        )
        return secrets_pb2.GenerateAccessTokenResponse(
            token=token, token_id=claims.token_id, expires_at=claims.expires_at
        )

    async def _mint(
        self, caller: Identity, request: secrets_pb2.GenerateAccessTokenRequest
    ) -> tuple[AccessClaims, str]:
        ns, name, audience = request.namespace, request.name, request.audience
        await self._mint_authorization.check(caller, ns, name, audience)
        rec = (await self.store.load(ns, name)).view.record
        if audience not in rec.audiences:
            raise SecretError(
                f"audience {audience!r} is not declared by secret {ns}/{name} "
                f"(declared: {', '.join(rec.audiences)})",
                "PERMISSION_DENIED",
            )
        token, claims = self._tokens.mint(
            namespace=ns,
            name=name,
            audience=audience,
            # Node tokens only work for that node; admin tokens are bearer tokens that
            # still need a cluster certificate to be presented.
            subject=caller.uri() if caller.role == "node" else "",
            ttl=request.ttl_seconds,
            max_uses=request.max_uses,
            now=self._clock(),
        )
        return claims, token

    async def RevokeAccessToken(
        self, request: secrets_pb2.RevokeAccessTokenRequest, context: Context
    ) -> secrets_pb2.RevokeAccessTokenResponse:
        op, ns, name, jti = "REVOKE", request.namespace, request.name, request.token_id
        caller = await self._refusals.caller(context, op, namespace=ns, name=name, token_id=jti)
        await self._refusals.require_admin(
            context, op, caller, namespace=ns, name=name, token_id=jti
        )
        await self._refusals.check_ref(context, op, caller, ns, name)
        if not jti or len(jti) > 128:
            await self._refusals.deny(
                context,
                op,
                caller,
                grpc.StatusCode.INVALID_ARGUMENT,
                "token_id must be the id GenerateAccessToken returned",
                namespace=ns,
                name=name,
            )
        fresh: bool = await self._refusals.guard(
            context,
            op,
            caller,
            self.store.handle(ns, name).revoke(
                RevokeInput(token_id=jti, expires_at=self._clock() + MAX_TTL),
                rpc_timeout=RPC_TIMEOUT,
            ),
            namespace=ns,
            name=name,
            token_id=jti,
        )
        self.store.forget_lease(jti)
        self.store.forget(ns, name)
        await self._audit.commit(
            op,
            "ALLOWED",
            caller.uri(),
            source=context.peer(),
            namespace=ns,
            name=name,
            token_id=jti,
        )
        return secrets_pb2.RevokeAccessTokenResponse(revoked=fresh)

    async def GetSecretAuditLog(
        self, request: secrets_pb2.GetSecretAuditLogRequest, context: Context
    ) -> secrets_pb2.GetSecretAuditLogResponse:
        op = "AUDIT"
        caller = await self._refusals.caller(context, op, namespace=request.namespace)
        await self._refusals.require_admin(context, op, caller, namespace=request.namespace)
        q = AuditQuery(
            namespace=request.namespace,
            name=request.name,
            since=request.since,
            until=request.until,
            operation=request.operation,
            outcome=request.outcome,
            limit=request.limit,
        )
        problem = query_problem(q)
        if problem:
            await self._refusals.deny(
                context, op, caller, grpc.StatusCode.INVALID_ARGUMENT, problem
            )
        entries = await asyncio.to_thread(self._audit.query, q)
        return secrets_pb2.GetSecretAuditLogResponse(
            entries=[secrets_pb2.AuditEntry(**e.__dict__) for e in entries]
        )

    async def GetMasterKeyInfo(
        self, request: secrets_pb2.GetMasterKeyInfoRequest, context: Context
    ) -> secrets_pb2.GetMasterKeyInfoResponse:
        op = "KEY_INFO"
        caller = await self._refusals.caller(context, op)
        await self._refusals.require_admin(context, op, caller)
        info = await self._refusals.guard(
            context, op, caller, asyncio.to_thread(self._master.ensure)
        )
        response = secrets_pb2.GetMasterKeyInfoResponse(
            key_name=info.name,
            key_type=info.key_type,
            latest_version=info.latest_version,
            min_decryption_version=info.min_decryption_version,
            last_rotated_at=info.last_rotated_at,
            transit_addr=str(getattr(self._master.client, "url", "")),
        )
        if self._rotation is not None:
            await self._refusals.guard(context, op, caller, self._rotation.describe(response))
        return response

    async def RotateMasterKey(
        self, request: secrets_pb2.RotateMasterKeyRequest, context: Context
    ) -> secrets_pb2.RotateMasterKeyResponse:
        op = "ROTATE"
        caller = await self._refusals.caller(context, op)
        await self._refusals.require_admin(context, op, caller)
        if self._rotation is None:
            await self._refusals.deny(
                context,
                op,
                caller,
                grpc.StatusCode.UNIMPLEMENTED,
                "this coordinator runs without key rotation",
            )
            raise AssertionError("unreachable")
        progress = await self._refusals.guard(
            context, op, caller, self._rotation.rotate(wait=request.wait)
        )
        self.store.entries.clear()  # records now carry rewrapped keys
        await self._audit.commit(
            op,
            "ALLOWED",
            caller.uri(),
            source=context.peer(),
            reason=f"rotation {progress.workflow_id}: {progress.state}",
            version=progress.target_version,
        )
        return secrets_pb2.RotateMasterKeyResponse(progress=progress)


@dataclass
class SecretsRuntime:
    """What the coordinator runs for secrets: the gRPC servicer and the rotation activities."""

    servicer: SecretsServicer
    activities_impl: SecretActivities

    @classmethod
    def build(
        cls,
        client: Client,
        cluster: str,
        master: MasterKey,
        tokens: AccessTokens,
        audit: AuditLog,
        *,
        rotation_plan: RotationInput,
        revocations: RevocationList | None = None,
    ) -> SecretsRuntime:
        rotation = RotationControl(client, rotation_plan)
        servicer = SecretsServicer(
            client, cluster, master, tokens, audit, rotation=rotation, revocations=revocations
        )
        return cls(servicer, SecretActivities(client, master, cluster))

    def activities(self) -> list[Callable[..., Any]]:
        a = self.activities_impl
        return [
            a.master_key_versions,
            a.rotate_master_key,
            a.secrets_below,
            a.rewrap_batch,
            a.finalize_rotation,
        ]
