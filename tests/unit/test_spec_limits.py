"""Every bound of :mod:`cloudless.spec.limits`, checked where input enters (issue #10,
item 1): an input past a limit ends in a ManifestError naming the limit, quickly, never in
a MemoryError, a RecursionError or a hang."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloudless.spec import (
    ManifestError,
    Workload,
    check_limits,
    load_manifest_file,
    load_manifest_stream,
    load_manifests,
    parse_workload,
)
from cloudless.spec.limits import (
    MAX_DEPTH,
    MAX_DOCUMENTS,
    MAX_ENV_BYTES,
    MAX_ITEMS,
    MAX_MANIFEST_BYTES,
    MAX_STRING_BYTES,
    MAX_VALUES,
)
from tests.unit.test_spec import minimal, put

REPO = Path(__file__).resolve().parents[2]
BOX = "spec.container"


def refused(load: Callable[[], object]) -> list[tuple[str, str]]:
    """(path, message and fix) of every issue ``load`` raises; it must raise, within 5 s."""
    start = time.monotonic()
    with pytest.raises(ManifestError) as caught:
        load()
    assert time.monotonic() - start < 5, "a refusal must not take long"
    for issue in caught.value.issues:
        assert "\n" not in issue.message and "\n" not in issue.fix
        assert len(issue.message) < 400 and len(issue.path) < 200, issue
    return [(i.path, f"{i.message} (fix: {i.fix})") for i in caught.value.issues]


def text_of(manifest: Any) -> str:
    return json.dumps(manifest)


# ------------------------------------------------------------------ whole manifest bytes


def test_text_over_the_manifest_limit_is_refused_and_at_the_limit_accepted() -> None:
    head = "# " + "x" * 100 + "\n"
    body = json.dumps(minimal())
    filler = "# padding\n" * ((MAX_MANIFEST_BYTES - len(body) - 1) // 10)
    at_limit = filler + body + "\n"
    at_limit += "#" * (MAX_MANIFEST_BYTES - len(at_limit.encode()) - 1) + "\n"
    assert len(at_limit.encode()) == MAX_MANIFEST_BYTES
    assert [w.metadata.name for w in load_manifests(at_limit)] == ["web"]
    [(path, text)] = refused(lambda: load_manifests(head + at_limit))
    assert path == "<file>" and "256 KiB" in text


def test_multibyte_text_is_counted_in_bytes() -> None:
    text = "# " + "é" * (MAX_MANIFEST_BYTES // 2) + "\n" + json.dumps(minimal())
    assert len(text) < MAX_MANIFEST_BYTES < len(text.encode())
    [(_, message)] = refused(lambda: load_manifests(text))
    assert "larger than 256 KiB" in message


def test_dev_zero_is_refused_after_reading_one_byte_past_the_limit() -> None:
    [(path, text)] = refused(lambda: load_manifest_file("/dev/zero"))
    assert path == "<file>" and "larger than 256 KiB" in text


def test_a_huge_file_is_read_only_up_to_the_limit(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as out:  # sparse: 1 GiB on paper, nothing on disk
        out.truncate(1024**3)
    [(_, text)] = refused(lambda: load_manifest_file(huge))
    assert "larger than 256 KiB" in text


class CountingStream(io.RawIOBase):
    """An endless stream that records how much was read from it."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = min(len(buffer), 4096)  # a pipe hands out little at a time
        buffer[:size] = b"a" * size
        self.read_bytes += size
        return size


def test_stdin_is_read_bounded() -> None:
    stream = CountingStream()
    [(_, text)] = refused(lambda: load_manifest_stream(stream))  # type: ignore[arg-type]
    assert "larger than 256 KiB" in text
    assert stream.read_bytes <= MAX_MANIFEST_BYTES + 4096


def test_stdin_within_the_limit_loads() -> None:
    stream = io.BytesIO(json.dumps(minimal()).encode())
    assert [w.metadata.name for w in load_manifest_stream(stream)] == ["web"]


def test_not_utf8_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"metadata: {name: caf\xe9}\n")
    [(path, text)] = refused(lambda: load_manifest_file(bad))
    assert path == "<file>" and "not UTF-8" in text


