"""Problems reported to users: :class:`ManifestIssue` (where, what, how to fix) and
:class:`ManifestError`, and the translation of pydantic's validation errors into issues that
name the path as the user spelled it, phrased for someone editing YAML ("did you mean",
where a misplaced field belongs, what YAML read a value as).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from cloudless.errors import CloudlessError
from cloudless.spec._base import _SnakeModel, _spellings
from cloudless.spec._messages import _ERROR_TYPE, _closest, _inline, _show
from cloudless.spec.workload import Workload

# Path used for problems that concern a whole document or file rather than one field.
_WHOLE_DOCUMENT: Final = "<document>"


class ManifestIssue(BaseModel):
    """One problem in a manifest: where it is, what is wrong and how to fix it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    """Dotted path as spelled in the manifest, e.g. ``spec.container.env[1].name``."""
    message: str
    fix: str
    document: int = 0
    """0-based index of the document in its file (YAML ``---`` separated)."""


class ManifestError(CloudlessError):
    """A manifest was rejected; ``issues`` lists every problem found, not just the first."""

    def __init__(self, issues: Sequence[ManifestIssue], source: str = "<manifest>") -> None:
        self.issues = list(issues)
        self.source = source
        super().__init__(self.issues, source)

    def __reduce__(self) -> tuple[type[ManifestError], tuple[list[ManifestIssue], str]]:
        return (type(self), (self.issues, self.source))

    def __str__(self) -> str:
        count = len(self.issues)
        lines = [f"{self.source}: {count} problem{'' if count == 1 else 's'} in manifest"]
        several_documents = any(issue.document > 0 for issue in self.issues)
        for issue in self.issues:
            where = issue.path
            if several_documents:
                where = f"{where} (document {issue.document + 1})"
            lines.append(f"  {where}: {issue.message} (fix: {issue.fix})")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Turning pydantic errors into ManifestIssues
# ---------------------------------------------------------------------------------------------

_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # fullmatch only
_DICT_KEY_MARK = "[key]"
#: Keys (user data, e.g. labels) longer than this are cut short in a rendered path, so one
#: long key cannot swell a one-line message.
_SHOWN_KEY_CHARS: Final = 40


def _render_path(loc: Sequence[str | int]) -> str:
    """``("spec", "container", "env", 1, "name")`` -> ``spec.container.env[1].name``."""
    out = ""
    for part in loc:
        if part == _DICT_KEY_MARK:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif len(part) > _SHOWN_KEY_CHARS:
            out += f"[{json.dumps(part[: _SHOWN_KEY_CHARS - 3] + '...')}]"
        elif _IDENTIFIER_RE.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or _WHOLE_DOCUMENT


def _unwrap(annotation: object) -> object:
    """Strip ``Annotated`` and ``X | None`` so the underlying type can be inspected."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if origin in (Union, types.UnionType):
            args = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(args) == 1:
                annotation = args[0]
                continue
        return annotation


def _model_of(annotation: object) -> type[BaseModel] | None:
    inner = _unwrap(annotation)
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def _item_of(annotation: object) -> object:
    inner = _unwrap(annotation)
    args = get_args(inner)
    if get_origin(inner) in (tuple, list) and args:
        return args[0]
    if get_origin(inner) is dict and len(args) == 2:
        return args[1]
    return None


def _is_dict(annotation: object) -> bool:
    return get_origin(_unwrap(annotation)) is dict


def _field_for_key(model: type[BaseModel], key: str) -> str | None:
    for name in model.model_fields:
        if key in _spellings(model, name):
            return name
    return None


@dataclasses.dataclass(frozen=True)
class _Where:
    """What an error location points at, in terms of models and fields."""

    owner: type[BaseModel] | None
    field: str | None  # Python name; None when the key is unknown to ``owner``
    key: str | None  # the key as it appears in the location (the user's spelling)
    trailing: tuple[str | int, ...]  # list indexes / dict keys after the field
    dict_key: bool  # the error is about a dict key, not its value

    @property
    def info(self) -> FieldInfo | None:
        if self.owner is None or self.field is None:
            return None
        return self.owner.model_fields[self.field]

    @property
    def subject(self) -> str:
        """How messages name the thing: ``memory``, ``command[0]``, ``labels key 'x'``."""
        if self.key is None:
            return "document"
        info = self.info
        if self.trailing and info is not None and _is_dict(info.annotation):
            entry = self.trailing[0]
            if self.dict_key:
                return f"{self.key} key {str(entry)!r}"
            return f"{self.key} value for {str(entry)!r}"
        return self.key + "".join(f"[{part}]" for part in self.trailing)


def _resolve(root: type[BaseModel], loc: Sequence[str | int]) -> _Where:
    annotation: object = root
    owner: type[BaseModel] | None = None
    field: str | None = None
    key: str | None = None
    trailing: list[str | int] = []
    dict_key = False
    for part in loc:
        if part == _DICT_KEY_MARK:
            dict_key = True
            break
        model = _model_of(annotation)
        if model is not None and isinstance(part, str):
            owner, key, trailing = model, part, []
            field = _field_for_key(model, part)
            annotation = model.model_fields[field].annotation if field is not None else None
        else:
            trailing.append(part)
            annotation = _item_of(annotation)
    return _Where(owner, field, key, tuple(trailing), dict_key)


def _example(where: _Where) -> object | None:
    info = where.info
    if info is None or not info.examples or where.trailing:
        return None
    example: object = info.examples[0]
    return example


def _literal_choices(where: _Where) -> tuple[str, ...]:
    info = where.info
    if info is None:
        return ()
    inner = _unwrap(info.annotation)
    if get_origin(inner) is Literal:
        return tuple(str(arg) for arg in get_args(inner))
    return ()


@functools.cache
def _field_homes() -> dict[str, tuple[str, ...]]:
    """Every field spelling (lower-cased) -> canonical paths where it belongs."""
    homes: dict[str, list[str]] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            canonical = info.serialization_alias or name
            path = f"{prefix}.{canonical}" if prefix else canonical
            for spelling in _spellings(model, name):
                homes.setdefault(spelling.lower(), []).append(path)
            inner = _model_of(info.annotation)
            item = _model_of(_item_of(info.annotation))
            if inner is not None:
                walk(inner, path)
            elif item is not None:
                walk(item, path + "[]")

    walk(Workload, "")
    return {key: tuple(dict.fromkeys(paths)) for key, paths in homes.items()}


def _suggest_fields(key: str, owner: type[BaseModel]) -> list[str]:
    """Up to two fields of ``owner`` close to ``key``, in the user's style of spelling."""
    snake_style = "_" in key or issubclass(owner, _SnakeModel)
    by_normal: dict[str, str] = {}
    for name, info in owner.model_fields.items():
        shown = name if snake_style else (info.serialization_alias or name)
        for spelling in _spellings(owner, name):
            by_normal.setdefault(spelling.replace("_", "").lower(), shown)
    normal = key.replace("_", "").replace("-", "").lower()
    if normal in by_normal:
        return [by_normal[normal]]
    found = difflib.get_close_matches(normal, list(by_normal), n=2, cutoff=0.6)
    return list(dict.fromkeys(by_normal[match] for match in found))


