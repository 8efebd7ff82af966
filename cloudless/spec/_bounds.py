"""The size checks of :mod:`cloudless.spec.limits` on parsed data, before any validation.

The walk is iterative and stops as soon as a document has more values or more text than a
manifest may hold, so its cost is bounded however the input was built: deep nesting cannot
exhaust the stack, and YAML aliases (one subtree shared many times) cannot make it expand
a "billion laughs" document. It also refuses text that is not valid Unicode (lone
surrogates, from ``\\uD800`` escapes), which no wire (protobuf, Temporal) can carry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cloudless.spec.issues import _WHOLE_DOCUMENT, ManifestIssue, _render_path
from cloudless.spec.limits import (
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_MANIFEST_BYTES,
    MAX_STRING_BYTES,
    MAX_VALUES,
    format_size,
)
from cloudless.spec.text import _surrogate_defect

_Entry = tuple[object, tuple[str | int, ...], int, bool]


def _utf8_size(text: str) -> int:
    # surrogatepass: a lone surrogate is reported on its own; its size still counts.
    return len(text.encode("utf-8", "surrogatepass"))


def _part(key: object) -> str | int:
    """A mapping key as a path part (``_render_path`` cuts long ones short)."""
    if isinstance(key, bool) or not isinstance(key, str | int):
        return str(key)
    return key


def bound_issues(data: object, document: int = 0) -> list[ManifestIssue]:
    """Every value of ``data`` beyond a limit, or not valid Unicode; [] when within bounds.

    Visits at most :data:`MAX_VALUES` + 1 values: past that, or past
    :data:`MAX_MANIFEST_BYTES` of text, the walk stops with an issue for the whole document.
    """
    issues: list[ManifestIssue] = []

    def issue(loc: tuple[str | int, ...], message: str, fix: str) -> None:
        path = _render_path(loc) if loc else _WHOLE_DOCUMENT
        issues.append(ManifestIssue(path=path, message=message, fix=fix, document=document))

    stack: list[_Entry] = [(data, (), 1, False)]  # (value, where, level, is it a key)
    values = 0
    text_bytes = 0
    while stack:
        value, loc, depth, is_key = stack.pop()
        values += 1
        if values > MAX_VALUES:
            issue(
                (),
                f"has more than {MAX_VALUES:,} values (mappings, lists, keys and scalars, "
                "counting every use of a YAML alias), the limit for one manifest",
                "split the manifest, or write repeated parts out instead of through "
                "anchors and aliases",
            )
            return issues
        if isinstance(value, str):
            size = _utf8_size(value)
            text_bytes += size
            what = "a key" if is_key else "a string"
            if size > MAX_STRING_BYTES:
                issue(
                    loc,
                    f"holds {what} of {size:,} bytes, more than the limit of "
                    f"{format_size(MAX_STRING_BYTES)} per string",
                    "keep large data out of the manifest: put it in the image, a secret "
                    "volume or a file the program downloads",
                )
            elif (defect := _surrogate_defect(value)) is not None:
                issue(loc, f"({what}) {defect[0]}" if is_key else defect[0], defect[1])
            if text_bytes > MAX_MANIFEST_BYTES:
                issue(
                    (),
                    f"holds more than {format_size(MAX_MANIFEST_BYTES)} of text (counting "
                    "every use of a YAML alias), the limit for one manifest",
                    "make the manifest smaller, e.g. move large values into a secret "
                    "volume or the image",
                )
                return issues
            continue
        if isinstance(value, Mapping):
            count, kind = len(value), "entries"
        elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
            count, kind = len(value), "items"
        else:
            continue
        if count > MAX_ITEMS:
            issue(
                loc,
                f"has {count:,} {kind}, more than the limit of {MAX_ITEMS:,}",
                "split the workload, or keep long data out of the manifest",
            )
            continue
        if count and depth >= MAX_DEPTH:
            issue(
                loc,
                f"nests values more than {MAX_DEPTH} levels deep, the limit",
                "flatten the structure: no valid manifest nests this deep",
            )
            continue
        children: list[_Entry] = []
        if isinstance(value, Mapping):
            for key, item in value.items():
                where = (*loc, _part(key))
                children += [(key, where, depth + 1, True), (item, where, depth + 1, False)]
        else:
            children = [(item, (*loc, i), depth + 1, False) for i, item in enumerate(value)]
        stack.extend(reversed(children))
    return issues
