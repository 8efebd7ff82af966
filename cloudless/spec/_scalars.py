"""Constraints on plain values that several parts of a manifest share: whole numbers within
bounds and non-empty strings. Text that reaches a process or a path is :mod:`.text`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator

from cloudless.spec._messages import _problem


def _check_non_empty(value: str) -> str:
    if value:
        return value
    raise _problem("must not be an empty string", "remove the empty entry")


def _between(low: int, high: int, example: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if low <= value <= high:
            return value
        raise _problem(
            f"must be between {low} and {high}, got {value}",
            f"use a whole number from {low} to {high}, e.g. {example}",
        )

    return check


NonEmptyStr = Annotated[str, AfterValidator(_check_non_empty)]
