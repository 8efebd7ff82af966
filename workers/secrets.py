"""SecretsService: the coordinator's gRPC front for secrets (mTLS on the agent port).

Values are sealed here (envelope encryption, cloudless/secrets/envelope.py) before they
reach Temporal, where each secret is a ``secret/<ns>/<name>`` workflow holding ciphertext
only. The hot read path (GetSecret with a warm cache) touches neither Temporal nor
transit: records, unwrapped data keys and decrypted values are cached in this process's
memory, invalidated by local writes and bounded by a short TTL for writes made through
another coordinator. Every operation and denial is written to the audit log before the
RPC answers; mutations and denials are also fsynced first (group commit, see
cloudless/secrets/audit.py). See docs/design/secrets.md.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import grpc
import structlog
from temporalio.client import (
    Client,
    Schedule,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.secrets import SecretActivities
from cloudless import tls
from cloudless.api import secrets_pb2, secrets_pb2_grpc
from cloudless.contracts import (
    LedgerHandle,
    RotationHandle,
    SecretHandle,
    WorkloadHandle,
    gone,
    rotation,
    secret,
)
from cloudless.errors import SecretError
from cloudless.pki import Identity, is_dns_label
from cloudless.secrets.access import MAX_TTL, AccessClaims, AccessTokens
from cloudless.secrets.audit import AuditLog, AuditQuery, query_problem
from cloudless.secrets.envelope import open_sealed, seal
from cloudless.secrets.masterkey import MasterKey
from cloudless.secrets.model import (
    CreateSecretInput,
    DeleteSecretInput,
    ReserveUsesInput,
    RevokeInput,
    RotationInput,
    RotationProgress,
    SecretRecord,
    SecretView,
    UpdateSecretInput,
)
from cloudless.spec import audience_problem, is_dns_subdomain, is_secret_key
from cloudless.workloads import secret_references

log = structlog.get_logger("cloudless.secrets")

Context = grpc.aio.ServicerContext[Any, Any]
_T = TypeVar("_T")

#: How long a record read from Temporal is trusted without re-reading it. Local writes
#: invalidate at once; this bounds staleness after writes through another coordinator.
RECORD_TTL = 5.0
#: Upper bound on how long an agent may keep a value in memory.
MAX_CLIENT_CACHE = 300.0
#: Uses of a use-limited token reserved durably at a time (fail safe: a crash loses them).
USE_BLOCK = 16
#: Node authorization (which secrets a node's replicas reference) is re-read this often.
NODE_AUTHZ_TTL = 5.0
MAX_DATA_BYTES = 1 << 20  # 1 MiB of values per secret, as Kubernetes
MAX_AUDIENCES = 32
DATA_KEY_CACHE = 10_000
RPC_TIMEOUT = timedelta(seconds=15)
#: The audit actor of a caller whose certificate names no Cloudless identity.
ANONYMOUS = "anonymous"

_CODE_BY_TYPE = {
    "NotFound": grpc.StatusCode.NOT_FOUND,
    "AlreadyExists": grpc.StatusCode.ALREADY_EXISTS,
    "FailedPrecondition": grpc.StatusCode.FAILED_PRECONDITION,
    "Aborted": grpc.StatusCode.ABORTED,
    "PermissionDenied": grpc.StatusCode.PERMISSION_DENIED,
    "InvalidArgument": grpc.StatusCode.INVALID_ARGUMENT,
}


@dataclass
class _Entry:
    """A cached secret: record and revocations as Temporal last said, values once opened."""

    view: SecretView
    loaded_at: float
    data: dict[str, bytes] | None = None


@dataclass
class _Lease:
    remaining: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _metadata(rec: SecretRecord) -> secrets_pb2.SecretMetadata:
    return secrets_pb2.SecretMetadata(
        namespace=rec.namespace,
        name=rec.name,
        version=rec.version,
        audiences=rec.audiences,
        immutable=rec.immutable,
        keys=rec.keys,
        created_at=rec.created_at,
        updated_at=rec.updated_at,
        expires_at=rec.expires_at,
        key_version=rec.key_version,
        created_by=rec.created_by,
    )


def _ref_problems(namespace: str, name: str) -> list[str]:
    problems = []
    if not is_dns_label(namespace):
        problems.append(
            f"namespace {namespace!r} must be a DNS-1123 label (lower-case letters, digits, '-')"
        )
    if not is_dns_subdomain(name):
        problems.append(
            f"name {name!r} must be a DNS-1123 subdomain (dot-separated lower-case labels)"
        )
    return problems


def _data_problems(data: Mapping[str, bytes]) -> list[str]:
    if not data:
        return ["data must hold at least one key (e.g. --data PASSWORD=...)"]
    problems = [
        f"data key {key!r} must be 1-253 letters, digits, '-', '_' or '.'"
        for key in data
        if not is_secret_key(key)
    ]
    size = sum(len(k) + len(v) for k, v in data.items())
    if size > MAX_DATA_BYTES:
        problems.append(
            f"data is {size} bytes, over the {MAX_DATA_BYTES}-byte limit; "
            "store large blobs elsewhere and keep their key here"
        )
    return problems


def _audience_problems(audiences: list[str]) -> list[str]:
    if not audiences:
        return ["at least one audience is required (who may read it, e.g. --audience backend)"]
    if len(audiences) > MAX_AUDIENCES:
        return [f"at most {MAX_AUDIENCES} audiences, got {len(audiences)}"]
    if len(set(audiences)) != len(audiences):
        return ["audiences must be unique"]
    return [f"audience {p}" for a in audiences if (p := audience_problem(a))]


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
    ) -> None:
        self._client = client
        self._cluster = cluster
        self._master = master
        self._tokens = tokens
        self._audit = audit
        self.on_change = on_change
        self._clock = clock
        self._rotation = rotation
        self._entries: dict[str, _Entry] = {}
        self._data_keys: OrderedDict[str, bytes] = OrderedDict()
        self._leases: dict[str, _Lease] = {}
        self._node_refs: dict[str, tuple[float, frozenset[tuple[str, str, str]]]] = {}

    # ------------------------------------------------------------------ plumbing

    async def _caller(self, context: Context, op: str, **fields: Any) -> Identity:
        """The caller's certificate identity, or an audited UNAUTHENTICATED refusal.

        The TLS handshake already proved the certificate chains to the cluster CA; what is
        left is that it names an identity of *this* cluster (one CA may sign for several).
        A refusal is audited like any other: the actor is what the certificate claimed,
        or ``anonymous`` when it claimed no Cloudless identity.
        """
        identity = tls.peer_identity(context)
        if identity is not None and identity.cluster == self._cluster:
            return identity
        required = f"a client certificate of cluster {self._cluster} is required"
        if identity is None:
            actor = ANONYMOUS
            reason = f"{required}; the caller's certificate names no Cloudless identity"
        else:
            actor = identity.uri()
            reason = f"{required}, not one of cluster {identity.cluster}"
        await self._deny(context, op, actor, grpc.StatusCode.UNAUTHENTICATED, reason, **fields)
        raise AssertionError("unreachable")

    async def _deny(
        self,
        context: Context,
        op: str,
        caller: Identity | str,
        code: grpc.StatusCode,
        reason: str,
        **fields: Any,
    ) -> None:
        """Audit the refusal (durably, before answering), log it, abort the RPC.

        ``caller`` is the verified identity, or the actor string of an unauthenticated one.
        ``reason`` and ``fields`` never hold a value or a token (token ids only).
        """
        outcome = (
            "FAILED"
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
            else "DENIED"
        )
        actor = caller.uri() if isinstance(caller, Identity) else caller
        await self._audit.commit(op, outcome, actor, source=context.peer(), reason=reason, **fields)
        log.info(
            "secrets.refused", operation=op, code=code.name, actor=actor, reason=reason, **fields
        )
        await context.abort(code, reason)

    async def _guard(
        self,
        context: Context,
        op: str,
        caller: Identity,
        work: Awaitable[_T],
        **fields: Any,
    ) -> _T:
        """Run ``work``; turn refusals into an audited gRPC status."""
        try:
            return await work
        except SecretError as err:
            code = grpc.StatusCode[err.code]
            await self._deny(context, op, caller, code, str(err), **fields)
        except WorkflowUpdateFailedError as err:
            cause: BaseException | None = err.cause
            while cause is not None and not isinstance(cause, ApplicationError):
                cause = cause.__cause__
            if isinstance(cause, ApplicationError):
                code = _CODE_BY_TYPE.get(cause.type or "", grpc.StatusCode.INTERNAL)
                await self._deny(context, op, caller, code, cause.message, **fields)
            await self._deny(context, op, caller, grpc.StatusCode.INTERNAL, str(err), **fields)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                what = f"{fields.get('namespace', '')}/{fields.get('name', '')}"
                await self._deny(
                    context,
                    op,
                    caller,
                    grpc.StatusCode.NOT_FOUND,
                    f"secret {what} does not exist",
                    **fields,
                )
            await self._deny(
                context,
                op,
                caller,
                grpc.StatusCode.UNAVAILABLE,
                f"Temporal unavailable: {err.message}",
                **fields,
            )
        raise AssertionError("unreachable")

    async def _require_admin(self, context: Context, op: str, caller: Identity, **f: Any) -> None:
        if caller.role != "admin":
            await self._deny(
                context,
                op,
                caller,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{op} needs an admin certificate; {caller.role} {caller.name} has none",
                **f,
            )

    async def _check_ref(
        self, context: Context, op: str, caller: Identity, namespace: str, name: str
    ) -> None:
        problems = _ref_problems(namespace, name)
        await self._invalid(context, op, caller, problems, namespace=namespace, name=name)

    async def _invalid(
        self, context: Context, op: str, caller: Identity, problems: list[str], **fields: Any
    ) -> None:
        """Refuse (INVALID_ARGUMENT, audited) with every problem found, if there are any."""
        if problems:
            await self._deny(
                context, op, caller, grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems), **fields
            )

    def _changed(self, namespace: str, name: str) -> None:
        key = f"{namespace}/{name}"
        self._entries.pop(key, None)
        if self.on_change is not None:
            self.on_change(key)

    def _handle(self, namespace: str, name: str) -> SecretHandle:
        return SecretHandle(self._client, namespace, name)

    # ------------------------------------------------------------------ state access

    async def _load(self, namespace: str, name: str, *, fresh: bool = False) -> _Entry:
        key = f"{namespace}/{name}"
        entry = self._entries.get(key)
        now = self._clock()
        if entry is not None and not fresh and now - entry.loaded_at < RECORD_TTL:
            return entry
        try:
            view = await self._handle(namespace, name).view(rpc_timeout=RPC_TIMEOUT)
        except RPCError as err:
            if gone(err):
                view = None
            else:
                raise
        if view is None:
            self._entries.pop(key, None)
            raise SecretError(f"secret {key} does not exist", "NOT_FOUND")
        data = entry.data if entry and entry.view.record == view.record else None
        entry = _Entry(view=view, loaded_at=now, data=data)
        self._entries[key] = entry
        return entry

    async def _data_key(self, wrapped: str) -> bytes:
        key = self._data_keys.get(wrapped)
        if key is None:
            key = await asyncio.to_thread(self._master.unwrap, wrapped)
            self._data_keys[wrapped] = key
            if len(self._data_keys) > DATA_KEY_CACHE:
                self._data_keys.popitem(last=False)
        return key

    async def _open(self, entry: _Entry) -> dict[str, bytes]:
        if entry.data is None:
            rec = entry.view.record
            key = await self._data_key(rec.wrapped_key)
            entry.data = open_sealed(
                key, rec.ciphertext, namespace=rec.namespace, name=rec.name, version=rec.version
            )
        return entry.data

    async def _sealed(
        self, namespace: str, name: str, version: int, data: Mapping[str, bytes]
    ) -> tuple[str, str, int]:
        """(ciphertext, wrapped data key, key version) of ``data`` under a fresh data key."""
        dk = await asyncio.to_thread(self._master.datakey)
        self._data_keys[dk.wrapped] = dk.plaintext
        ciphertext = seal(dk.plaintext, data, namespace=namespace, name=name, version=version)
        return ciphertext, dk.wrapped, dk.version

    async def _take_use(self, claims: AccessClaims) -> None:
        lease = self._leases.setdefault(claims.token_id, _Lease())
        async with lease.lock:
            if lease.remaining <= 0:
                granted = await self._handle(claims.namespace, claims.name).reserve_uses(
                    ReserveUsesInput(
                        token_id=claims.token_id,
                        max_uses=claims.max_uses,
                        expires_at=claims.expires_at,
                        want=min(USE_BLOCK, claims.max_uses),
                    ),
                    rpc_timeout=RPC_TIMEOUT,
                )
                lease.remaining = granted
            if lease.remaining <= 0:
                raise SecretError(
                    f"access token {claims.token_id} has used all {claims.max_uses} of its "
                    "uses; mint a new one",
                    "RESOURCE_EXHAUSTED",
                )
            lease.remaining -= 1

    # ------------------------------------------------------------------ RPCs

    async def CreateSecret(
        self, request: secrets_pb2.CreateSecretRequest, context: Context
    ) -> secrets_pb2.CreateSecretResponse:
        op, ns, name = "CREATE", request.namespace, request.name
        caller = await self._caller(context, op, namespace=ns, name=name)
        await self._require_admin(context, op, caller, namespace=ns, name=name)
        await self._check_ref(context, op, caller, ns, name)
        audiences = list(request.audiences)
        problems = _data_problems(request.data) + _audience_problems(audiences)
        if request.ttl_seconds < 0:
            problems.append("ttl_seconds must be >= 0 (0: never expires)")
        await self._invalid(context, op, caller, problems, namespace=ns, name=name)
        record = await self._guard(
            context, op, caller, self._create(caller, request, audiences), namespace=ns, name=name
        )
        self._changed(ns, name)
        await self._audit.commit(
            op, "ALLOWED", caller.uri(), source=context.peer(), namespace=ns, name=name, version=1
        )
        return secrets_pb2.CreateSecretResponse(metadata=_metadata(record))

    async def _create(
        self, caller: Identity, request: secrets_pb2.CreateSecretRequest, audiences: list[str]
    ) -> SecretRecord:
        ns, name, now = request.namespace, request.name, self._clock()
        ciphertext, wrapped, key_version = await self._sealed(ns, name, 1, request.data)
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
        return await self._handle(ns, name).create(
            CreateSecretInput(record=record), cluster=self._cluster, rpc_timeout=RPC_TIMEOUT
        )

    async def GetSecret(
        self, request: secrets_pb2.GetSecretRequest, context: Context
    ) -> secrets_pb2.GetSecretResponse:
        op, ns, name = "ACCESS", request.namespace, request.name
        caller = await self._caller(context, op, namespace=ns, name=name)
        response = await self._guard(
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
        entry = await self._load(ns, name)
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
            await self._take_use(claims)
        data = await self._open(entry)
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
            metadata=_metadata(rec), data=data, cache_ttl_seconds=max(0.0, ttl)
        )

    async def UpdateSecret(
        self, request: secrets_pb2.UpdateSecretRequest, context: Context
    ) -> secrets_pb2.UpdateSecretResponse:
        op, ns, name = "UPDATE", request.namespace, request.name
        caller = await self._caller(context, op, namespace=ns, name=name)
        await self._require_admin(context, op, caller, namespace=ns, name=name)
        await self._check_ref(context, op, caller, ns, name)
        problems = _data_problems(request.data)
        await self._invalid(context, op, caller, problems, namespace=ns, name=name)
        record = await self._guard(
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
        return secrets_pb2.UpdateSecretResponse(metadata=_metadata(record))

    async def _update(self, request: secrets_pb2.UpdateSecretRequest) -> SecretRecord:
        ns, name = request.namespace, request.name
        current = (await self._load(ns, name, fresh=True)).view.record
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
        ciphertext, wrapped, key_version = await self._sealed(ns, name, expected + 1, request.data)
        return await self._handle(ns, name).update(
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
        caller = await self._caller(context, op, namespace=ns, name=name)
        await self._require_admin(context, op, caller, namespace=ns, name=name)
        await self._check_ref(context, op, caller, ns, name)
        await self._guard(
            context,
            op,
            caller,
            self._handle(ns, name).delete(
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
        caller = await self._caller(context, op, namespace=ns)
        await self._require_admin(context, op, caller, namespace=ns)
        if ns and not is_dns_label(ns):
            await self._deny(
                context,
                op,
                caller,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"namespace {ns!r} must be a DNS-1123 label",
                namespace=ns,
            )
        records = await self._guard(context, op, caller, self._list(ns), namespace=ns)
        self._audit.record(op, "ALLOWED", caller.uri(), source=context.peer(), namespace=ns)
        return secrets_pb2.ListSecretsResponse(secrets=[_metadata(r) for r in records])

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
        caller = await self._caller(context, op, namespace=ns, name=name)
        await self._check_ref(context, op, caller, ns, name)
        claims, token = await self._guard(
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
        problem = audience_problem(audience)
        if problem:
            raise SecretError(f"audience {problem}")
        if caller.role == "node":
            if (ns, name, audience) not in await self._node_references(caller.name):
                raise SecretError(
                    f"node {caller.name} runs no replica that references secret {ns}/{name} "
                    f"for audience {audience!r}",
                    "PERMISSION_DENIED",
                )
        elif caller.role != "admin":
            raise SecretError(
                f"{caller.role} certificates cannot mint access tokens", "PERMISSION_DENIED"
            )
        rec = (await self._load(ns, name)).view.record
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

    async def _node_references(self, node_id: str) -> frozenset[tuple[str, str, str]]:
        """(namespace, name, audience) of every secret the node's replicas reference."""
        cached = self._node_refs.get(node_id)
        now = self._clock()
        if cached is not None and now - cached[0] < NODE_AUTHZ_TTL:
            return cached[1]
        ledger = LedgerHandle(self._client, self._cluster)
        workloads = await ledger.node_workloads(node_id, rpc_timeout=RPC_TIMEOUT)
        refs: set[tuple[str, str, str]] = set()
        for key in workloads:
            try:
                status = await WorkloadHandle.of(self._client, key).status(
                    rpc_timeout=RPC_TIMEOUT
                )
            except RPCError:
                continue
            refs |= secret_references(status.manifest)
        result = frozenset(refs)
        self._node_refs[node_id] = (now, result)
        return result

    async def RevokeAccessToken(
        self, request: secrets_pb2.RevokeAccessTokenRequest, context: Context
    ) -> secrets_pb2.RevokeAccessTokenResponse:
        op, ns, name, jti = "REVOKE", request.namespace, request.name, request.token_id
        caller = await self._caller(context, op, namespace=ns, name=name, token_id=jti)
        await self._require_admin(context, op, caller, namespace=ns, name=name, token_id=jti)
        await self._check_ref(context, op, caller, ns, name)
        if not jti or len(jti) > 128:
            await self._deny(
                context,
                op,
                caller,
                grpc.StatusCode.INVALID_ARGUMENT,
                "token_id must be the id GenerateAccessToken returned",
                namespace=ns,
                name=name,
            )
        fresh: bool = await self._guard(
            context,
            op,
            caller,
            self._handle(ns, name).revoke(
                RevokeInput(token_id=jti, expires_at=self._clock() + MAX_TTL),
                rpc_timeout=RPC_TIMEOUT,
            ),
            namespace=ns,
            name=name,
            token_id=jti,
        )
        self._leases.pop(jti, None)
        self._entries.pop(f"{ns}/{name}", None)
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
        caller = await self._caller(context, op, namespace=request.namespace)
        await self._require_admin(context, op, caller, namespace=request.namespace)
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
            await self._deny(context, op, caller, grpc.StatusCode.INVALID_ARGUMENT, problem)
        entries = await asyncio.to_thread(self._audit.query, q)
        return secrets_pb2.GetSecretAuditLogResponse(
            entries=[secrets_pb2.AuditEntry(**e.__dict__) for e in entries]
        )

    async def GetMasterKeyInfo(
        self, request: secrets_pb2.GetMasterKeyInfoRequest, context: Context
    ) -> secrets_pb2.GetMasterKeyInfoResponse:
        op = "KEY_INFO"
        caller = await self._caller(context, op)
        await self._require_admin(context, op, caller)
        info = await self._guard(context, op, caller, asyncio.to_thread(self._master.ensure))
        response = secrets_pb2.GetMasterKeyInfoResponse(
            key_name=info.name,
            key_type=info.key_type,
            latest_version=info.latest_version,
            min_decryption_version=info.min_decryption_version,
            last_rotated_at=info.last_rotated_at,
            transit_addr=str(getattr(self._master.client, "url", "")),
        )
        if self._rotation is not None:
            await self._guard(context, op, caller, self._rotation.describe(response))
        return response

    async def RotateMasterKey(
        self, request: secrets_pb2.RotateMasterKeyRequest, context: Context
    ) -> secrets_pb2.RotateMasterKeyResponse:
        op = "ROTATE"
        caller = await self._caller(context, op)
        await self._require_admin(context, op, caller)
        if self._rotation is None:
            await self._deny(
                context,
                op,
                caller,
                grpc.StatusCode.UNIMPLEMENTED,
                "this coordinator runs without key rotation",
            )
            raise AssertionError("unreachable")
        progress = await self._guard(context, op, caller, self._rotation.rotate(wait=request.wait))
        self._entries.clear()  # records now carry rewrapped keys
        await self._audit.commit(
            op,
            "ALLOWED",
            caller.uri(),
            source=context.peer(),
            reason=f"rotation {progress.workflow_id}: {progress.state}",
            version=progress.target_version,
        )
        return secrets_pb2.RotateMasterKeyResponse(progress=progress)


