"""Where and how a client reaches Temporal: flags, environment and a config file with contexts.

The config file (YAML, like a kubeconfig) names *contexts*, each a Cloudless cluster and
the Temporal endpoint that serves it::

    current-context: dev
    contexts:
      dev:
        cluster: dev
        state-dir: /home/me/.cloudless      # optional
        temporal:
          address: 127.0.0.1:7233
          namespace: default
          tls:                              # optional; present means TLS
            ca: ca.crt                      # optional (absent: the system's roots)
            cert: tls.crt                   # cert and key together: mutual TLS
            key: tls.key
            server-name: cloudless-gateway  # optional
          api-key-file: key                 # optional (Temporal Cloud)

Relative paths are relative to the file's directory. Every setting is resolved the same way
(:func:`resolve`): a flag beats the environment, which beats the context, which beats the
default. A client certificate and its key are one setting: they come together from the
first source that names either. The API key itself is only ever read from a file or from
``CLOUDLESS_TEMPORAL_API_KEY``, never from a flag (``ps`` would show it) or the config file.

Resolution is pure (it takes the environment as a mapping and reads no file);
:meth:`ClientSettings.target` then reads the TLS material and the API key, with errors that
name the file and the flag, variable or config field it came from.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Generic, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cloudless import config
from cloudless.errors import ConfigError, PKIError
from cloudless.pki.files import read_private_file, read_public_file, replace_file
from cloudless.strictyaml import strict_loader
from cloudless.temporal import TemporalTarget, TemporalTLS
from cloudless.tls import CA_FILE, CERT_FILE, GATEWAY_SERVER_NAME, KEY_FILE

ENV_CONFIG: Final = "CLOUDLESS_CONFIG"
ENV_CONTEXT: Final = "CLOUDLESS_CONTEXT"
ENV_TEMPORAL_TLS: Final = "CLOUDLESS_TEMPORAL_TLS"
ENV_TEMPORAL_TLS_CA: Final = "CLOUDLESS_TEMPORAL_TLS_CA"
ENV_TEMPORAL_TLS_CERT: Final = "CLOUDLESS_TEMPORAL_TLS_CERT"
ENV_TEMPORAL_TLS_KEY: Final = "CLOUDLESS_TEMPORAL_TLS_KEY"
ENV_TEMPORAL_TLS_SERVER_NAME: Final = "CLOUDLESS_TEMPORAL_TLS_SERVER_NAME"
ENV_TEMPORAL_API_KEY: Final = "CLOUDLESS_TEMPORAL_API_KEY"
ENV_TEMPORAL_API_KEY_FILE: Final = "CLOUDLESS_TEMPORAL_API_KEY_FILE"

#: The file's name in a state directory and in ``~/.cloudless/``.
CONFIG_FILE_NAME: Final = "config.yaml"
#: A config file larger than this is refused before it is parsed.
MAX_CONFIG_BYTES: Final = 1024 * 1024
#: No valid config nests deeper than 5; refusing deeper input keeps PyYAML's recursion safe.
_MAX_DEPTH: Final = 16
#: At most this many problems are listed in one error (the rest are counted).
_MAX_ISSUES: Final = 5
#: What ``config view`` shows instead of an API key.
REDACTED: Final = "<redacted>"

_CONTEXT_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:/+-]{0,252}")
_ADDRESS_RE: Final = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})"
)
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


# ----------------------------------------------------------------------------- the file


def check_address(value: str) -> str:
    """``host:port`` (IPv6 in brackets), port 1-65535; raises ValueError saying so."""
    match = _ADDRESS_RE.fullmatch(value)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{value!r} is not host:port (e.g. temporal.example.com:7233, [::1]:7233)")
    return value


def _not_empty(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        raise ValueError("is empty; give a path or leave the key out")
    return value


def _resolve_path(value: Path | None, info: ValidationInfo) -> Path | None:
    """Relative to the config file's directory (``~`` expands), so a file and its
    certificates can move together."""
    if value is None:
        return None
    base = (info.context or {}).get("base")
    path = value.expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


class TLSSection(_Section):
    """``temporal.tls``: its presence turns TLS on."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: Annotated[str | None, Field(alias="server-name", min_length=1)] = None

    _paths = field_validator("ca", "cert", "key")(_resolve_path)
    _non_empty = field_validator("ca", "cert", "key", mode="before")(_not_empty)

    @model_validator(mode="after")
    def _pair(self) -> TLSSection:
        if (self.cert is None) != (self.key is None):
            given, missing = ("cert", "key") if self.key is None else ("key", "cert")
            raise ValueError(
                f"{given} is given without {missing}: a client certificate and its key go "
                f"together (mutual TLS); add {missing}, or remove {given} for TLS without a "
                "client certificate"
            )
        return self


