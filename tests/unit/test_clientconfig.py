"""The client config file (contexts), its errors, and how every connection setting is
resolved: flag > environment > context > default (``cloudless.clientconfig``)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from cloudless import clientconfig as cc
from cloudless.clientconfig import ClientFlags, resolve
from cloudless.errors import ConfigError
from cloudless.temporal import TemporalTLS

CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"

FULL = """\
# operator config
current-context: dev
contexts:
  dev:
    cluster: dev
    temporal:
      address: 127.0.0.1:7233
  prod:
    cluster: prod
    state-dir: state
    temporal:
      address: temporal.example.com:7233
      namespace: prod-ns
      tls:
        ca: pki/ca.crt
        cert: pki/tls.crt
        key: /abs/tls.key
        server-name: cloudless-gateway
      api-key-file: ~/key
"""


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No CLOUDLESS_* variable from the outer shell, a HOME of our own, cwd in tmp."""
    for name in list(os.environ):
        if name.startswith("CLOUDLESS_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    yield home


def write(path: Path, text: str | bytes, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(mode)
    return path


# ----------------------------------------------------------------------------- loading


def test_a_full_file_loads_with_paths_relative_to_its_directory(
    tmp_path: Path, clean_env: Path
) -> None:
    loaded = cc.load_config(write(tmp_path / "conf" / "config.yaml", FULL))
    assert loaded.current_context == "dev"
    prod = loaded.contexts["prod"]
    assert prod.state_dir == tmp_path / "conf" / "state"
    assert prod.temporal.tls is not None
    assert prod.temporal.tls.ca == tmp_path / "conf" / "pki" / "ca.crt"
    assert prod.temporal.tls.key == Path("/abs/tls.key")
    assert prod.temporal.tls.server_name == "cloudless-gateway"
    assert prod.temporal.api_key_file == clean_env / "key"
    assert loaded.contexts["dev"].temporal.tls is None


def test_an_empty_file_is_no_contexts(tmp_path: Path) -> None:
    assert cc.load_config(write(tmp_path / "c.yaml", "")).contexts == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "contexts:\n  dev:\n    temporal:\n      tls:\n        bogus: 1\n",
            "contexts.dev.temporal.tls.bogus: unknown key",
        ),
        ("current-contxt: dev\n", "current-contxt: unknown key"),
        (
            "contexts:\n  dev:\n    temporal:\n      tls:\n        cert: a.crt\n",
            "contexts.dev.temporal.tls: cert is given without key",
        ),
        (
            "contexts:\n  dev:\n    temporal:\n      tls:\n        key: a.key\n",
            "key is given without cert",
        ),
        ("contexts:\n  dev:\n    temporal:\n      address: nope\n", "is not host:port"),
        ("contexts:\n  dev:\n    temporal:\n      address: h:70000\n", "is not host:port"),
        ("contexts:\n  'bad name':\n    cluster: x\n", "context name 'bad name'"),
        ("contexts:\n  dev: {}\n  dev: {}\n", "duplicate key 'dev'"),
        ("contexts:\n  dev:\n   cluster: x\n  - y\n", "invalid YAML at line"),
        ("- a\n- b\n", "the top level must be a mapping"),
        ("contexts:\n  dev:\n    state-dir: ''\n", "contexts.dev.state-dir: is empty"),
        ("x: " + "[" * 40 + "]" * 40 + "\n", "nested more than 16 levels deep"),
    ],
)
def test_bad_files_are_refused_naming_the_file_and_the_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError) as err:
        cc.load_config(path)
    assert expected in str(err.value)
    assert str(err.value).startswith(f"config file {path}")


