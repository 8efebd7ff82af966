"""Generated manifests, valid and invalid, through ``cloudlessctl apply`` against the real dev
stack (issue 10): each ends either in a clear error with nothing created, or in a workload
that settles; nothing in between, and the stack stays healthy throughout.

The stack is ``cloudlessctl dev up`` (real processes: transit, the Temporal dev server, a
coordinator, three exec agents) on shifted ports; the CLI runs in-process, so an example
costs an apply and a delete rather than an interpreter start. Hypothesis runs derandomized
(the same examples every run) with a bounded number of examples; a failure prints the
manifest that caused it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from typer.testing import Result

from cloudless.testing.cli import invoke_ctl

pytestmark = [pytest.mark.temporal]

REPO = Path(__file__).resolve().parents[2]
OFFSET = 2900  # clear of dev (0), devstack (1100), chaos (1300, 1600, 2300), bench (2500, 2700)
#: An error is a few lines: a header and one line per problem, never a traceback or a dump.
MAX_ERROR_LINES = 25
MAX_ERROR_CHARS = 6000
#: Phases a workload may be in once `apply --wait` answered: settled, or waiting for room.
SETTLED = {"Available", "Completed", "Pending"}


class Stack:
    """The dev stack on shifted ports, driven by the CLI in-process."""

    def __init__(self, state: Path) -> None:
        self.state = state
        # The stack's own context (`dev up` wrote it): the front, with the admin certificate.
        self.base = ["--config", str(state / "config.yaml"), "--state-dir", str(state)]

    def ctl(self, *args: str) -> Result:
        return invoke_ctl([*self.base, *args])

    def workloads(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every workload in every namespace, by (namespace, name)."""
        listed = self.ctl("get", "workloads", "-A", "-o", "json")
        assert listed.exit_code == 0, listed.output
        return {(w["namespace"], w["name"]): w for w in json.loads(listed.stdout)}

    def healthy(self) -> None:
        nodes = self.ctl("get", "nodes", "-o", "json")
        assert nodes.exit_code == 0, nodes.output
        states = {n["node_id"]: n["state"] for n in json.loads(nodes.stdout)}
        assert len(states) == 3 and set(states.values()) == {"Ready"}, states


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, temporal_binary_path: str) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("fuzz") / "state"
    cmd = [sys.executable, "-m", "cloudless.cli.main", "--state-dir", str(state)]
    env = {**os.environ, "COLUMNS": "200"}
    try:
        up = subprocess.run(
            [*cmd, "dev", "up", "--port-offset", str(OFFSET), "--runtime", "exec"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        s = Stack(state)
        s.ctl("delete", "workload", "hello", "--wait")  # the example: not part of the fuzz
        yield s
    finally:
        down = subprocess.run(
            [*cmd, "dev", "down"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        assert down.returncode == 0, down.stderr


# --- manifests --------------------------------------------------------------------------

#: Text a careless user or an attacker might put anywhere: control characters, NUL, lone
#: surrogates (YAML's \uD800), very long words, markup, paths.
nasty_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(max_codepoint=0x9F), max_size=20),
    st.sampled_from(["", " ", "\x00", "a\x00b", "\ud800", "../../etc/passwd", "[red]x[/red]"]),
    st.builds(lambda n: "x" * n, st.integers(0, 5000)),
)
scalars = st.one_of(
    nasty_text,
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)

#: Where a mutation lands: fields the manifest has, and a few it does not.
PATHS: list[tuple[str, ...]] = [
    ("apiVersion",),
    ("kind",),
    ("metadata", "name"),
    ("metadata", "namespace"),
    ("metadata", "labels"),
    ("spec",),
    ("spec", "replicas"),
    ("spec", "minAvailable"),
    ("spec", "runtime"),
    ("spec", "strategy"),
    ("spec", "priority"),
    ("spec", "restartPolicy"),
    ("spec", "container", "command"),
    ("spec", "container", "args"),
    ("spec", "container", "env"),
    ("spec", "container", "image"),
    ("spec", "container", "workingDir"),
    ("spec", "container", "ports"),
    ("spec", "container", "readinessProbe"),
    ("spec", "resources", "cpu"),
    ("spec", "resources", "memory"),
    ("spec", "placement"),
    ("spec", "volumes"),
    ("spec", "securityContext"),
    ("spec", "unknownField"),
    ("status",),
]


def valid_manifest(name: str, replicas: int, env: dict[str, str], strategy: str) -> dict[str, Any]:
    return {
        "apiVersion": "cloudless.dev/v1",
        "kind": "Workload",
        "metadata": {"name": name, "labels": {"fuzz": "yes"}},
        "spec": {
            "replicas": replicas,
            "runtime": "exec",
            "strategy": strategy,
            "container": {
                "command": ["sleep"],
                "args": ["3600"],
                "env": [{"name": k, "value": v} for k, v in env.items()],
            },
            "resources": {"cpu": "10m", "memory": "8Mi"},
        },
    }


def put(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node: Any = doc
    for key in path[:-1]:
        if not isinstance(node, dict):
            return
        node = node.setdefault(key, {})
    if isinstance(node, dict):
        node[path[-1]] = value


@st.composite
def manifests(draw: st.DrawFn) -> tuple[str, str]:
    """(workload name, document text): a valid manifest, then none to three mutations."""
    name = f"fz-{uuid.UUID(int=draw(st.integers(0, 2**64))).hex[:10]}"
    env = draw(
        st.dictionaries(
            st.from_regex(r"[A-Z_][A-Z0-9_]{0,15}", fullmatch=True),
            st.text(max_size=30),
            max_size=3,
        )
    )
    doc = valid_manifest(
        name, draw(st.integers(0, 3)), env, draw(st.sampled_from(["spread", "binpack"]))
    )
    for _ in range(draw(st.integers(0, 3))):
        put(doc, draw(st.sampled_from(PATHS)), draw(values))
    text = json.dumps(doc, ensure_ascii=True, allow_nan=True)  # JSON is YAML
    if draw(st.integers(0, 9)) == 0:  # sometimes not a document at all
        text = draw(
            st.sampled_from(
                [text[: len(text) // 2], "{", "- a\n- b", "[" * 2000 + "]" * 2000, "&a [*a]"]
            )
        )
    return name, text


# --- the property -------------------------------------------------------------------------


def check_refusal(output: str) -> None:
    lines = output.strip().splitlines()
    assert lines and lines[0].startswith("error: "), output[:2000]
    assert "Traceback" not in output, output[:4000]
    assert len(lines) <= MAX_ERROR_LINES and len(output) <= MAX_ERROR_CHARS, output[:2000]


def check_settled(stack: Stack, key: tuple[str, str], workload: dict[str, Any]) -> None:
    assert workload["phase"] in SETTLED, workload
    if workload["phase"] == "Available":
        assert workload["ready"] == workload["desired"], workload
    described = stack.ctl("describe", "workload", key[1], "-n", key[0])
    assert described.exit_code == 0, described.output


@pytest.mark.timeout(1500)
def test_generated_manifests_are_refused_cleanly_or_settle(stack: Stack, tmp_path: Path) -> None:
    before = stack.workloads()

    @settings(
        max_examples=int(os.environ.get("CLOUDLESS_FUZZ_EXAMPLES", "40")),
        derandomize=True,
        deadline=None,
        database=None,
        # No shrinking: each step is a real apply; the failing manifest is printed as is.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(manifests())
    def one(example: tuple[str, str]) -> None:
        _, text = example
        path = tmp_path / "manifest.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        applied = stack.ctl("apply", "-f", str(path), "--wait", "--timeout", "60")
        listed = stack.workloads()
        created = {k: w for k, w in listed.items() if k not in before}
        try:
            if applied.exit_code == 0:
                assert len(created) == 1, (created, applied.output)
            elif created:  # accepted, but not all ready: only for want of room
                assert [w["phase"] for w in created.values()] == ["Pending"], applied.output
            else:
                check_refusal(applied.output)
            for key, workload in created.items():
                check_settled(stack, key, workload)
        finally:
            for namespace, name in created:
                deleted = stack.ctl("delete", "workload", name, "-n", namespace, "--wait")
                assert deleted.exit_code == 0, deleted.output
        stack.healthy()

    one()
    assert set(stack.workloads()) == set(before)