class TemporalSection(_Section):
    """``temporal``: the frontend, the namespace and how to authenticate."""

    address: str | None = None
    namespace: Annotated[str | None, Field(min_length=1)] = None
    tls: TLSSection | None = None
    api_key_file: Annotated[Path | None, Field(alias="api-key-file")] = None

    _paths = field_validator("api_key_file")(_resolve_path)
    _non_empty = field_validator("api_key_file", mode="before")(_not_empty)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else check_address(value)


class ContextConfig(_Section):
    """One entry of ``contexts``."""

    cluster: Annotated[str | None, Field(min_length=1)] = None
    state_dir: Annotated[Path | None, Field(alias="state-dir")] = None
    temporal: TemporalSection = TemporalSection()

    _paths = field_validator("state_dir")(_resolve_path)
    _non_empty = field_validator("state_dir", mode="before")(_not_empty)


class ClientConfig(_Section):
    """The whole file. ``current-context`` may name a context that is missing (a fresh
    ``use-context`` fixes that); using it is what fails."""

    current_context: Annotated[str | None, Field(alias="current-context")] = None
    contexts: dict[str, ContextConfig] = {}

    @field_validator("contexts")
    @classmethod
    def _names(cls, value: dict[str, ContextConfig]) -> dict[str, ContextConfig]:
        for name in value:
            check_context_name(name)
        return value


def front_context_document(
    name: str,
    cluster: str,
    address: str,
    tls_dir: Path | str,
    *,
    state_dir: Path | None = None,
) -> dict[str, Any]:
    """A config file with one context, ``name``, that reaches a coordinator's front at
    ``address`` with the key, certificate and CA in ``tls_dir`` (``tls.key``, ``tls.crt``,
    ``ca.crt``; relative paths resolve against the file's directory). What ``dev up``
    and ``cloudlessctl user create`` write."""
    context: dict[str, Any] = {"cluster": cluster}
    if state_dir is not None:
        context["state-dir"] = str(state_dir)
    directory = Path(tls_dir)
    context["temporal"] = {
        "address": address,
        "namespace": "default",
        "tls": {
            "ca": str(directory / CA_FILE),
            "cert": str(directory / CERT_FILE),
            "key": str(directory / KEY_FILE),
            "server-name": GATEWAY_SERVER_NAME,
        },
    }
    return {"current-context": name, "contexts": {name: context}}


def check_context_name(name: str) -> str:
    if not _CONTEXT_NAME_RE.fullmatch(name):
        raise ValueError(
            f"context name {name!r} must be 1-253 letters, digits or ._@:/+- and start with "
            "a letter or digit"
        )
    return name


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _issue(error: Mapping[str, Any]) -> str:
    where = _field_path(tuple(error["loc"]))
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key; remove it (or check its spelling)"
    if kind == "missing":
        return f"{where}: is required"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def _read_config_text(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist; create it (see docs/operations.md) or "
            "point --config/CLOUDLESS_CONFIG at another"
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from err
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB, the limit; "
            "is it the right file?"
        )
    try:
        return data.decode()
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {err.start}); is it the right file?"
        ) from None


def parse_config(text: str, path: Path) -> tuple[ClientConfig, dict[str, Any]]:
    """Validate config ``text`` read from ``path``: the model (paths made absolute against
    ``path``'s directory) and the raw mapping (for rewriting the file)."""
    try:
        data = yaml.load(text, Loader=strict_loader(_MAX_DEPTH))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(
            f"config file {path}: invalid YAML{where}: {problem}; fix the syntax there "
            "(indent with spaces, a space after every ':')"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: the top level must be a mapping with `current-context:` "
            f"and `contexts:`, not a {type(data).__name__}"
        )
    try:
        model = ClientConfig.model_validate(data, context={"base": path.parent})
    except ValidationError as err:
        issues = [_issue(e) for e in err.errors()]
        more = len(issues) - _MAX_ISSUES
        listed = "; ".join(issues[:_MAX_ISSUES]) + (f"; and {more} more" if more > 0 else "")
        raise ConfigError(f"config file {path}: {listed}") from None
    return model, data


