"""What text a runtime accepts, so that a manifest that validates can also start.

exec(2) takes arguments and environment entries as C strings, so none may hold a NUL; the
wire to agents (protobuf) and Temporal's payloads carry UTF-8, so a lone surrogate (which
YAML's and JSON's ``\\uD800`` escapes produce) cannot travel; and a path or a header value
also refuses control characters, which runtimes, HTTP clients and people reading a listing
cannot handle. The predicates are public (:func:`text_problem`, :func:`path_problem`) so the
agent refuses exactly what the manifest refuses.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import AfterValidator

from cloudless.spec._messages import _problem, _show
from cloudless.spec._scalars import _check_non_empty

#: C0 controls, DEL and C1 controls: never part of a path or header value.
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NUL_FIX: Final = "remove the NUL character (written \\0 or \\x00 in a double-quoted YAML string)"
_SURROGATE_FIX: Final = (
    "remove the escape, or write the character you meant directly (\\uD800-\\uDFFF "
    "escapes are only valid in pairs that together encode one character)"
)


def _unencodable(value: str) -> str | None:
    """The first character UTF-8 cannot encode (a lone surrogate), else None."""
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        return value[error.start]
    return None


def _surrogate_defect(value: str) -> tuple[str, str] | None:
    """(what is wrong, fix) for text that is not valid Unicode, else None."""
    surrogate = _unencodable(value)
    if surrogate is None:
        return None
    return (
        f"must be valid Unicode text, but it contains a lone surrogate ({surrogate!a}), "
        "which cannot be encoded as UTF-8",
        _SURROGATE_FIX,
    )


def _text_defect(
    value: str, *, controls: bool = False, allowed: str = ""
) -> tuple[str, str] | None:
    """(what is wrong, fix) for text a runtime would refuse, else None."""
    if "\x00" in value:
        return (
            "must not contain a NUL character ('\\x00'): a process argument, environment "
            "variable or path cannot hold one, so every start would fail",
            _NUL_FIX,
        )
    surrogate = _surrogate_defect(value)
    if surrogate is not None:
        return surrogate
    if controls:
        for match in _CONTROL_RE.finditer(value):
            if match.group() not in allowed:
                return (
                    f"must not contain control characters, got {_show(value)}: it contains "
                    f"{match.group()!a} at position {match.start()}",
                    "remove the control character (check for a stray escape or line break)",
                )
    return None


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be passed to a process (argument, environment name or value),
    with the fix; None when it can. Shared by the manifest and the agent."""
    defect = _text_defect(value)
    return None if defect is None else f"{defect[0]} (fix: {defect[1]})"


def _check_text(value: str) -> str:
    defect = _text_defect(value)
    if defect is None:
        return value
    raise _problem(*defect)


def _absolute_path_defect(value: str) -> tuple[str, str] | None:
    defect = _text_defect(value, controls=True)
    if defect is not None:
        return defect
    if not value.startswith("/"):
        return f"must be an absolute path, got {_show(value)}", "use a path like /app"
    return None


def path_problem(value: str) -> str | None:
    """Why ``value`` is not an absolute path a runtime accepts, with the fix; else None."""
    defect = _absolute_path_defect(value)
    return None if defect is None else f"{defect[0]} (fix: {defect[1]})"


def _check_absolute_path(value: str) -> str:
    defect = _absolute_path_defect(value)
    if defect is None:
        return value
    raise _problem(*defect)


#: Text that reaches a process: an argument, an environment value.
Text = Annotated[str, AfterValidator(_check_text)]
#: A program or an argument that must not be empty (``command`` entries).
NonEmptyText = Annotated[str, AfterValidator(_check_text), AfterValidator(_check_non_empty)]
AbsolutePath = Annotated[str, AfterValidator(_check_absolute_path)]
