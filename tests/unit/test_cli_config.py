"""``cloudlessctl config`` and the global connection options, run in-process (no server:
every case here fails or finishes before anything is dialled)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

import workers.coordinator as coordinator_module
from cloudless import clientconfig as cc
from cloudless.cli.main import app
from cloudless.testing.cli import invoke_ctl
from workers.coordinator import app as coordinator

CONFIG = """\
current-context: dev
contexts:
  dev:
    cluster: dev
    temporal:
      address: 127.0.0.1:7233
  prod:
    cluster: prod
    temporal:
      address: temporal.example.com:7233
      namespace: prod
      tls:
        ca: ca.crt
        cert: tls.crt
        key: tls.key
"""


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    for name in list(os.environ):
        if name.startswith("CLOUDLESS_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    (home / ".cloudless").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    yield home


def ctl(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250", **(env or {})})


def write_config(path: Path, text: str = CONFIG) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_get_contexts_marks_the_current_one(home: Path) -> None:
    write_config(home / ".cloudless" / "config.yaml")
    result = ctl("config", "get-contexts")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    assert ["*", "dev", "dev", "127.0.0.1:7233", "default", "none"] in lines
    assert ["prod", "prod", "temporal.example.com:7233", "prod", "mTLS"] in lines


def test_use_context_switches_and_view_follows(home: Path, tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml")
    assert ctl("--config", str(path), "config", "use-context", "prod").exit_code == 0
    view = yaml.safe_load(ctl("--config", str(path), "config", "view").output)
    assert view["context"] == "prod" and view["cluster"] == "prod"
    assert view["temporal"]["tls"]["ca"] == str(tmp_path / "ca.crt")
    assert view["sources"]["address"] == f"contexts.prod.temporal.address in {path}"
    bad = ctl("--config", str(path), "config", "use-context", "nope")
    assert bad.exit_code == 1 and "has no context 'nope'" in bad.output


def test_use_context_repairs_a_current_context_that_names_nothing(
    home: Path, tmp_path: Path
) -> None:
    path = write_config(
        tmp_path / "c.yaml", CONFIG.replace("current-context: dev", "current-context: gone")
    )
    broken = ctl("--config", str(path), "get", "workloads")
    assert broken.exit_code == 1
    assert f"context 'gone' (from current-context in {path}) is not in config file" in broken.output
    assert ctl("--config", str(path), "config", "use-context", "dev").exit_code == 0
    assert cc.load_config(path).current_context == "dev"


def test_view_never_shows_the_api_key(home: Path, tmp_path: Path) -> None:
    key = "tcld-s3cr3t-4pi-k3y"
    for output in ("yaml", "json", "table"):
        result = ctl("config", "view", "-o", output, env={cc.ENV_TEMPORAL_API_KEY: key})
        assert result.exit_code == 0, result.output
        assert key not in result.output and cc.REDACTED in result.output
    keyfile = tmp_path / "api.key"
    keyfile.write_text(key)
    keyfile.chmod(0o600)
    result = ctl("--temporal-api-key-file", str(keyfile), "config", "view")
    assert result.exit_code == 0 and key not in result.output and str(keyfile) in result.output


def test_unreadable_tls_material_is_one_line_naming_the_file_and_flag(
    home: Path, tmp_path: Path
) -> None:
    (tmp_path / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    key = tmp_path / "tls.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o644)
    result = ctl(
        "--temporal-tls-cert", str(tmp_path / "tls.crt"), "--temporal-tls-key", str(key),
        "get", "workloads",
    )  # fmt: skip
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: Temporal TLS client key (from --temporal-tls-key)")
    assert str(key) in lines[0] and "chmod 600" in lines[0]


def test_the_same_from_a_context_names_the_config_field(home: Path, tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml")
    result = ctl("--config", str(path), "--context", "prod", "get", "nodes")
    assert result.exit_code == 1
    assert (
        f"error: Temporal TLS CA certificate (from contexts.prod.temporal.tls.ca in {path}): "
        f"{tmp_path / 'ca.crt'} does not exist"
    ) in result.output


def test_dev_commands_refuse_a_context(home: Path) -> None:
    result = ctl("--context", "prod", "dev", "down")
    assert result.exit_code == 1 and "`dev` commands use --state-dir" in result.output


def test_a_broken_config_file_fails_every_command_clearly(home: Path) -> None:
    write_config(home / ".cloudless" / "config.yaml", "contexts:\n  dev:\n    clster: x\n")
    result = ctl("get", "nodes")
    assert result.exit_code == 1
    assert "contexts.dev.clster: unknown key" in result.output
    assert str(home / ".cloudless" / "config.yaml") in result.output


def test_the_coordinator_resolves_the_same_options_without_a_config_file(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its TLS flags and variables go through the same resolution (here failing on a
    world-readable key, before anything is dialled); an operator's config file is not read."""
    # Its logging setup would bind this process's loggers to the runner's capture stream.
    monkeypatch.setattr(coordinator_module, "configure_logging", lambda: None)
    write_config(home / ".cloudless" / "config.yaml", "contexts:\n  broken: [\n")
    (tmp_path / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    key = tmp_path / "tls.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o640)
    env = {
        cc.ENV_TEMPORAL_TLS_CERT: str(tmp_path / "tls.crt"),
        cc.ENV_TEMPORAL_TLS_KEY: str(key),
        "CLOUDLESS_STATE_DIR": str(tmp_path / "state"),
    }
    result = CliRunner().invoke(coordinator, [], env=env)
    assert result.exit_code == 1
    assert (
        f"cloudless-coordinator: Temporal TLS client key (from {cc.ENV_TEMPORAL_TLS_KEY}): "
        f"private key {key} has mode 0o640"
    ) in result.output
    refused = CliRunner().invoke(coordinator, ["--no-temporal-tls"], env=env)
    assert refused.exit_code == 1
    assert (
        f"{cc.ENV_TEMPORAL_TLS_CERT} gives TLS material, but --no-temporal-tls turns TLS off"
    ) in refused.output


def test_the_test_helpers_ignore_an_operator_config_file(home: Path) -> None:
    """``cloudless.testing.cli`` points at the cluster under test, not at a context."""
    write_config(
        home / ".cloudless" / "config.yaml",
        CONFIG.replace("current-context: dev", "current-context: prod"),
    )
    assert yaml.safe_load(ctl("config", "view").output)["cluster"] == "prod"
    view = invoke_ctl(["config", "view"])
    assert view.exit_code == 0 and yaml.safe_load(view.output)["cluster"] == "dev"