def load_config(path: Path) -> ClientConfig:
    """Read and validate the config file at ``path`` (bounded to 1 MiB)."""
    return parse_config(_read_config_text(path), path)[0]


def find_config(
    flag: Path | None, env: Mapping[str, str], state_dir: Path, home: Path | None
) -> tuple[Path, str] | None:
    """Which config file applies, and why: ``--config`` > ``CLOUDLESS_CONFIG`` >
    ``<state-dir>/config.yaml`` if it exists > ``~/.cloudless/config.yaml`` if it exists.
    A file named by the flag or variable must exist (checked when it is read)."""
    if flag is not None:
        return flag.expanduser().absolute(), "--config"
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser().absolute(), ENV_CONFIG
    local = state_dir / CONFIG_FILE_NAME
    if local.is_file():
        return local.absolute(), "the state directory"
    if home is not None and (home / ".cloudless" / CONFIG_FILE_NAME).is_file():
        return (home / ".cloudless" / CONFIG_FILE_NAME).absolute(), "the home directory"
    return None


def use_context(path: Path, name: str) -> None:
    """Make ``name`` the file's ``current-context``: rewritten atomically with its mode
    kept. Only that line changes when the file has one top-level ``current-context:`` line
    (comments stay); otherwise the YAML is written anew from its data."""
    text = _read_config_text(path)
    model, data = parse_config(text, path)
    if name not in model.contexts:
        known = ", ".join(sorted(model.contexts)) or "none"
        raise ConfigError(
            f"config file {path} has no context {name!r} (contexts: {known}); add it under "
            "`contexts:` first"
        )
    line = f"current-context: {yaml.safe_dump(name, default_style=None).splitlines()[0]}"
    lines = text.splitlines(keepends=True)
    at = [i for i, ln in enumerate(lines) if re.match(r"current-context\s*:", ln)]
    new_text: str | None = None
    if len(at) == 1:
        ending = "\n" if lines[at[0]].endswith("\n") else ""
        candidate = "".join([*lines[: at[0]], line + ending, *lines[at[0] + 1 :]])
        try:
            check, check_data = parse_config(candidate, path)
        except ConfigError:
            check = None
        if check is not None and check_data == {**data, "current-context": name}:
            new_text = candidate
    if new_text is None:
        new_text = yaml.safe_dump(
            {"current-context": name, **{k: v for k, v in data.items() if k != "current-context"}},
            sort_keys=False,
        )
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        replace_file(path, new_text.encode(), mode)
    except (OSError, PKIError) as err:
        raise ConfigError(f"cannot rewrite config file {path}: {err}") from err


# ----------------------------------------------------------------------------- resolution

T = TypeVar("T")


@dataclass(frozen=True)
class Setting(Generic[T]):
    """A resolved value and where it came from: a flag (``--temporal-address``), a
    variable (``CLOUDLESS_TEMPORAL_ADDRESS``), a config field, or ``default``."""

    value: T
    source: str


@dataclass(frozen=True)
class ClientFlags:
    """What was given on the command line; None: not given (so a lower source applies)."""

    config: Path | None = None
    context: str | None = None
    temporal_address: str | None = None
    temporal_namespace: str | None = None
    cluster: str | None = None
    state_dir: Path | None = None
    temporal_tls: bool | None = None
    temporal_tls_ca: Path | None = None
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = None
    temporal_tls_server_name: str | None = None
    temporal_api_key_file: Path | None = None


@dataclass(frozen=True)
class TLSSettings:
    ca: Setting[Path] | None = None
    cert: Setting[Path] | None = None
    key: Setting[Path] | None = None
    server_name: Setting[str] | None = None
    #: Why TLS is on (a flag, a variable, a context's ``tls:``, TLS material, an API key).
    source: str = "default"


