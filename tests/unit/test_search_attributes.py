"""Registering search attributes survives a call that fails in transit."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesResponse
from temporalio.service import RPCError, RPCStatusCode

from cloudless.contracts.names import SEARCH_ATTRIBUTES
from cloudless.temporal import ensure_search_attributes


def operator(failures: list[RPCStatusCode], registered: bool) -> tuple[Any, list[str]]:
    """An operator service whose calls fail with ``failures`` (in order), then answer."""
    calls: list[str] = []
    names = [key.name for key in SEARCH_ATTRIBUTES] if registered else []

    def answer(name: str, result: Callable[[], Any]) -> Callable[[Any], Any]:
        async def call(_request: Any) -> Any:
            calls.append(name)
            if failures:
                raise RPCError("operation was canceled", failures.pop(0), b"")
            return result()

        return call

    def listed() -> ListSearchAttributesResponse:
        response = ListSearchAttributesResponse()
        for n in names:
            response.custom_attributes[n] = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        return response

    service = SimpleNamespace(
        list_search_attributes=answer("list", listed),
        add_search_attributes=answer("add", lambda: None),
    )
    return SimpleNamespace(namespace="default", operator_service=service), calls


async def test_a_call_cancelled_in_transit_is_made_again() -> None:
    client, calls = operator([RPCStatusCode.CANCELLED, RPCStatusCode.UNAVAILABLE], False)
    await ensure_search_attributes(client)
    assert calls == ["list", "list", "list", "add"]


async def test_registered_attributes_are_not_added_again() -> None:
    client, calls = operator([], True)
    await ensure_search_attributes(client)
    assert calls == ["list"]


async def test_a_refusal_is_not_retried() -> None:
    client, calls = operator([RPCStatusCode.PERMISSION_DENIED], False)
    with pytest.raises(RPCError) as raised:
        await ensure_search_attributes(client)
    assert raised.value.status == RPCStatusCode.PERMISSION_DENIED and calls == ["list"]


async def test_a_connection_that_stays_broken_fails_after_five_attempts() -> None:
    client, calls = operator([RPCStatusCode.CANCELLED] * 9, False)
    with pytest.raises(RPCError):
        await ensure_search_attributes(client)
    assert calls == ["list"] * 5