class RotationControl:
    """Starts and describes master-key rotations (the workflow and its Schedule)."""

    def __init__(self, client: Client, plan: RotationInput) -> None:
        self._client = client
        self._cluster = plan.cluster
        self._plan = plan

    async def rotate(self, *, wait: bool) -> secrets_pb2.RotationProgress:
        handle = RotationHandle(self._client, self._cluster)
        await handle.start(self._plan)
        progress = await handle.result() if wait else await handle.progress()
        return _progress_proto(handle.id, progress)

    async def describe(self, out: secrets_pb2.GetMasterKeyInfoResponse) -> None:
        schedule = self._client.get_schedule_handle(rotation.schedule_id(self._cluster))
        try:
            desc = await schedule.describe()
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
        else:
            out.schedule_id = schedule.id
            intervals = desc.schedule.spec.intervals
            if intervals:
                out.rotation_interval = f"{intervals[0].every.total_seconds() / 86400:g}d"
            upcoming = desc.info.next_action_times
            if upcoming:
                out.next_rotation_at = upcoming[0].timestamp()
        async for wf in self._client.list_workflows(
            rotation.rotations_query(self._cluster), limit=1
        ):
            memo = await wf.memo()
            raw = memo.get("progress")
            if isinstance(raw, dict):
                out.last_rotation.CopyFrom(
                    _progress_proto(wf.id, RotationProgress.model_validate(raw))
                )
            break


