"""Reading manifests: YAML (duplicate keys rejected) or JSON text, one or more documents, into
validated workloads, or one :class:`~cloudless.spec.issues.ManifestError` listing every
problem in every document, so an ``apply`` is all-or-nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping
from typing import Any, Final

import yaml
from pydantic import ValidationError

from cloudless.spec._messages import _closest, _show
from cloudless.spec.issues import _WHOLE_DOCUMENT, ManifestError, ManifestIssue, _issues_from
from cloudless.spec.workload import API_VERSION, Workload

#: Kinds the loader understands. A new kind is one more entry here (and, once there is more
#: than one, a union in the loader's return type).
_KINDS: Final[dict[str, type[Workload]]] = {"Workload": Workload}
SUPPORTED_KINDS: Final = tuple(_KINDS)


def _document_issue(
    message: str, fix: str, document: int, path: str = _WHOLE_DOCUMENT
) -> ManifestIssue:
    return ManifestIssue(path=path, message=message, fix=fix, document=document)


def _validate_document(data: object, document: int) -> tuple[Workload | None, list[ManifestIssue]]:
    """Validate one parsed document; never raises, so callers can collect every issue."""
    if not isinstance(data, Mapping):
        return None, [
            _document_issue(
                f"a manifest must be a mapping, got {_show(data)}",
                "start the document with `apiVersion: cloudless.dev/v1` and `kind: Workload`",
                document,
            )
        ]
    issues: list[ManifestIssue] = []
    if "apiVersion" not in data and "api_version" not in data:
        issues.append(
            _document_issue(
                "apiVersion is required", f"add `apiVersion: {API_VERSION}`", document, "apiVersion"
            )
        )
    kind = data.get("kind")
    supported = ", ".join(SUPPORTED_KINDS)
    if kind is None:
        issues.append(
            _document_issue(
                f"kind is required (supported kinds: {supported})",
                "add `kind: Workload`",
                document,
                "kind",
            )
        )
        return None, issues
    if not isinstance(kind, str) or kind not in _KINDS:
        close = _closest(kind, SUPPORTED_KINDS) if isinstance(kind, str) else None
        issues.append(
            _document_issue(
                f"kind {_show(kind)} is not supported; supported kinds: {supported}",
                f"did you mean {close!r}?" if close else f"set `kind:` to one of: {supported}",
                document,
                "kind",
            )
        )
        return None, issues
    model = _KINDS[kind]
    try:
        obj = model.model_validate(data)
    except ValidationError as error:
        issues.extend(_issues_from(error, model, document))
        return None, issues
    return (obj, issues) if not issues else (None, issues)


class _DuplicateKeyError(ValueError):
    """A JSON object repeats a key (JSON parsers silently keep the last one)."""


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML loader that rejects duplicate keys instead of keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Hashable, yaml.Mark] = {}
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable):
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first defined on line {seen[key].line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_issue(error: yaml.YAMLError, document: int) -> ManifestIssue:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    line = f"line {mark.line + 1}" if mark is not None else "the reported line"
    if "duplicate key" in problem:
        fix = f"remove one of the duplicate keys (see {line})"
    elif "\t" in problem or "'\\t'" in problem:
        fix = f"indent with spaces, not tabs (see {line})"
    else:
        fix = (
            f"fix the YAML syntax near {line}: check the indentation and that every ':' "
            "is followed by a space"
        )
    return _document_issue(f"invalid YAML{where}: {problem}", fix, document)


def _parse_documents(text: str) -> tuple[list[tuple[int, object]], list[ManifestIssue]]:
    """Split text into (index, data) documents; empty documents are skipped but counted."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(text, object_pairs_hook=_json_object)
        except _DuplicateKeyError as error:
            message = f"invalid JSON: duplicate key {str(error)!r}"
            return [], [_document_issue(message, "remove one of the duplicate keys", 0)]
        except ValueError:
            pass  # maybe YAML flow style; the YAML parser reports real syntax errors
        else:
            items = data if isinstance(data, list) else [data]
            return list(enumerate(items)), []
    documents: list[tuple[int, object]] = []
    index = 0
    # _StrictLoader is a SafeLoader subclass: it never builds arbitrary Python objects.
    stream = yaml.load_all(text, Loader=_StrictLoader)
    while True:
        try:
            data = next(stream)
        except StopIteration:
            break
        except yaml.YAMLError as error:
            return documents, [_yaml_issue(error, index)]
        if data is not None:
            documents.append((index, data))
        index += 1
    return documents, []


def load_manifests(text: str, source: str = "<manifest>") -> list[Workload]:
    """Parse and validate every document in ``text`` (YAML, or JSON).

    Raises :class:`ManifestError` listing every problem in every document; nothing is
    returned unless all documents are valid, so an ``apply`` is all-or-nothing.
    """
    documents, issues = _parse_documents(text)
    workloads: list[Workload] = []
    first_by_key: dict[str, int] = {}
    for index, data in documents:
        workload, problems = _validate_document(data, index)
        issues.extend(problems)
        if workload is None:
            continue
        if workload.key in first_by_key:
            issues.append(
                _document_issue(
                    f"workload {workload.key} is already defined in document "
                    f"{first_by_key[workload.key] + 1}",
                    "remove the duplicate document or give it another name",
                    index,
                    "metadata.name",
                )
            )
            continue
        first_by_key[workload.key] = index
        workloads.append(workload)
    if not documents and not issues:
        issues.append(
            _document_issue(
                "no manifest found (the input is empty or only comments)",
                "add a Workload document; see examples/hello.yaml",
                0,
            )
        )
    if issues:
        raise ManifestError(sorted(issues, key=lambda issue: issue.document), source)
    return workloads


def load_manifest_file(path: str | os.PathLike[str]) -> list[Workload]:
    """Load every manifest in a file; an unreadable file is reported like any other issue."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError as error:
        raise ManifestError(
            [
                _document_issue(
                    f"the file is not UTF-8 text ({error.reason} at byte {error.start})",
                    "save the manifest as UTF-8 YAML or JSON",
                    0,
                    "<file>",
                )
            ],
            source,
        ) from error
    except OSError as error:
        raise ManifestError(
            [
                _document_issue(
                    f"cannot read the file: {error.strerror or error}",
                    "check that the path exists, is a file and is readable",
                    0,
                    "<file>",
                )
            ],
            source,
        ) from error
    return load_manifests(text, source)


def parse_workload(
    data: Mapping[str, object], source: str = "<manifest>", document: int = 0
) -> Workload:
    """Validate one already-parsed document (e.g. from JSON or an API request)."""
    workload, issues = _validate_document(data, document)
    if workload is None or issues:
        raise ManifestError(issues, source)
    return workload