@dataclass(frozen=True)
class ClientSettings:
    """The effective settings of a client: every field with its source."""

    address: Setting[str]
    namespace: Setting[str]
    cluster: Setting[str]
    state_dir: Setting[Path]
    tls: TLSSettings | None = None
    api_key: Setting[str] | None = field(default=None, repr=False)
    api_key_file: Setting[Path] | None = None
    #: The config file read, and why it was chosen (``--config``, ``CLOUDLESS_CONFIG``...).
    config_file: Setting[Path] | None = None
    context: Setting[str] | None = None

    def target(self) -> TemporalTarget:
        """Read the TLS material and API key: a :class:`TemporalTarget` for ``connect``.
        Errors name the file and the flag, variable or config field that named it."""
        tls = None
        if self.tls is not None:
            tls = TemporalTLS(
                ca_pem=_read_pem(self.tls.ca, "CA certificate", "CERTIFICATE"),
                cert_pem=_read_pem(self.tls.cert, "client certificate", "CERTIFICATE"),
                key_pem=_read_pem(self.tls.key, "client key", "PRIVATE KEY", private=True),
                server_name=self.tls.server_name.value if self.tls.server_name else None,
            )
        api_key = self.api_key.value if self.api_key is not None else None
        if self.api_key_file is not None:
            api_key = _read_api_key(self.api_key_file)
        return TemporalTarget(self.address.value, self.namespace.value, tls, api_key)

    def view(self) -> dict[str, Any]:
        """The effective settings as data, in the config file's shape, the API key
        redacted; ``sources`` says where each came from."""
        tls: dict[str, Any] | None = None
        sources: dict[str, str] = {
            "address": self.address.source,
            "namespace": self.namespace.source,
            "cluster": self.cluster.source,
            "state-dir": self.state_dir.source,
        }
        if self.tls is not None:
            sources["tls"] = self.tls.source
            tls = {}
            for name, setting in (
                ("ca", self.tls.ca),
                ("cert", self.tls.cert),
                ("key", self.tls.key),
                ("server-name", self.tls.server_name),
            ):
                tls[name] = None if setting is None else str(setting.value)
                if setting is not None:
                    sources[f"tls.{name}"] = setting.source
        temporal: dict[str, Any] = {
            "address": self.address.value,
            "namespace": self.namespace.value,
            "tls": tls,
        }
        if self.api_key_file is not None:
            temporal["api-key-file"] = str(self.api_key_file.value)
            sources["api-key-file"] = self.api_key_file.source
        if self.api_key is not None:
            temporal["api-key"] = REDACTED
            sources["api-key"] = self.api_key.source
        return {
            "config-file": None if self.config_file is None else str(self.config_file.value),
            "context": None if self.context is None else self.context.value,
            "cluster": self.cluster.value,
            "state-dir": str(self.state_dir.value),
            "temporal": temporal,
            "sources": sources,
        }

    def describe_tls(self) -> str:
        """How the connection is made, for error messages: ``plaintext``, ``TLS (CA ...)``."""
        if self.tls is None:
            return "plaintext"
        parts = [f"CA {self.tls.ca.value}" if self.tls.ca else "system CAs"]
        if self.tls.cert is not None:
            parts.append(f"client certificate {self.tls.cert.value}")
        if self.tls.server_name is not None:
            parts.append(f"server name {self.tls.server_name.value}")
        if self.api_key is not None or self.api_key_file is not None:
            parts.append("API key")
        return f"TLS ({', '.join(parts)})"


def connect_hint(settings: ClientSettings, error: str) -> str:
    """What to check after ``connect`` failed with ``error`` (the SDK's text) under
    ``settings``: the TLS side that most likely does not match, else whether Temporal runs."""
    if "InvalidCertificate" in error or "UnknownIssuer" in error:
        return (
            "Temporal's certificate was not accepted: check the CA (--temporal-tls-ca) and "
            "the server name (--temporal-tls-server-name)"
        )
    closed = any(
        sign in error
        for sign in (
            "connection closed",
            "ConnectionReset",
            "close_notify",
            "UnexpectedEof",
            "BrokenPipe",
            "operation was canceled",
        )
    )
    if settings.tls is None and closed:
        return "the server dropped a plaintext connection: does it expect TLS (--temporal-tls)?"
    if settings.tls is not None and settings.tls.cert is None and closed:
        return (
            "the server closed the connection after the TLS handshake: does it require a "
            "client certificate (--temporal-tls-cert and --temporal-tls-key)?"
        )
    if settings.tls is not None and ("InvalidContentType" in error or "CorruptMessage" in error):
        return "the server does not speak TLS: drop the TLS settings (--no-temporal-tls)?"
    return "is Temporal running there? (the embedded stack: `cloudlessctl dev up`)"


