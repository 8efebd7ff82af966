"""The naming rules of manifests: DNS-1123 labels and subdomains, label keys and values,
environment variable names, secret keys and audiences.

They are annotated types for the models, and predicates for the other ways names enter the
cluster (a node enrolling with labels, the SecretsService), so every entry point applies
the same rule and phrases its rejection the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from cloudless.spec._messages import _problem, _show
from cloudless.spec.text import _text_defect

# Always used with ``fullmatch``: ``re.match`` with ``$`` also accepts a trailing newline,
# and "web\n" is not a name any runtime or DNS resolver accepts.
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_KEY_RE = re.compile(r"[-._a-zA-Z0-9]+")


def _suggest_label(value: str, max_length: int) -> str:
    """Turn an invalid name into the nearest valid DNS-1123 label, for the fix text."""
    candidate = re.sub(r"[^a-z0-9-]+", "-", value.lower())
    candidate = re.sub(r"-{2,}", "-", candidate).strip("-")[:max_length].strip("-")
    return candidate or "my-name"


def _label_defects(value: str, max_length: int) -> str:
    """Say precisely why ``value`` is not a DNS-1123 label."""
    if not value:
        return "it is empty"
    if len(value) > max_length:
        return f"it is {len(value)} characters long"
    if any(c.isupper() for c in value):
        return "it contains upper-case letters"
    bad = sorted({c for c in value if not (c.islower() or c.isdigit() or c == "-")})
    if bad:
        return "it contains " + ", ".join(repr(c) for c in bad)
    return "it must start and end with a letter or digit"


def _dns_label(max_length: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if len(value) <= max_length and _DNS_LABEL_RE.fullmatch(value):
            return value
        raise _problem(
            f"must be a DNS-1123 label (at most {max_length} characters: lower-case letters, "
            f"digits and '-', starting and ending with a letter or digit), got {_show(value)}: "
            f"{_label_defects(value, max_length)}",
            f"use {_suggest_label(value, max_length)!r} instead",
        )

    return check


def _check_dns_subdomain(value: str) -> str:
    if len(value) <= 253 and _DNS_SUBDOMAIN_RE.fullmatch(value):
        return value
    suggestion = ".".join(_suggest_label(part, 63) for part in value.split(".") if part)
    raise _problem(
        "must be a DNS-1123 subdomain (at most 253 characters: dot-separated lower-case "
        f"letters, digits and '-'), got {_show(value)}",
        f"use {suggestion[:253]!r} instead",
    )


def _check_label_key(key: str) -> str:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.fullmatch(prefix)):
        raise _problem(
            f"has an invalid prefix {prefix!r}: a prefix must be a DNS subdomain such as "
            "'example.com'",
            "write the key as name or example.com/name",
        )
    if not name or len(name) > 63 or not _LABEL_NAME_RE.fullmatch(name):
        raise _problem(
            "must be at most 63 characters of letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit (optionally after a 'example.com/' prefix)",
            "use a key like app, tier or example.com/team",
        )
    return key


def _check_label_value(value: str) -> str:
    if value == "" or (len(value) <= 63 and _LABEL_NAME_RE.fullmatch(value)):
        return value
    raise _problem(
        "must be empty or at most 63 characters of letters, digits, '-', '_' or '.', "
        f"starting and ending with a letter or digit, got {_show(value)}",
        "use a value like hello, v1.2 or ssd",
    )


def label_problems(labels: Mapping[str, str], where: str = "label") -> list[str]:
    """The manifest's label rules for labels arriving elsewhere (e.g. a node enrolling),
    as one-line problems with their fix."""
    problems = []
    for key, value in labels.items():
        for check, subject in ((_check_label_key, key), (_check_label_value, value)):
            try:
                check(subject)
            except PydanticCustomError as err:
                fix = (err.context or {}).get("fix", "")
                problems.append(f"{where} {key}={value!r}: {err.message()} (fix: {fix})")
    return problems


def _check_env_name(value: str) -> str:
    if _ENV_NAME_RE.fullmatch(value):
        return value
    suggestion = re.sub(r"[^A-Za-z0-9_]", "_", value).upper() or "MY_VAR"
    if suggestion[0].isdigit():
        suggestion = "_" + suggestion
    raise _problem(
        "must be a C identifier (letters, digits and '_', not starting with a digit), "
        f"got {_show(value)}",
        f"use {suggestion!r} instead",
    )


def _check_secret_key(value: str) -> str:
    if len(value) <= 253 and _SECRET_KEY_RE.fullmatch(value):
        return value
    raise _problem(
        f"must be 1-253 characters of letters, digits, '-', '_' or '.', got {_show(value)}",
        "use the key as stored in the secret, e.g. DB_PASSWORD",
    )


def _check_audience(value: str) -> str:
    if (
        value
        and "*" not in value
        and not any(c.isspace() for c in value)
        and _text_defect(value, controls=True) is None
    ):
        return value
    raise _problem(
        "must name one audience, non-empty, without '*', spaces or control characters, "
        f"got {_show(value)}",
        "use the audience the secret was created for, e.g. backend-api",
    )


DnsLabel = Annotated[str, AfterValidator(_dns_label(63))]
PortName = Annotated[str, AfterValidator(_dns_label(15))]
DnsSubdomain = Annotated[str, AfterValidator(_check_dns_subdomain)]
LabelKey = Annotated[str, AfterValidator(_check_label_key)]
LabelValue = Annotated[str, AfterValidator(_check_label_value)]
Labels = dict[LabelKey, LabelValue]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
SecretKey = Annotated[str, AfterValidator(_check_secret_key)]
Audience = Annotated[str, AfterValidator(_check_audience)]


def is_dns_subdomain(value: str) -> bool:
    """Whether ``value`` is a DNS-1123 subdomain (secret names, for the SecretsService)."""
    return len(value) <= 253 and bool(_DNS_SUBDOMAIN_RE.fullmatch(value))


def is_secret_key(value: str) -> bool:
    """Whether ``value`` is a valid key inside a secret's data map."""
    return len(value) <= 253 and bool(_SECRET_KEY_RE.fullmatch(value))


def audience_problem(value: str) -> str | None:
    """Why ``value`` cannot be an audience (the manifest's and the SecretsService's rule)."""
    try:
        _check_audience(value)
    except ValueError as err:
        return str(err)
    return None