def _progress_proto(workflow_id: str, p: RotationProgress) -> secrets_pb2.RotationProgress:
    return secrets_pb2.RotationProgress(
        workflow_id=workflow_id,
        state=p.state,
        target_version=p.target_version,
        rewrapped=p.rewrapped,
        remaining=p.remaining,
        started_at=p.started_at,
        finished_at=p.finished_at,
    )


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
    ) -> SecretsRuntime:
        rotation = RotationControl(client, rotation_plan)
        servicer = SecretsServicer(client, cluster, master, tokens, audit, rotation=rotation)
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


async def ensure_rotation_schedule(client: Client, plan: RotationInput, every: timedelta) -> None:
    """Create the master-key rotation Schedule, or bring its interval up to date."""
    cluster = plan.cluster
    action = rotation.schedule_action(plan)
    spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)])
    schedule = Schedule(
        action=action,
        spec=spec,
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(note="rotate the secrets master key and rewrap every data key"),
    )
    schedule_id = rotation.schedule_id(cluster)
    try:
        await client.create_schedule(schedule_id, schedule)
        log.info("secrets.rotation_schedule_created", every=str(every))
        return
    except ScheduleAlreadyRunningError:
        pass
    handle = client.get_schedule_handle(schedule_id)
    desc = await handle.describe()
    current = desc.schedule.spec.intervals
    if len(current) == 1 and current[0].every == every:
        return

    def retime(update: ScheduleUpdateInput) -> ScheduleUpdate:
        update.description.schedule.spec = spec
        update.description.schedule.action = action
        return ScheduleUpdate(schedule=update.description.schedule)

    await handle.update(retime)
    log.info("secrets.rotation_schedule_updated", every=str(every))
