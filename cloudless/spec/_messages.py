"""How the spec package phrases a problem: an error that carries its fix, user input shown
the way it looked in YAML, and "did you mean" suggestions.

Every check of every module raises :func:`_problem`; :mod:`cloudless.spec.issues` recognises
its error type and passes message and fix through to the user unchanged.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Final

import yaml
from pydantic_core import PydanticCustomError

# The error type of every problem the spec package reports itself; its ctx carries the fix.
_ERROR_TYPE: Final = "cloudless"


def _problem(message: str, fix: str) -> PydanticCustomError:
    """An error whose message is a predicate on the field ("must be ...") plus a fix."""
    return PydanticCustomError(_ERROR_TYPE, message, {"fix": fix})


def _show(value: object) -> str:
    """Render user input the way it looked in YAML, cut short so messages stay one line."""
    if isinstance(value, str):
        text = repr(value)
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, Mapping | list | tuple):
        text = _inline(value)
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _inline(value: object) -> str:
    """Render an example value as one line of YAML (flow style)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping | list | tuple):
        data = list(value) if isinstance(value, tuple) else value
        dumped: str = yaml.safe_dump(data, default_flow_style=True, width=10_000, sort_keys=False)
        return dumped.strip()
    return str(value)


def _closest(word: str, choices: Sequence[str]) -> str | None:
    """The choice closest to ``word`` (case-insensitive), for "did you mean" hints."""
    by_lower = {choice.lower(): choice for choice in reversed(choices)}
    if word.lower() in by_lower:
        return by_lower[word.lower()]
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[found[0]] if found else None
