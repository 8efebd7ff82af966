"""A SecretsService client over mutual TLS, for ``cloudlessctl`` and tests.

The CLI authenticates with the local admin certificate the coordinator writes to
``<state>/admin/`` at bootstrap (or ``CLOUDLESS_ADMIN_DIR``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import grpc

from cloudless import tls
from cloudless.api import secrets_pb2, secrets_pb2_grpc
from cloudless.errors import CloudlessError, PKIError

SERVER_NAME = tls.GATEWAY_SERVER_NAME
TIMEOUT = 20.0

_FIX_BY_CODE = {
    grpc.StatusCode.UNAVAILABLE: "is the coordinator running with transit configured?",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the coordinator did not answer in time",
}


class SecretsClient:
    def __init__(
        self, address: str, material: tls.TLSMaterial, *, server_name: str = SERVER_NAME
    ) -> None:
        self.address = address
        self._channel = tls.secure_channel(address, server_name, material.ca_pem, material)
        self.stub = secrets_pb2_grpc.SecretsServiceStub(self._channel)

    @classmethod
    def from_dir(cls, address: str, directory: Path) -> SecretsClient:
        try:
            material = tls.TLSMaterial.load(directory)
        except PKIError as err:
            raise CloudlessError(
                f"no admin certificate in {directory} ({err}); start the coordinator once "
                "(it writes one) or set CLOUDLESS_ADMIN_DIR"
            ) from err
        return cls(address, material)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> SecretsClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def call(self, method: str, request: object) -> object:
        """Invoke ``method`` and turn gRPC failures into one-line CloudlessErrors."""
        try:
            return await getattr(self.stub, method)(request, timeout=TIMEOUT)
        except grpc.aio.AioRpcError as err:
            detail = err.details() or err.code().name
            hint = _FIX_BY_CODE.get(err.code())
            message = f"{detail} ({err.code().name})"
            if hint and err.code() == grpc.StatusCode.UNAVAILABLE:
                message = f"cannot reach the SecretsService at {self.address}: {detail}; {hint}"
            elif hint:
                message = f"{message}: {hint}"
            raise SecretsCallError(message, err.code()) from None

    async def create(
        self,
        namespace: str,
        name: str,
        data: Mapping[str, bytes],
        audiences: list[str],
        *,
        immutable: bool = False,
        ttl_seconds: float = 0.0,
    ) -> secrets_pb2.SecretMetadata:
        out = await self.call(
            "CreateSecret",
            secrets_pb2.CreateSecretRequest(
                namespace=namespace,
                name=name,
                data=dict(data),
                audiences=audiences,
                immutable=immutable,
                ttl_seconds=ttl_seconds,
            ),
        )
        assert isinstance(out, secrets_pb2.CreateSecretResponse)
        return out.metadata

    async def get(self, namespace: str, name: str, token: str) -> secrets_pb2.GetSecretResponse:
        out = await self.call(
            "GetSecret", secrets_pb2.GetSecretRequest(namespace=namespace, name=name, token=token)
        )
        assert isinstance(out, secrets_pb2.GetSecretResponse)
        return out

    async def update(
        self, namespace: str, name: str, data: Mapping[str, bytes], expected_version: int = 0
    ) -> secrets_pb2.SecretMetadata:
        out = await self.call(
            "UpdateSecret",
            secrets_pb2.UpdateSecretRequest(
                namespace=namespace, name=name, data=dict(data), expected_version=expected_version
            ),
        )
        assert isinstance(out, secrets_pb2.UpdateSecretResponse)
        return out.metadata

    async def delete(self, namespace: str, name: str) -> bool:
        out = await self.call(
            "DeleteSecret", secrets_pb2.DeleteSecretRequest(namespace=namespace, name=name)
        )
        assert isinstance(out, secrets_pb2.DeleteSecretResponse)
        return out.deleted

    async def list_secrets(self, namespace: str = "") -> list[secrets_pb2.SecretMetadata]:
        out = await self.call("ListSecrets", secrets_pb2.ListSecretsRequest(namespace=namespace))
        assert isinstance(out, secrets_pb2.ListSecretsResponse)
        return list(out.secrets)

    async def token(
        self,
        namespace: str,
        name: str,
        audience: str,
        *,
        ttl_seconds: float = 0.0,
        max_uses: int = 0,
    ) -> secrets_pb2.GenerateAccessTokenResponse:
        out = await self.call(
            "GenerateAccessToken",
            secrets_pb2.GenerateAccessTokenRequest(
                namespace=namespace,
                name=name,
                audience=audience,
                ttl_seconds=ttl_seconds,
                max_uses=max_uses,
            ),
        )
        assert isinstance(out, secrets_pb2.GenerateAccessTokenResponse)
        return out

    async def revoke(self, namespace: str, name: str, token_id: str) -> bool:
        out = await self.call(
            "RevokeAccessToken",
            secrets_pb2.RevokeAccessTokenRequest(namespace=namespace, name=name, token_id=token_id),
        )
        assert isinstance(out, secrets_pb2.RevokeAccessTokenResponse)
        return out.revoked

    async def audit(
        self, request: secrets_pb2.GetSecretAuditLogRequest
    ) -> list[secrets_pb2.AuditEntry]:
        out = await self.call("GetSecretAuditLog", request)
        assert isinstance(out, secrets_pb2.GetSecretAuditLogResponse)
        return list(out.entries)

    async def key_info(self) -> secrets_pb2.GetMasterKeyInfoResponse:
        out = await self.call("GetMasterKeyInfo", secrets_pb2.GetMasterKeyInfoRequest())
        assert isinstance(out, secrets_pb2.GetMasterKeyInfoResponse)
        return out

    async def rotate(self, *, wait: bool = False) -> secrets_pb2.RotationProgress:
        out = await self.call("RotateMasterKey", secrets_pb2.RotateMasterKeyRequest(wait=wait))
        assert isinstance(out, secrets_pb2.RotateMasterKeyResponse)
        return out.progress


class SecretsCallError(CloudlessError):
    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code
