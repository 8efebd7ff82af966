"""Connecting to Temporal the same way from every process."""

from __future__ import annotations

import asyncio

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.converter import PayloadCodec
from temporalio.service import RPCError, RPCStatusCode

from cloudless.codec import NoTransitCodec, data_converter
from cloudless.contracts.limits import PayloadLimits
from cloudless.contracts.names import SEARCH_ATTRIBUTES


async def connect(
    address: str,
    namespace: str = "default",
    *,
    wait: float = 0.0,
    codec: PayloadCodec | None = None,
) -> Client:
    """A client using the pydantic data converter (our payload models are pydantic).

    With ``codec`` (see :func:`cloudless.codec.transit_codec`) every payload is encrypted;
    without, an encrypted payload fails with a hint about transit access rather than
    "unknown encoding". Every payload the client sends is bounded first
    (:class:`~cloudless.contracts.limits.PayloadLimits`). ``wait`` keeps retrying for that
    many seconds: a server that was just (re)started accepts TCP before it answers.
    """
    converter = data_converter(codec) if codec is not None else NoTransitCodec.data_converter()
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            return await Client.connect(
                address,
                namespace=namespace,
                data_converter=converter,
                interceptors=[PayloadLimits(converter.payload_converter)],
            )
        except RuntimeError:
            if asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(0.2)


async def ensure_search_attributes(client: Client) -> None:
    """Register Cloudless' custom search attributes; idempotent."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    missing = {
        key.name: key.indexed_value_type
        for key in SEARCH_ATTRIBUTES
        if key.name not in existing.custom_attributes
    }
    if not missing:
        return
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=client.namespace,
                search_attributes={k: IndexedValueType.ValueType(v) for k, v in missing.items()},
            )
        )
    except RPCError as err:  # a concurrent coordinator registered them first
        if err.status != RPCStatusCode.ALREADY_EXISTS:
            raise
