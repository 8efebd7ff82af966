"""Probes: Kubernetes-shaped health checks (exec, HTTP GET, TCP), run by the agent the same
way on both runtimes.

The rules that depend on the container (only a readiness probe may need several successes;
a named port must be one of the container's ports) are checked by
:class:`~cloudless.spec.container.ContainerSpec`.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BeforeValidator, Field, StrictInt

from cloudless.spec._base import _Model, _Problem, _Raw
from cloudless.spec._messages import _problem, _show
from cloudless.spec._scalars import _between
from cloudless.spec.names import _dns_label
from cloudless.spec.text import NonEmptyText, _text_defect

#: Upper bound of every probe duration; a day is longer than any sensible health check.
MAX_PROBE_SECONDS: Final = 86_400
#: Upper bound of probe thresholds.
MAX_PROBE_THRESHOLD: Final = 1_000_000
_HTTP_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # fullmatch only


def _check_probe_port(value: object) -> object:
    """A port number (1-65535) or the name of one of the container's ports."""
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if 1 <= value <= 65535:
            return value
        raise _problem(
            f"must be between 1 and 65535, got {value}",
            "use the container port the probe should reach, e.g. 8080, or a port name",
        )
    elif isinstance(value, str):
        return _dns_label(15)(value)
    raise _problem(
        f"must be a port number or a port name, got {_show(value)}",
        "use a number like 8080 or the name of an entry in container.ports, e.g. http",
    )


def _check_http_path(value: str) -> str:
    if (
        value.startswith("/")
        and not any(c.isspace() for c in value)
        and _text_defect(value, controls=True) is None
    ):
        return value
    raise _problem(
        f"must be an absolute URL path without spaces or control characters, got {_show(value)}",
        "use a path like /healthz",
    )


def _check_header_name(value: str) -> str:
    if _HTTP_HEADER_NAME_RE.fullmatch(value):
        return value
    raise _problem(
        f"must be an HTTP header name (a token: letters, digits, '-'...), got {_show(value)}",
        "use a name like X-Probe",
    )


def _check_header_value(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise _problem("must not contain line breaks", "put the header value on one line")
    # RFC 9110 field values: visible characters, spaces and tabs; HTTP clients refuse the rest.
    defect = _text_defect(value, controls=True, allowed="\t")
    if defect is not None:
        raise _problem(*defect)
    return value


ProbePort = Annotated[int | str, BeforeValidator(_check_probe_port)]
HttpPath = Annotated[str, AfterValidator(_check_http_path)]
HeaderName = Annotated[str, AfterValidator(_check_header_name)]
HeaderValue = Annotated[str, AfterValidator(_check_header_value)]
ProbeDelay = Annotated[StrictInt, AfterValidator(_between(0, MAX_PROBE_SECONDS, 5))]
ProbeSeconds = Annotated[StrictInt, AfterValidator(_between(1, MAX_PROBE_SECONDS, 10))]
ProbeThreshold = Annotated[StrictInt, AfterValidator(_between(1, MAX_PROBE_THRESHOLD, 3))]


class ExecAction(_Model):
    """Run ``command`` inside the replica (the container, or a process with the replica's
    environment on the exec runtime); exit code 0 is a success. No shell is implied."""

    command: tuple[NonEmptyText, ...] = Field(examples=[["cat", "/tmp/healthy"]])

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        command = raw.get("command")
        if isinstance(command, list | tuple) and not command:
            return [
                _Problem(
                    (raw.key("command"),),
                    "must name a program to run",
                    'add the command, e.g. `command: ["cat", "/tmp/healthy"]`',
                    command,
                )
            ]
        return []


class HTTPHeader(_Model):
    """A header sent with an HTTP probe request."""

    name: HeaderName = Field(examples=["X-Probe"])
    value: HeaderValue = Field(examples=["cloudless"])


class HTTPGetAction(_Model):
    """GET ``scheme://<replica>:port/path``; a status from 200 to 399 is a success.

    HTTPS certificates are not verified (a health check tests liveness, not identity).
    """

    path: HttpPath = Field("/", examples=["/healthz"])
    port: ProbePort = Field(examples=[8080, "http"])
    scheme: Literal["HTTP", "HTTPS"] = Field("HTTP", examples=["HTTP"])
    http_headers: tuple[HTTPHeader, ...] = Field(
        (), exclude_if=lambda headers: not headers, examples=[[{"name": "X-Probe", "value": "1"}]]
    )


class TCPSocketAction(_Model):
    """Open a TCP connection to ``port``; a completed handshake is a success."""

    port: ProbePort = Field(examples=[8080, "http"])


#: The handler fields of a probe; exactly one must be set.
_PROBE_HANDLERS: Final = ("exec", "http_get", "tcp_socket")


class Probe(_Model):
    """A periodic health check of a replica, run by its agent (same on both runtimes).

    A result counts once ``successThreshold`` consecutive successes or ``failureThreshold``
    consecutive failures are seen; a probe that exceeds ``timeoutSeconds`` fails.
    """

    exec: ExecAction | None = Field(None, examples=[{"command": ["cat", "/tmp/healthy"]}])
    http_get: HTTPGetAction | None = Field(None, examples=[{"path": "/healthz", "port": 8080}])
    tcp_socket: TCPSocketAction | None = Field(None, examples=[{"port": 8080}])
    initial_delay_seconds: ProbeDelay = Field(0, examples=[5])
    period_seconds: ProbeSeconds = Field(10, examples=[10])
    timeout_seconds: ProbeSeconds = Field(1, examples=[1])
    failure_threshold: ProbeThreshold = Field(3, examples=[3])
    success_threshold: ProbeThreshold = Field(1, examples=[1])

    @property
    def handler(self) -> str:
        """Which handler this probe uses: ``exec``, ``httpGet`` or ``tcpSocket``."""
        if self.exec is not None:
            return "exec"
        return "httpGet" if self.http_get is not None else "tcpSocket"

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        present = [name for name in _PROBE_HANDLERS if raw.get(name) is not None]
        names = ", ".join(raw.key(name) for name in _PROBE_HANDLERS)
        if not present:
            return [
                _Problem(
                    (),
                    f"needs exactly one handler: one of {names}",
                    "add e.g. `httpGet: {path: /healthz, port: 8080}` or "
                    "`exec: {command: [cat, /tmp/healthy]}`",
                    raw.data,
                )
            ]
        return [
            _Problem(
                (raw.key(extra),),
                f"cannot be combined with {raw.key(present[0])}: a probe has exactly one handler",
                f"keep only one of {names}; use a second probe kind for a second check",
                raw.get(extra),
            )
            for extra in present[1:]
        ]