def _read_pem(
    setting: Setting[Path] | None, what: str, label: str, *, private: bool = False
) -> bytes | None:
    if setting is None:
        return None
    path, source = setting.value, setting.source
    try:
        data = read_private_file(path) if private else read_public_file(path)
    except PKIError as err:
        raise ConfigError(f"Temporal TLS {what} (from {source}): {err}") from None
    if f"-----BEGIN {label}".encode() not in data and (
        label != "PRIVATE KEY" or b"PRIVATE KEY-----" not in data
    ):
        raise ConfigError(
            f"Temporal TLS {what} {path} (from {source}) is not a PEM {label.lower()}; "
            f"point it at a file with a -----BEGIN {label}----- block"
        )
    return data


def _read_api_key(setting: Setting[Path]) -> str:
    try:
        raw = read_private_file(setting.value)
    except PKIError as err:
        message = str(err).replace("private key", "API key file", 1)
        raise ConfigError(f"Temporal API key (from {setting.source}): {message}") from None
    try:
        key = raw.decode().strip()
    except UnicodeDecodeError:
        key = ""
    if not key or any(c.isspace() or not c.isprintable() for c in key):
        raise ConfigError(
            f"Temporal API key file {setting.value} (from {setting.source}) must hold the "
            "key alone, on one line"
        )
    return key


def _env_bool(env: Mapping[str, str], name: str) -> bool | None:
    if name not in env:
        return None
    value = env[name].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={env[name]!r} is not a boolean; use 1/0, true/false or yes/no")


def _first(*candidates: tuple[T | None, str]) -> Setting[T] | None:
    for value, source in candidates:
        if value is not None:
            return Setting(value, source)
    return None


def _env_path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name)
    return Path(value).expanduser().absolute() if value else None


def _flag_path(value: Path | None) -> Path | None:
    return value.expanduser().absolute() if value is not None else None


def select_context(
    loaded: ClientConfig | None, path: Path | None, flag: str | None, env: Mapping[str, str]
) -> tuple[Setting[str], ContextConfig] | None:
    """The context in use: ``--context`` > ``CLOUDLESS_CONTEXT`` > ``current-context``."""
    chosen = _first(
        (flag, "--context"),
        (env.get(ENV_CONTEXT) or None, ENV_CONTEXT),
        (loaded.current_context if loaded else None, f"current-context in {path}"),
    )
    if chosen is None:
        return None
    if loaded is None:
        raise ConfigError(
            f"context {chosen.value!r} (from {chosen.source}) needs a config file, and none "
            f"was found; pass --config or set {ENV_CONFIG}, or create "
            f"~/.cloudless/{CONFIG_FILE_NAME}"
        )
    if chosen.value not in loaded.contexts:
        known = ", ".join(sorted(loaded.contexts)) or "none"
        raise ConfigError(
            f"context {chosen.value!r} (from {chosen.source}) is not in config file {path} "
            f"(contexts: {known}); pick one with `cloudlessctl config use-context NAME`"
        )
    return chosen, loaded.contexts[chosen.value]