def _explain_unknown(where: _Where, parent: str) -> tuple[str, str]:
    key = where.key or ""
    owner = where.owner
    unknown = f"unknown field {key!r}" + (f" in {parent}" if parent != _WHOLE_DOCUMENT else "")
    if owner is None:
        return unknown, "remove it"
    # Both spellings of one field given: pydantic keeps the first and flags the other.
    for name in owner.model_fields:
        spellings = _spellings(owner, name)
        if key in spellings:
            other = next((s for s in spellings if s != key), key)
            return (
                f"{key!r} is given twice, also as {other!r}",
                f"keep only one of {other!r} and {key!r}",
            )
    close = _suggest_fields(key, owner)
    if close:
        return unknown, "did you mean " + " or ".join(repr(name) for name in close) + "?"
    homes = _field_homes().get(key.lower(), ())
    if homes:
        more = f" (or {len(homes) - 2} other places)" if len(homes) > 2 else ""
        return unknown, f"{key!r} belongs at {' or '.join(homes[:2])}{more}; move it there"
    canonical = [info.serialization_alias or name for name, info in owner.model_fields.items()]
    return unknown, f"remove it; fields allowed here: {', '.join(canonical)}"


def _explain(error: Mapping[str, Any], where: _Where, parent: str) -> tuple[str, str]:
    """Message and fix for one pydantic error, phrased for someone editing YAML."""
    kind: str = error["type"]
    value = error.get("input")
    subject = where.subject
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    example = _example(where)
    like = f", e.g. {_inline(example)}" if example is not None else ""

    if kind == _ERROR_TYPE:
        return f"{subject} {error['msg']}", str(ctx.get("fix", "correct the value"))
    if kind == "extra_forbidden":
        return _explain_unknown(where, parent)
    if kind == "missing":
        fix = f"add `{where.key}: {_inline(example)}`" if example is not None else f"add {subject}"
        return f"{subject} is required", fix
    if kind == "literal_error":
        choices = _literal_choices(where)
        if not choices:
            return f"{subject} {error['msg'].lower()}, got {_show(value)}", "use an allowed value"
        allowed = ", ".join(choices)
        close = _closest(str(value), choices) if isinstance(value, str) else None
        fix = f"did you mean {close!r}?" if close is not None else f"use one of: {allowed}"
        if len(choices) == 1:
            return f"{subject} must be {choices[0]!r}, got {_show(value)}", (
                f"set `{where.key}: {choices[0]}`"
            )
        return f"{subject} must be one of {allowed}; got {_show(value)}", fix
    if kind == "string_type":
        if isinstance(value, bool | int | float) or value is None:
            text = _show(value)
            return (
                f"{subject} must be a string, got {text} (YAML reads it as "
                f"{'null' if value is None else type(value).__name__})",
                f'put it in quotes: "{text}"',
            )
        return f"{subject} must be a string, got {_show(value)}", f"write it as text{like}"
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return (
            f"{subject} must be a whole number, got {_show(value)}",
            f"write a number without quotes{like or ', e.g. 1'}",
        )
    if kind in {"bool_type", "bool_parsing"}:
        return (
            f"{subject} must be true or false, got {_show(value)}",
            "write true or false without quotes",
        )
    if kind in {"tuple_type", "list_type", "set_type", "iterable_type"}:
        return f"{subject} must be a list, got {_show(value)}", f"write a YAML list{like}"
    if kind in {"dict_type", "model_type", "model_attributes_type", "mapping_type"}:
        return (
            f"{subject} must be a mapping of key: value pairs, got {_show(value)}",
            f"indent its fields under {where.key or 'it'}{like}",
        )
    message = str(error.get("msg", "is invalid"))
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return f"{subject}: {message}, got {_show(value)}", f"correct the value{like}"


def _issues_from(
    error: ValidationError, root: type[BaseModel], document: int
) -> list[ManifestIssue]:
    issues: list[ManifestIssue] = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        where = _resolve(root, loc)
        parent = _render_path(loc[:-1]) if item["type"] == "extra_forbidden" else ""
        message, fix = _explain(item, where, parent)
        issue = ManifestIssue(path=_render_path(loc), message=message, fix=fix, document=document)
        if issue not in issues:
            issues.append(issue)
    return issues
