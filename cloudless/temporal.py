"""Connecting to Temporal the same way from every process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.converter import PayloadCodec
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from cloudless.codec import NoTransitCodec, data_converter
from cloudless.contracts.limits import PayloadLimits
from cloudless.contracts.names import SEARCH_ATTRIBUTES

T = TypeVar("T")


@dataclass(frozen=True)
class TemporalTLS:
    """TLS to Temporal: the CA that issued the server's certificate (None: the system's
    roots, as for Temporal Cloud), an optional client certificate and key (mutual TLS),
    and the name the server's certificate must carry (None: the address's host)."""

    ca_pem: bytes | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    def sdk(self) -> TLSConfig:
        return TLSConfig(
            server_root_ca_cert=self.ca_pem,
            client_cert=self.cert_pem,
            client_private_key=self.key_pem,
            domain=self.server_name,
        )


@dataclass(frozen=True)
class TemporalTarget:
    """Where and how to reach Temporal: address, namespace, and TLS and/or an API key
    (Temporal Cloud). A bare address means plaintext: only test servers are reached so."""

    address: str
    namespace: str = "default"
    tls: TemporalTLS | None = None
    api_key: str | None = field(default=None, repr=False)


async def connect(
    target: TemporalTarget | str,
    namespace: str = "default",
    *,
    wait: float = 0.0,
    codec: PayloadCodec | None = None,
) -> Client:
    """A client using the pydantic data converter (our payload models are pydantic).

    ``target``: a :class:`TemporalTarget` (its namespace wins), or a plaintext address.

    With ``codec`` (see :func:`cloudless.codec.transit_codec`) every payload is encrypted;
    without, an encrypted payload fails with a hint about transit access rather than
    "unknown encoding". Every payload the client sends is bounded first
    (:class:`~cloudless.contracts.limits.PayloadLimits`). ``wait`` keeps retrying for that
    many seconds: a server that was just (re)started accepts TCP before it answers.
    """
    if isinstance(target, str):
        target = TemporalTarget(target, namespace)
    converter = data_converter(codec) if codec is not None else NoTransitCodec.data_converter()
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            return await Client.connect(
                target.address,
                namespace=target.namespace,
                tls=target.tls.sdk() if target.tls is not None else None,  # None: TLS iff api_key
                api_key=target.api_key,
                data_converter=converter,
                interceptors=[PayloadLimits(converter.payload_converter)],
            )
        except RuntimeError:
            if asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(0.2)


#: Failures of a call that never reached the server's logic: the connection was
#: closing (``CANCELLED``: "operation was canceled"), or the server was not there yet.
_TRANSIENT = frozenset(
    {RPCStatusCode.CANCELLED, RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED}
)


async def _retrying(call: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
    """``call()``, again after a transient failure (up to ``attempts`` times in ~3 s).

    Only for idempotent calls. A long-lived client's connection can be closing when a
    call is made (the server recycles connections), and the SDK does not retry that
    for operator-service calls: a coordinator starting on such a client failed."""
    for attempt in range(attempts):
        try:
            return await call()
        except RPCError as err:
            if err.status not in _TRANSIENT or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


async def ensure_search_attributes(client: Client) -> None:
    """Register Cloudless' custom search attributes; idempotent (so retried when a call
    fails in transit)."""
    existing = await _retrying(
        lambda: client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        )
    )
    missing = {
        key.name: key.indexed_value_type
        for key in SEARCH_ATTRIBUTES
        if key.name not in existing.custom_attributes
    }
    if not missing:
        return
    try:
        await _retrying(
            lambda: client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(
                    namespace=client.namespace,
                    search_attributes={
                        k: IndexedValueType.ValueType(v) for k, v in missing.items()
                    },
                )
            )
        )
    except RPCError as err:  # a concurrent coordinator registered them first
        if err.status != RPCStatusCode.ALREADY_EXISTS:
            raise