def resolve(
    flags: ClientFlags,
    env: Mapping[str, str],
    loaded: ClientConfig | None = None,
    config_path: Path | None = None,
    config_source: str = "--config",
) -> ClientSettings:
    """The effective settings: for every field, flag > environment > context > default.

    Pure: reads no file (``loaded`` is the parsed config, if any). Raises
    :class:`ConfigError` for contradictions (a certificate without its key, TLS material
    with TLS turned off, an API key without TLS, two API keys from one level).
    """
    selected = select_context(loaded, config_path, flags.context, env)
    ctx = selected[1] if selected else None
    where = f"contexts.{selected[0].value}" if selected else ""
    in_file = f" in {config_path}"

    def from_ctx(key: str) -> str:
        return f"{where}.{key}{in_file}"

    tls_ctx = ctx.temporal.tls if ctx else None
    address = _first(
        (flags.temporal_address, "--temporal-address"),
        (env.get(config.ENV_TEMPORAL_ADDRESS) or None, config.ENV_TEMPORAL_ADDRESS),
        (ctx.temporal.address if ctx else None, from_ctx("temporal.address")),
    ) or Setting(config.DEFAULT_TEMPORAL_ADDRESS, "default")
    try:
        check_address(address.value)
    except ValueError as err:
        raise ConfigError(f"Temporal address (from {address.source}): {err}") from None
    namespace = _first(
        (flags.temporal_namespace, "--temporal-namespace"),
        (env.get(config.ENV_TEMPORAL_NAMESPACE) or None, config.ENV_TEMPORAL_NAMESPACE),
        (ctx.temporal.namespace if ctx else None, from_ctx("temporal.namespace")),
    ) or Setting(config.DEFAULT_TEMPORAL_NAMESPACE, "default")
    cluster = _first(
        (flags.cluster, "--cluster"),
        (env.get(config.ENV_CLUSTER) or None, config.ENV_CLUSTER),
        (ctx.cluster if ctx else None, from_ctx("cluster")),
    ) or Setting(config.DEFAULT_CLUSTER, "default")
    state_dir = _first(
        (_flag_path(flags.state_dir), "--state-dir"),
        (_env_path(env, config.ENV_STATE_DIR), config.ENV_STATE_DIR),
        (ctx.state_dir if ctx else None, from_ctx("state-dir")),
    ) or Setting(Path(".cloudless").absolute(), "default")

    # TLS material, each field from its highest source; cert and key as one pair.
    ca = _first(
        (_flag_path(flags.temporal_tls_ca), "--temporal-tls-ca"),
        (_env_path(env, ENV_TEMPORAL_TLS_CA), ENV_TEMPORAL_TLS_CA),
        (tls_ctx.ca if tls_ctx else None, from_ctx("temporal.tls.ca")),
    )
    server_name = _first(
        (flags.temporal_tls_server_name or None, "--temporal-tls-server-name"),
        (env.get(ENV_TEMPORAL_TLS_SERVER_NAME) or None, ENV_TEMPORAL_TLS_SERVER_NAME),
        (tls_ctx.server_name if tls_ctx else None, from_ctx("temporal.tls.server-name")),
    )
    cert, key = _client_pair(flags, env, tls_ctx, from_ctx)
    explicit = [
        s
        for s in (ca, server_name, cert)
        if s is not None and (not where or not s.source.startswith(f"{where}."))
    ]

    # API key: a file named by a flag > the key or a file from the environment > the
    # context's file. Two from the environment are ambiguous.
    api_key: Setting[str] | None = None
    api_key_file: Setting[Path] | None = None
    env_key = env.get(ENV_TEMPORAL_API_KEY) or None
    env_key_file = _env_path(env, ENV_TEMPORAL_API_KEY_FILE)
    if flags.temporal_api_key_file is not None:
        path = flags.temporal_api_key_file.expanduser().absolute()
        api_key_file = Setting(path, "--temporal-api-key-file")
    elif env_key is not None and env_key_file is not None:
        raise ConfigError(
            f"both {ENV_TEMPORAL_API_KEY} and {ENV_TEMPORAL_API_KEY_FILE} are set; unset one"
        )
    elif env_key is not None:
        api_key = Setting(env_key.strip(), ENV_TEMPORAL_API_KEY)
    elif env_key_file is not None:
        api_key_file = Setting(env_key_file, ENV_TEMPORAL_API_KEY_FILE)
    elif ctx is not None and ctx.temporal.api_key_file is not None:
        api_key_file = Setting(ctx.temporal.api_key_file, from_ctx("temporal.api-key-file"))
    uses_key = api_key or api_key_file

    # On or off: --temporal-tls/--no-temporal-tls > CLOUDLESS_TEMPORAL_TLS > TLS material
    # from a flag or the environment > the context's `tls:` > an API key (sent only over TLS).
    switch = _first(
        (flags.temporal_tls, "--temporal-tls" if flags.temporal_tls else "--no-temporal-tls"),
        (_env_bool(env, ENV_TEMPORAL_TLS), ENV_TEMPORAL_TLS),
    )
    if switch is not None and not switch.value:
        if explicit:
            raise ConfigError(
                f"{explicit[0].source} gives TLS material, but {switch.source} turns TLS off; "
                "drop one of them"
            )
        if uses_key is not None:
            raise ConfigError(
                f"an API key (from {uses_key.source}) is only sent over TLS, but "
                f"{switch.source} turns TLS off; drop one of them"
            )
        tls = None
    elif switch is not None:
        tls = TLSSettings(ca, cert, key, server_name, switch.source)
    elif explicit:
        tls = TLSSettings(ca, cert, key, server_name, explicit[0].source)
    elif tls_ctx is not None:
        tls = TLSSettings(ca, cert, key, server_name, from_ctx("temporal.tls"))
    elif uses_key is not None:
        tls = TLSSettings(source=f"the API key from {uses_key.source}")
    else:
        tls = None
    return ClientSettings(
        address=address,
        namespace=namespace,
        cluster=cluster,
        state_dir=state_dir,
        tls=tls,
        api_key=api_key,
        api_key_file=api_key_file,
        config_file=Setting(config_path, config_source) if config_path is not None else None,
        context=selected[0] if selected else None,
    )