def test_many_problems_are_listed_up_to_a_bound(tmp_path: Path) -> None:
    text = "contexts:\n  dev:\n" + "".join(f"    k{i}: 1\n" for i in range(20))
    with pytest.raises(ConfigError, match=r"and 15 more$"):
        cc.load_config(write(tmp_path / "c.yaml", text))


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "#" * (cc.MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than 1024 KiB"):
        cc.load_config(path)


def test_a_missing_file_named_by_the_flag_is_an_error(tmp_path: Path, clean_env: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.yaml does not exist"):
        cc.client_settings(ClientFlags(config=tmp_path / "nope.yaml"))


# ----------------------------------------------------------------------------- finding


def test_where_the_file_is_found(tmp_path: Path, clean_env: Path) -> None:
    state = tmp_path / "state"
    home_file = write(clean_env / ".cloudless" / "config.yaml", "")
    assert cc.find_config(None, {}, state, clean_env) == (home_file, "the home directory")
    local = write(state / "config.yaml", "")
    assert cc.find_config(None, {}, state, clean_env) == (local, "the state directory")
    env = {cc.ENV_CONFIG: str(tmp_path / "env.yaml")}
    assert cc.find_config(None, env, state, clean_env) == (tmp_path / "env.yaml", cc.ENV_CONFIG)
    flag = cc.find_config(tmp_path / "flag.yaml", env, state, clean_env)
    assert flag == (tmp_path / "flag.yaml", "--config")
    assert cc.find_config(None, {}, tmp_path / "none", tmp_path / "nohome") is None


def test_the_state_dir_flag_says_where_the_file_is_looked_for(
    tmp_path: Path, clean_env: Path
) -> None:
    write(tmp_path / "s" / "config.yaml", "current-context: a\ncontexts:\n  a:\n    cluster: ca\n")
    got = cc.client_settings(ClientFlags(state_dir=tmp_path / "s"))
    assert got.cluster == cc.Setting("ca", f"contexts.a.cluster in {tmp_path / 's/config.yaml'}")
    assert got.state_dir.value == tmp_path / "s"  # the flag, not the context, says so


# ----------------------------------------------------------------------------- contexts


def test_the_context_is_chosen_by_flag_then_env_then_current(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    loaded = cc.parse_config(FULL, path)[0]
    assert resolve(ClientFlags(), {}, loaded, path).cluster.value == "dev"
    env = {cc.ENV_CONTEXT: "prod"}
    assert resolve(ClientFlags(), env, loaded, path).cluster.value == "prod"
    chosen = resolve(ClientFlags(context="dev"), env, loaded, path)
    assert chosen.context == cc.Setting("dev", "--context")


def test_an_unknown_context_is_an_error_listing_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    loaded = cc.parse_config(FULL, path)[0]
    with pytest.raises(ConfigError, match=r"context 'stage' \(from --context\).*dev, prod"):
        resolve(ClientFlags(context="stage"), {}, loaded, path)
    with pytest.raises(ConfigError, match="needs a config file, and none was found"):
        resolve(ClientFlags(), {cc.ENV_CONTEXT: "dev"})


# ----------------------------------------------------------------------------- precedence

#: field -> (flag kwargs, env, context yaml under `temporal:` or the context) per value
SOURCES = ("flag", "env", "context")


def _setup(field: str, source: str, value: str) -> tuple[dict[str, object], dict[str, str], str]:
    """What makes ``source`` set ``field`` to ``value``: flag kwargs, env, context YAML."""
    table: dict[str, tuple[str, str, str]] = {
        "address": ("temporal_address", "CLOUDLESS_TEMPORAL_ADDRESS", "temporal.address"),
        "namespace": ("temporal_namespace", "CLOUDLESS_TEMPORAL_NAMESPACE", "temporal.namespace"),
        "cluster": ("cluster", "CLOUDLESS_CLUSTER", "cluster"),
        "state_dir": ("state_dir", "CLOUDLESS_STATE_DIR", "state-dir"),
        "ca": ("temporal_tls_ca", cc.ENV_TEMPORAL_TLS_CA, "temporal.tls.ca"),
        "server_name": (
            "temporal_tls_server_name",
            cc.ENV_TEMPORAL_TLS_SERVER_NAME,
            "temporal.tls.server-name",
        ),
        "api_key_file": (
            "temporal_api_key_file",
            cc.ENV_TEMPORAL_API_KEY_FILE,
            "temporal.api-key-file",
        ),
    }
    flag, env, key = table[field]
    is_path = field in ("state_dir", "ca", "api_key_file")
    if source == "flag":
        return {flag: Path(value) if is_path else value}, {}, ""
    if source == "env":
        return {}, {env: value}, ""
    return {}, {}, f"{key}={value}"


def _context_yaml(assignments: list[str]) -> str:
    tree: dict[str, Any] = {}
    for assignment in assignments:
        key, value = assignment.split("=", 1)
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return yaml.safe_dump({"current-context": "c", "contexts": {"c": tree}})


FIELDS = ("address", "namespace", "cluster", "state_dir", "ca", "server_name", "api_key_file")
VALUES = {
    "address": "{}.example:7233",
    "namespace": "ns-{}",
    "cluster": "cl-{}",
    "state_dir": "/state/{}",
    "ca": "/pki/{}/ca.crt",
    "server_name": "name-{}",
    "api_key_file": "/keys/{}",
}
DEFAULTS = {"address": "127.0.0.1:7233", "namespace": "default", "cluster": "dev"}


@given(st.dictionaries(st.sampled_from(FIELDS), st.sets(st.sampled_from(SOURCES))))
def test_each_field_comes_from_the_highest_source_that_sets_it(
    chosen: dict[str, set[str]],
) -> None:
    flags: dict[str, object] = {}
    env: dict[str, str] = {}
    assignments: list[str] = []
    for field, sources in chosen.items():
        for source in sources:
            f, e, c = _setup(field, source, VALUES[field].format(source))
            flags |= f
            env |= e
            assignments += [c] if c else []
    path = Path("/etc/cloudless/config.yaml")
    loaded = cc.parse_config(_context_yaml(assignments), path)[0]
    got = resolve(ClientFlags(**flags), env, loaded, path)  # type: ignore[arg-type]
    effective: dict[str, cc.Setting[Any] | None] = {
        "address": got.address,
        "namespace": got.namespace,
        "cluster": got.cluster,
        "state_dir": got.state_dir,
        "ca": got.tls.ca if got.tls else None,
        "server_name": got.tls.server_name if got.tls else None,
        "api_key_file": got.api_key_file,
    }
    for field in FIELDS:
        sources = chosen.get(field, set())
        winner = next((s for s in SOURCES if s in sources), None)
        setting = effective[field]
        if winner is None:
            if field in DEFAULTS:
                assert setting == cc.Setting(DEFAULTS[field], "default")
            elif field == "state_dir":
                assert setting is not None and setting.source == "default"
            else:
                assert setting is None
            continue
        assert setting is not None, field
        expected = VALUES[field].format(winner)
        assert str(setting.value) == expected, (field, winner)
        if winner == "flag":
            assert setting.source.startswith("--"), setting.source
        elif winner == "env":
            assert setting.source.startswith("CLOUDLESS_"), setting.source
        else:
            assert setting.source.startswith("contexts.c.") and str(path) in setting.source
    # TLS is on iff some TLS material or an API key is set.
    tls_fields = {"ca", "server_name", "api_key_file"} & {f for f, s in chosen.items() if s}
    assert (got.tls is not None) == bool(tls_fields)


def test_a_flag_beats_a_context_even_when_it_equals_the_default(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    loaded = cc.parse_config(
        "current-context: p\ncontexts:\n  p:\n    temporal:\n      namespace: prod\n", path
    )[0]
    got = resolve(ClientFlags(temporal_namespace="default"), {}, loaded, path)
    assert got.namespace == cc.Setting("default", "--temporal-namespace")
    assert resolve(ClientFlags(), {}, loaded, path).namespace.value == "prod"


def test_the_client_certificate_and_key_come_together_from_one_level(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    loaded = cc.parse_config(FULL.replace("current-context: dev", "current-context: prod"), path)[0]
    env = {cc.ENV_TEMPORAL_TLS_CERT: "/env/tls.crt", cc.ENV_TEMPORAL_TLS_KEY: "/env/tls.key"}
    got = resolve(ClientFlags(), env, loaded, path)
    assert got.tls is not None and got.tls.cert and got.tls.key
    assert (got.tls.cert.value, got.tls.key.value) == (Path("/env/tls.crt"), Path("/env/tls.key"))
    assert got.tls.ca is not None and got.tls.ca.value == tmp_path / "pki" / "ca.crt"  # context
    with pytest.raises(ConfigError, match="--temporal-tls-cert is given without --temporal-tls"):
        resolve(ClientFlags(temporal_tls_cert=Path("/f.crt")), env, loaded, path)
    with pytest.raises(ConfigError, match=f"{cc.ENV_TEMPORAL_TLS_KEY} is given without"):
        resolve(ClientFlags(), {cc.ENV_TEMPORAL_TLS_KEY: "/k"})


def test_tls_switch(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    prod = cc.parse_config(FULL.replace("current-context: dev", "current-context: prod"), path)[0]
    # --temporal-tls alone: system roots, no client certificate.
    alone = resolve(ClientFlags(temporal_tls=True), {})
    assert alone.tls == cc.TLSSettings(source="--temporal-tls")
    # --no-temporal-tls overrides a context's tls (and its API key needs TLS: refused).
    with pytest.raises(ConfigError, match=r"API key .* is only sent over TLS"):
        resolve(ClientFlags(temporal_tls=False), {}, prod, path)
    off = resolve(
        ClientFlags(temporal_tls=False, temporal_address="h:1"),
        {},
        cc.parse_config(
            "current-context: t\ncontexts:\n  t:\n    temporal:\n      tls: {}\n", path
        )[0],
        path,
    )
    assert off.tls is None
    with pytest.raises(ConfigError, match="--temporal-tls-ca gives TLS material, but "):
        resolve(ClientFlags(temporal_tls=False, temporal_tls_ca=Path("/ca")), {})
    with pytest.raises(ConfigError, match="CLOUDLESS_TEMPORAL_TLS='maybe' is not a boolean"):
        resolve(ClientFlags(), {cc.ENV_TEMPORAL_TLS: "maybe"})
    assert resolve(ClientFlags(), {cc.ENV_TEMPORAL_TLS: "yes"}).tls is not None
    # An API key alone: TLS with the system's roots.
    keyed = resolve(ClientFlags(), {cc.ENV_TEMPORAL_API_KEY: "k"})
    assert keyed.tls is not None and keyed.tls.ca is None


def test_api_key_sources(tmp_path: Path) -> None:
    both = {cc.ENV_TEMPORAL_API_KEY: "k", cc.ENV_TEMPORAL_API_KEY_FILE: "/k"}
    with pytest.raises(ConfigError, match="both CLOUDLESS_TEMPORAL_API_KEY and"):
        resolve(ClientFlags(), both)
    flag = resolve(ClientFlags(temporal_api_key_file=Path("/f")), both)
    assert flag.api_key is None and flag.api_key_file == cc.Setting(
        Path("/f"), "--temporal-api-key-file"
    )


def test_a_bad_address_from_any_source_names_it() -> None:
    with pytest.raises(ConfigError, match=r"from CLOUDLESS_TEMPORAL_ADDRESS\): 'x' is not"):
        resolve(ClientFlags(), {"CLOUDLESS_TEMPORAL_ADDRESS": "x"})


# ----------------------------------------------------------------------------- material


def test_the_target_carries_the_material(tmp_path: Path) -> None:
    write(tmp_path / "ca.crt", CERT, 0o644)
    write(tmp_path / "tls.crt", CERT, 0o644)
    write(tmp_path / "tls.key", KEY)
    write(tmp_path / "api", "  the-key\n")
    flags = ClientFlags(
        temporal_address="t.example:7233",
        temporal_tls_ca=tmp_path / "ca.crt",
        temporal_tls_cert=tmp_path / "tls.crt",
        temporal_tls_key=tmp_path / "tls.key",
        temporal_tls_server_name="gw",
        temporal_api_key_file=tmp_path / "api",
    )
    target = resolve(flags, {}).target()
    assert target.tls == TemporalTLS(CERT, CERT, KEY, "gw")
    assert target.api_key == "the-key"
    assert "the-key" not in repr(target) and "the-key" not in repr(resolve(flags, {}))


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (
            "world-readable key",
            r"client key \(from --temporal-tls-key\): private key .* mode 0o644",
        ),
        ("missing ca", r"CA certificate \(from --temporal-tls-ca\): .*ca.crt does not exist"),
        ("not pem", r"client certificate .*tls.crt \(from --temporal-tls-cert\) is not a PEM"),
        ("readable api key", r"API key \(from --temporal-api-key-file\): API key file .* 0o640"),
        ("api key lines", r"must hold the key alone, on one line"),
    ],
)
def test_unreadable_material_names_the_file_and_its_source(
    tmp_path: Path, setup: str, expected: str
) -> None:
    write(tmp_path / "ca.crt", CERT, 0o644)
    write(tmp_path / "tls.crt", b"garbage" if setup == "not pem" else CERT, 0o644)
    write(tmp_path / "tls.key", KEY, 0o644 if setup == "world-readable key" else 0o600)
    write(tmp_path / "api", "a b\nc" if setup == "api key lines" else "k")
    if setup == "readable api key":
        (tmp_path / "api").chmod(0o640)
    if setup == "missing ca":
        (tmp_path / "ca.crt").unlink()
    flags = ClientFlags(
        temporal_tls_ca=tmp_path / "ca.crt",
        temporal_tls_cert=tmp_path / "tls.crt",
        temporal_tls_key=tmp_path / "tls.key",
        temporal_api_key_file=tmp_path / "api",
    )
    with pytest.raises(ConfigError, match=expected):
        resolve(flags, {}).target()


def test_the_api_key_is_redacted_in_the_view() -> None:
    got = resolve(ClientFlags(), {cc.ENV_TEMPORAL_API_KEY: "s3cr3t-api-key"})
    view = got.view()
    assert view["temporal"]["api-key"] == cc.REDACTED
    assert view["sources"]["api-key"] == cc.ENV_TEMPORAL_API_KEY
    assert "s3cr3t-api-key" not in repr(view) and "s3cr3t-api-key" not in repr(got)


# ----------------------------------------------------------------------------- use-context


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_use_context_rewrites_only_that_line_and_keeps_the_mode(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "c.yaml", FULL, mode)
    cc.use_context(path, "prod")
    assert path.read_text() == FULL.replace("current-context: dev", "current-context: prod")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert cc.load_config(path).current_context == "prod"


def test_use_context_without_a_current_line_writes_the_yaml_anew(tmp_path: Path) -> None:
    text = FULL.replace("current-context: dev\n", "")
    path = write(tmp_path / "c.yaml", text)
    cc.use_context(path, "dev")
    reloaded = cc.load_config(path)
    assert reloaded.current_context == "dev"
    assert reloaded.contexts == cc.parse_config(text, path)[0].contexts


def test_use_context_follows_a_symlink_and_refuses_unknown_names(tmp_path: Path) -> None:
    target = write(tmp_path / "real.yaml", FULL)
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    cc.use_context(link, "prod")
    assert link.is_symlink() and cc.load_config(target).current_context == "prod"
    with pytest.raises(ConfigError, match=r"has no context 'nope' \(contexts: dev, prod\)"):
        cc.use_context(link, "nope")
    assert cc.load_config(target).current_context == "prod"


def test_context_rows_mark_the_current_one(tmp_path: Path) -> None:
    rows = cc.context_rows(cc.parse_config(FULL, tmp_path / "c.yaml")[0])
    assert [(r["name"], r["current"], r["auth"]) for r in rows] == [
        ("dev", True, "none"),
        ("prod", False, "mTLS + API key"),
    ]


@pytest.mark.parametrize(
    ("flags", "error", "hint"),
    [
        (ClientFlags(), "hyper::Error(Io, Kind(ConnectionReset))", "does it expect TLS"),
        (
            ClientFlags(temporal_tls=True),
            "peer closed connection without sending TLS close_notify",
            "does it require a client certificate",
        ),
        (
            ClientFlags(temporal_tls=True),
            "ConnectError(Custom { error: InvalidCertificate(BadSignature) })",
            "certificate was not accepted",
        ),
        (ClientFlags(temporal_tls=True), "InvalidContentType", "does not speak TLS"),
        (ClientFlags(), "Connection refused", "is Temporal running there?"),
    ],
)
def test_connect_failures_get_a_hint_for_the_likely_mismatch(
    flags: ClientFlags, error: str, hint: str
) -> None:
    assert hint in cc.connect_hint(resolve(flags, {}), error)