# ------------------------------------------------------------------ documents


def test_more_documents_than_the_limit_are_refused() -> None:
    doc = json.dumps(minimal())
    within = "\n---\n".join(doc.replace('"web"', f'"w{i}"') for i in range(MAX_DOCUMENTS))
    assert len(load_manifests(within)) == MAX_DOCUMENTS
    [(_, text)] = refused(lambda: load_manifests(within + "\n---\n" + doc))
    assert f"more than {MAX_DOCUMENTS} documents" in text


def test_empty_documents_count_too() -> None:
    [(_, text)] = refused(lambda: load_manifests("---\n" * (MAX_DOCUMENTS + 5)))
    assert f"more than {MAX_DOCUMENTS} documents" in text


def test_a_json_array_of_too_many_documents_is_refused() -> None:
    [(_, text)] = refused(lambda: load_manifests(json.dumps([minimal()] * (MAX_DOCUMENTS + 1))))
    assert f"more than {MAX_DOCUMENTS} documents" in text


# ------------------------------------------------------------------ strings


@pytest.mark.parametrize(
    ("path", "value", "reported"),
    [
        (f"{BOX}.args", ["x" * (MAX_STRING_BYTES + 1)], f"{BOX}.args[0]"),
        (
            f"{BOX}.env",
            [{"name": "BIG", "value": "é" * (MAX_STRING_BYTES // 2 + 1)}],
            f"{BOX}.env[0].value",
        ),
        ("metadata.labels", {"k" * (MAX_STRING_BYTES + 1): "v"}, "metadata.labels"),
    ],
    ids=["arg", "env-value-multibyte", "key"],
)
def test_a_string_over_the_limit_is_refused(path: str, value: object, reported: str) -> None:
    [(where, text)] = refused(lambda: load_manifests(text_of(put(minimal(), path, value))))
    assert where.startswith(reported) and "64 KiB per string" in text
    assert len(where) < 100  # a long key is cut short in the path


def test_a_string_at_the_limit_is_accepted() -> None:
    manifest = put(minimal(), f"{BOX}.args", ["x" * MAX_STRING_BYTES])
    [workload] = load_manifests(text_of(manifest))
    assert len(workload.spec.container.args[0]) == MAX_STRING_BYTES


# ------------------------------------------------------------------ lists and mappings


def test_a_list_over_the_limit_is_refused() -> None:
    manifest = put(minimal(), f"{BOX}.args", ["a"] * (MAX_ITEMS + 1))
    [(where, text)] = refused(lambda: load_manifests(text_of(manifest)))
    assert where == f"{BOX}.args" and f"more than the limit of {MAX_ITEMS:,}" in text
    assert len(load_manifests(text_of(put(minimal(), f"{BOX}.args", ["a"] * MAX_ITEMS)))) == 1


def test_a_mapping_over_the_limit_is_refused() -> None:
    labels = {f"k{i}": "v" for i in range(MAX_ITEMS + 1)}
    [(where, text)] = refused(
        lambda: load_manifests(text_of(put(minimal(), "metadata.labels", labels)))
    )
    assert where == "metadata.labels" and "entries" in text


# ------------------------------------------------------------------ nesting


def nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels - 1):
        value = [value]
    return value


def test_nesting_at_the_limit_is_checked_by_fields_not_by_depth() -> None:
    """A document MAX_DEPTH deep passes the bound (the field check refuses the shape)."""
    manifest = put(minimal(), "spec.extra", nested(MAX_DEPTH - 2))  # document + spec = 2
    [(where, text)] = refused(lambda: load_manifests(text_of(manifest)))
    assert where == "spec.extra" and "unknown field" in text


@pytest.mark.parametrize(
    "text",
    [
        "spec: " + "[" * 100_000,  # YAML flow style
        "".join("  " * i + "a:\n" for i in range(400)),  # YAML block style
        "[" * 100_000 + "]" * 100_000,  # JSON
        '{"a":' * 40_000 + "1" + "}" * 40_000,
        text_of(put(minimal(), "spec.extra", nested(MAX_DEPTH))),  # one level too deep
    ],
    ids=["yaml-flow", "yaml-block", "json-list", "json-object", "one-too-deep"],
)
def test_deep_nesting_is_refused_naming_the_limit(text: str) -> None:
    [(_, message)] = refused(lambda: load_manifests(text))
    assert f"more than {MAX_DEPTH} levels deep" in message


def test_deep_python_data_is_refused_by_parse_workload() -> None:
    manifest = put(minimal(), "spec.extra", nested(5000))
    [(where, message)] = refused(lambda: parse_workload(manifest))
    assert where.startswith("spec.extra") and f"{MAX_DEPTH} levels" in message


# ------------------------------------------------------------------ values (YAML aliases)


def test_a_billion_laughs_document_is_refused_quickly() -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 9):
        refs = ",".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    bomb = "\n".join(lines) + "\nspec:\n  container:\n    args: *a8\n"
    [(where, text)] = refused(lambda: load_manifests(bomb))
    assert where == "<document>" and f"more than {MAX_VALUES:,} values" in text


def test_a_large_string_repeated_through_aliases_is_refused() -> None:
    big = "x" * (60 * 1024)
    text = (
        f"apiVersion: cloudless.dev/v1\nkind: Workload\nmetadata: {{name: web}}\n"
        f"spec:\n  container:\n    image: busybox\n    args: [&big {big}, *big, *big, *big, *big]\n"
    )
    assert len(text.encode()) < MAX_MANIFEST_BYTES
    [(where, message)] = refused(lambda: load_manifests(text))
    assert where == "<document>" and "more than 256 KiB of text" in message


# ------------------------------------------------------------------ environment


def test_the_environment_total_is_bounded() -> None:
    # Two values just under the string limit fit (2 x "Vi=" + 65,000 + NUL = 130,008 bytes).
    env = [{"name": f"V{i}", "value": "v" * 65_000} for i in range(2)]
    assert MAX_ENV_BYTES >= 130_008 and MAX_STRING_BYTES >= 65_000
    assert len(load_manifests(text_of(put(minimal(), f"{BOX}.env", env)))) == 1
    env.append({"name": "MORE", "value": "v" * 2000})
    [(where, text)] = refused(lambda: load_manifests(text_of(put(minimal(), f"{BOX}.env", env))))
    assert where == f"{BOX}.env" and "132,014 bytes" in text and "128 KiB" in text


# ------------------------------------------------------------------ models built by hand


def test_check_limits_bounds_a_model_the_loaders_never_saw() -> None:
    """Control characters take 6 bytes each in JSON: text within the raw bound can still
    make a payload over it, and check_limits measures what would be sent."""
    args = ["\x01" * 60_000] * 4
    workload = Workload.model_validate(put(minimal(), f"{BOX}.args", args))
    with pytest.raises(ManifestError) as caught:
        check_limits(workload, "workload default/web")
    assert "canonical form" in str(caught.value) and "256 KiB" in str(caught.value)
    check_limits(parse_workload(minimal()))  # within bounds: no error


def test_check_limits_walks_a_model_with_a_long_list() -> None:
    workload = Workload.model_validate(put(minimal(), f"{BOX}.args", ["a"] * (MAX_ITEMS + 1)))
    with pytest.raises(ManifestError, match="more than the limit of 1,000"):
        check_limits(workload)


# ------------------------------------------------------------------ the CLI


def test_cloudlessctl_apply_dev_zero_fails_fast_with_the_limit() -> None:
    """A real process, like a user's shell: no traceback, one line, non-zero, quickly."""
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "cloudless.cli.main", "apply", "-f", "/dev/zero"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
    assert "larger than 256 KiB" in result.stderr
    assert "/dev/zero" in result.stderr
    assert elapsed < 30, elapsed


def test_cloudlessctl_apply_from_endless_stdin_fails_with_the_limit() -> None:
    with open("/dev/zero", "rb") as zero:
        result = subprocess.run(
            [sys.executable, "-m", "cloudless.cli.main", "apply", "-f", "-"],
            stdin=zero,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
            check=False,
        )
    assert result.returncode == 1, result
    assert "<stdin>" in result.stderr and "larger than 256 KiB" in result.stderr
