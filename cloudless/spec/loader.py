"""Reading manifests: YAML (duplicate keys rejected) or JSON text, one or more documents, into
validated workloads, or one :class:`~cloudless.spec.issues.ManifestError` listing every
problem in every document, so an ``apply`` is all-or-nothing.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import IO, Any, Final

import yaml
from pydantic import ValidationError

from cloudless.spec._bounds import bound_issues
from cloudless.spec._messages import _closest, _show
from cloudless.spec.issues import _WHOLE_DOCUMENT, ManifestError, ManifestIssue, _issues_from
from cloudless.spec.limits import MAX_DEPTH, MAX_DOCUMENTS, MAX_MANIFEST_BYTES, format_size
from cloudless.spec.workload import API_VERSION, Workload
from cloudless.strictyaml import TooDeepError, strict_loader

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
    # First, with bounded work: nothing below (messages that show a value included) may
    # look at a document that is too large, too deep or not text.
    out_of_bounds = bound_issues(data, document)
    if out_of_bounds:
        return None, out_of_bounds
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
    issues.extend(size_issues(obj, document))
    return (obj, issues) if not issues else (None, issues)


def size_issues(workload: Workload, document: int = 0) -> list[ManifestIssue]:
    """What makes a validated workload too large to send: its canonical form (what travels
    to Temporal, defaults filled in) beyond the limits, however the model was built."""
    canonical = workload.to_manifest()
    issues = bound_issues(canonical, document)
    if issues:
        return issues
    size = len(json.dumps(canonical, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_MANIFEST_BYTES:
        return [
            _document_issue(
                f"is {size:,} bytes in its canonical form (JSON, defaults filled in), more "
                f"than the limit of {format_size(MAX_MANIFEST_BYTES)} for one manifest",
                "make the manifest smaller, e.g. move large values into a secret volume or "
                "the image",
                document,
            )
        ]
    return []


def check_limits(workload: Workload, source: str = "<manifest>") -> None:
    """Raise :class:`ManifestError` if ``workload`` exceeds a limit of
    :mod:`cloudless.spec.limits` (for models not built by this module's loaders)."""
    issues = size_issues(workload)
    if issues:
        raise ManifestError(issues, source)


class _DuplicateKeyError(ValueError):
    """A JSON object repeats a key (JSON parsers silently keep the last one)."""


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


_StrictLoader = strict_loader(MAX_DEPTH)


def _yaml_issue(error: yaml.YAMLError, document: int) -> ManifestIssue:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    line = f"line {mark.line + 1}" if mark is not None else "the reported line"
    if isinstance(error, TooDeepError):
        return _document_issue(
            f"the YAML{where} is {problem}, the limit",
            "flatten the structure: no valid manifest nests this deep",
            document,
        )
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


#: A JSON string (escapes included) or a bracket: what decides a JSON text's nesting.
_JSON_TOKEN_RE: Final = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _json_too_deep(text: str) -> bool:
    """Whether JSON ``text`` nests deeper than :data:`MAX_DEPTH`, found without parsing it
    (the json module recurses per level and raises RecursionError on deep input)."""
    depth = 0
    for token in _JSON_TOKEN_RE.finditer(text):
        bracket = token.group()
        if bracket in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif bracket in ("]", "}"):
            depth -= 1
    return False


def _too_many_documents(document: int) -> ManifestIssue:
    return _document_issue(
        f"the file holds more than {MAX_DOCUMENTS} documents, the limit for one apply",
        "split it into several files",
        document,
    )


def _parse_documents(text: str) -> tuple[list[tuple[int, object]], list[ManifestIssue]]:
    """Split text into (index, data) documents; empty documents are skipped but counted."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        if _json_too_deep(text):
            return [], [
                _document_issue(
                    f"the JSON is nested more than {MAX_DEPTH} levels deep, the limit",
                    "flatten the structure: no valid manifest nests this deep",
                    0,
                )
            ]
        try:
            data = json.loads(text, object_pairs_hook=_json_object)
        except _DuplicateKeyError as error:
            message = f"invalid JSON: duplicate key {str(error)!r}"
            return [], [_document_issue(message, "remove one of the duplicate keys", 0)]
        except ValueError:
            pass  # maybe YAML flow style; the YAML parser reports real syntax errors
        else:
            items = data if isinstance(data, list) else [data]
            if len(items) > MAX_DOCUMENTS:
                return [], [_too_many_documents(MAX_DOCUMENTS)]
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
        if index >= MAX_DOCUMENTS:
            return documents, [_too_many_documents(index)]
        if data is not None:
            documents.append((index, data))
        index += 1
    return documents, []


def load_manifests(text: str, source: str = "<manifest>") -> list[Workload]:
    """Parse and validate every document in ``text`` (YAML, or JSON).

    Raises :class:`ManifestError` listing every problem in every document; nothing is
    returned unless all documents are valid, so an ``apply`` is all-or-nothing.
    """
    # Characters never outnumber UTF-8 bytes: only text short enough is encoded to count.
    if len(text) > MAX_MANIFEST_BYTES or len(text.encode("utf-8", "surrogatepass")) > (
        MAX_MANIFEST_BYTES
    ):
        raise ManifestError([_too_large()], source)
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


def _too_large() -> ManifestIssue:
    return _document_issue(
        f"the manifest is larger than {format_size(MAX_MANIFEST_BYTES)}, the limit "
        f"({MAX_MANIFEST_BYTES:,} bytes)",
        "split it into several files, and keep large values out of manifests (a secret "
        "volume or the image can carry them)",
        0,
        "<file>",
    )


def read_manifest(stream: IO[bytes], source: str = "<stdin>") -> str:
    """The text of a manifest read from ``stream``, reading at most one byte more than
    :data:`MAX_MANIFEST_BYTES` (``/dev/zero`` or an endless pipe end here too).

    Raises :class:`ManifestError` if there is more, or if it is not UTF-8.
    """
    data = bytearray()
    while len(data) <= MAX_MANIFEST_BYTES:  # read() may return less than asked (pipes)
        chunk = stream.read(MAX_MANIFEST_BYTES + 1 - len(data))
        if not chunk:
            break
        data += chunk
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError([_too_large()], source)
    try:
        return data.decode("utf-8")
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


def load_manifest_stream(stream: IO[bytes], source: str = "<stdin>") -> list[Workload]:
    """Load every manifest read from a binary stream (stdin), bounded like a file."""
    return load_manifests(read_manifest(stream, source), source)


def load_manifest_file(path: str | os.PathLike[str]) -> list[Workload]:
    """Load every manifest in a file; an unreadable or oversized file is reported like any
    other issue, and no more than :data:`MAX_MANIFEST_BYTES` + 1 bytes of it are read."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as handle:
            text = read_manifest(handle, source)
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