def _client_pair(
    flags: ClientFlags,
    env: Mapping[str, str],
    tls_ctx: TLSSection | None,
    from_ctx: Any,
) -> tuple[Setting[Path] | None, Setting[Path] | None]:
    """The client certificate and key from the first level naming either; that level
    must name both (a key from one place and a certificate from another never match)."""
    levels: list[tuple[Path | None, Path | None, str, str]] = [
        (
            _flag_path(flags.temporal_tls_cert),
            _flag_path(flags.temporal_tls_key),
            "--temporal-tls-cert",
            "--temporal-tls-key",
        ),
        (
            _env_path(env, ENV_TEMPORAL_TLS_CERT),
            _env_path(env, ENV_TEMPORAL_TLS_KEY),
            ENV_TEMPORAL_TLS_CERT,
            ENV_TEMPORAL_TLS_KEY,
        ),
    ]
    if tls_ctx is not None:
        levels.append(
            (tls_ctx.cert, tls_ctx.key, from_ctx("temporal.tls.cert"), from_ctx("temporal.tls.key"))
        )
    for cert, key, cert_source, key_source in levels:
        if cert is None and key is None:
            continue
        if cert is None or key is None:
            given, missing = (cert_source, key_source) if key is None else (key_source, cert_source)
            raise ConfigError(
                f"{given} is given without {missing}: a client certificate and its key go "
                f"together (mutual TLS); set {missing} too"
            )
        return Setting(cert, cert_source), Setting(key, key_source)
    return None, None


def locate_config(
    flags: ClientFlags, env: Mapping[str, str] | None = None, home: Path | None = None
) -> tuple[Path, str] | None:
    """:func:`find_config` with the state directory from ``--state-dir``,
    ``CLOUDLESS_STATE_DIR`` or the default (a context's ``state-dir`` cannot say where the
    file that holds it is) and the user's home directory."""
    env = os.environ if env is None else env
    lookup_dir = (
        _flag_path(flags.state_dir)
        or _env_path(env, config.ENV_STATE_DIR)
        or Path(".cloudless").absolute()
    )
    return find_config(flags.config, env, lookup_dir, home if home is not None else _home())


def client_settings(
    flags: ClientFlags,
    env: Mapping[str, str] | None = None,
    *,
    home: Path | None = None,
    use_config: bool = True,
) -> ClientSettings:
    """Find and read the config file (:func:`locate_config`; not with ``use_config``
    False, as for a service), then :func:`resolve`."""
    env = os.environ if env is None else env
    found = locate_config(flags, env, home) if use_config else None
    if found is None:
        return resolve(flags, env)
    return resolve(flags, env, load_config(found[0]), found[0], found[1])


def _home() -> Path | None:
    try:
        return Path.home()
    except RuntimeError:  # no HOME and no passwd entry
        return None


def context_rows(loaded: ClientConfig) -> list[dict[str, Any]]:
    """One row per context (for ``config get-contexts``): name, cluster, address,
    namespace and how it authenticates."""
    rows = []
    for name, ctx in sorted(loaded.contexts.items()):
        t = ctx.temporal
        auth = []
        if t.tls is not None:
            auth.append("mTLS" if t.tls.cert is not None else "TLS")
        if t.api_key_file is not None:
            auth.append("API key")
        rows.append(
            {
                "current": name == loaded.current_context,
                "name": name,
                "cluster": ctx.cluster or config.DEFAULT_CLUSTER,
                "address": t.address or config.DEFAULT_TEMPORAL_ADDRESS,
                "namespace": t.namespace or config.DEFAULT_TEMPORAL_NAMESPACE,
                "auth": " + ".join(auth) or "none",
            }
        )
    return rows
