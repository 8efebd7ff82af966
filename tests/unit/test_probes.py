"""The probe state machine (pure, injected clock) and the probe I/O against local sockets."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.probes import ProbeKind, Prober, ProbeResult, ProbeState, http_get, run_probe
from agent.runtime.base import ProbeSpec, ReplicaSpec
from agent.server import probe_from_proto, replica_from_proto, validate_spec
from agent.supervisor import spec_from_record, spec_to_record
from cloudless.api import agent_pb2

OK = ProbeResult(True)
BAD = ProbeResult(False, "connection refused")


def probe(**kw: object) -> ProbeSpec:
    fields: dict[str, object] = {"action": "tcp", "port": 80, "period": 10.0}
    fields.update(kw)
    return ProbeSpec(**fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- state machine


def test_initial_delay_and_period() -> None:
    s = ProbeState(100.0, liveness=probe(initial_delay=5.0, period=2.0))
    assert s.due(104.9) == []
    assert s.next_due() == 105.0
    assert s.due(105.0) == [ProbeKind.LIVENESS]
    s.record(ProbeKind.LIVENESS, OK, 105.1)
    assert s.due(106.0) == []
    assert s.next_due() == pytest.approx(107.1)


def test_liveness_restarts_after_failure_threshold_consecutive_failures() -> None:
    s = ProbeState(0.0, liveness=probe(failure_threshold=3))
    assert s.record(ProbeKind.LIVENESS, BAD, 1) is None
    assert s.record(ProbeKind.LIVENESS, BAD, 2) is None
    assert s.record(ProbeKind.LIVENESS, OK, 3) is None  # a success resets the count
    assert s.record(ProbeKind.LIVENESS, BAD, 4) is None
    assert s.record(ProbeKind.LIVENESS, BAD, 5) is None
    reason = s.record(ProbeKind.LIVENESS, BAD, 6)
    assert reason is not None and reason.startswith("liveness probe failed: connection refused")
    assert s.due(1000) == [] and s.next_due() is None  # nothing runs after the verdict
    assert not s.ready


def test_no_readiness_probe_means_ready_and_liveness_does_not_gate_readiness() -> None:
    s = ProbeState(0.0, liveness=probe(failure_threshold=2))
    assert s.ready and s.ready_message == ""
    s.record(ProbeKind.LIVENESS, BAD, 1)
    assert s.ready  # one failure below the threshold changes nothing


def test_readiness_starts_not_ready_and_needs_success_threshold() -> None:
    s = ProbeState(0.0, readiness=probe(success_threshold=2, failure_threshold=2))
    assert not s.ready
    assert s.ready_message == "waiting for the readiness probe to succeed"
    s.record(ProbeKind.READINESS, BAD, 1)
    assert s.ready_message == "readiness probe failed: connection refused"
    s.record(ProbeKind.READINESS, OK, 2)
    assert not s.ready
    s.record(ProbeKind.READINESS, OK, 3)
    assert s.ready and s.ready_message == ""
    s.record(ProbeKind.READINESS, BAD, 4)
    assert s.ready  # below the failure threshold
    assert s.record(ProbeKind.READINESS, BAD, 5) is None  # readiness never restarts
    assert not s.ready
    assert s.ready_message == "readiness probe failed: connection refused"


def test_startup_gates_liveness_and_readiness() -> None:
    s = ProbeState(
        0.0,
        startup=probe(failure_threshold=3, period=1.0),
        liveness=probe(period=5.0),
        readiness=probe(period=5.0),
    )
    assert s.due(0) == [ProbeKind.STARTUP]
    s.record(ProbeKind.STARTUP, BAD, 0)
    assert s.due(100) == [ProbeKind.STARTUP]  # liveness is held off
    assert not s.ready and s.ready_message.startswith("startup probe failed")
    s.record(ProbeKind.STARTUP, OK, 100)
    assert set(s.due(100)) == {ProbeKind.LIVENESS, ProbeKind.READINESS}
    s.record(ProbeKind.READINESS, OK, 100)
    assert s.ready


def test_startup_failure_restarts() -> None:
    s = ProbeState(0.0, startup=probe(failure_threshold=2), readiness=probe())
    assert s.record(ProbeKind.STARTUP, BAD, 1) is None
    reason = s.record(ProbeKind.STARTUP, BAD, 2)
    assert reason is not None and reason.startswith("startup probe failed: ")
    assert s.ready_message.startswith("restarting: startup probe failed")


def test_late_results_of_inactive_probes_are_ignored() -> None:
    s = ProbeState(0.0, startup=probe(), liveness=probe(failure_threshold=1))
    assert s.record(ProbeKind.LIVENESS, BAD, 1) is None  # not active before startup passed


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[ProbeSpec, list[tuple[float, bool]]]:
    spec = probe(
        failure_threshold=draw(st.integers(1, 5)),
        success_threshold=draw(st.integers(1, 5)),
        period=draw(st.floats(0.1, 5)),
        initial_delay=draw(st.floats(0, 5)),
    )
    steps = draw(st.lists(st.tuples(st.floats(0, 3), st.booleans()), max_size=40))
    return spec, steps


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_readiness_follows_the_consecutive_run_rule(
    scenario: tuple[ProbeSpec, list[tuple[float, bool]]],
) -> None:
    """Ready flips exactly when the current run of equal results reaches its threshold."""
    spec, steps = scenario
    s = ProbeState(0.0, readiness=spec)
    now, ready, run_ok, run = 0.0, False, None, 0
    for gap, ok in steps:
        now += gap
        if not s.due(now):
            assert s.next_due() is not None and s.next_due() > now  # type: ignore[operator]
            continue
        s.record(ProbeKind.READINESS, ProbeResult(ok, "x"), now)
        run = run + 1 if run_ok == ok else 1
        run_ok = ok
        if ok and run >= spec.success_threshold:
            ready = True
        if not ok and run >= spec.failure_threshold:
            ready = False
        assert s.ready == ready
        assert (s.ready_message == "") == ready
        assert s.next_due() == pytest.approx(now + spec.period)
    assert s.restart_reason is None


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.lists(st.booleans(), max_size=30))
def test_liveness_restarts_exactly_at_the_threshold(threshold: int, results: list[bool]) -> None:
    s = ProbeState(0.0, liveness=probe(failure_threshold=threshold, period=1.0))
    failures = 0
    for i, ok in enumerate(results):
        reason = s.record(ProbeKind.LIVENESS, ProbeResult(ok, "boom"), float(i))
        failures = 0 if ok else failures + 1
        if failures >= threshold:
            assert reason is not None and "liveness probe failed: boom" in reason
            assert s.next_due() is None
            return
        assert reason is None and s.ready


# ---------------------------------------------------------------------------- wire and store


def test_wire_probe_round_trip_and_defaults() -> None:
    wire = agent_pb2.ReplicaSpec(
        replica_id="r-1",
        namespace="default",
        workload="w",
        runtime="exec",
        command=["sleep", "60"],
        liveness_probe=agent_pb2.Probe(exec=agent_pb2.ExecAction(command=["true"])),
        readiness_probe=agent_pb2.Probe(
            http_get=agent_pb2.HTTPGetAction(
                path="/ready", port=8080, headers=[agent_pb2.HTTPHeader(name="X", value="1")]
            ),
            period_seconds=2,
            success_threshold=2,
        ),
        epoch=7,
    )
    assert validate_spec(wire) == []
    spec = replica_from_proto(wire, "n1")
    assert spec.liveness_probe == ProbeSpec("exec", command=("true",))
    assert spec.readiness_probe == ProbeSpec(
        "http", port=8080, path="/ready", headers=(("X", "1"),), period=2.0, success_threshold=2
    )
    assert spec.startup_probe is None and spec.epoch == 7
    assert spec.readiness_gated and spec.has_probes
    # desired.json keeps probes across an agent restart
    assert spec_from_record(spec_to_record(spec)) == spec
    assert probe_from_proto(agent_pb2.Probe(tcp_socket=agent_pb2.TCPSocketAction(port=5))) == (
        ProbeSpec("tcp", port=5)
    )


def test_agent_refuses_malformed_probes() -> None:
    wire = agent_pb2.ReplicaSpec(
        replica_id="r-1",
        namespace="default",
        workload="w",
        runtime="exec",
        liveness_probe=agent_pb2.Probe(success_threshold=2),
        startup_probe=agent_pb2.Probe(tcp_socket=agent_pb2.TCPSocketAction(port=0)),
        readiness_probe=agent_pb2.Probe(http_get=agent_pb2.HTTPGetAction(path="no-slash", port=80)),
    )
    problems = "; ".join(validate_spec(wire))
    assert "liveness_probe: needs one of exec, http_get, tcp_socket" in problems
    assert "liveness_probe: success_threshold must be 1" in problems
    assert "startup_probe: tcp_socket port out of range" in problems
    assert "readiness_probe: http_get needs" in problems


# ---------------------------------------------------------------------------- probe I/O


@contextlib.asynccontextmanager
async def http_server(status: int) -> AsyncIterator[tuple[int, list[bytes]]]:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield port, seen


class Local:
    async def address(self, port: int) -> tuple[str, int]:
        return "127.0.0.1", port

    async def exec(self, argv: Sequence[str], timeout: float) -> ProbeResult:
        return ProbeResult(argv[0] == "true", "exec")


@pytest.mark.parametrize(("status", "ok"), [(200, True), (302, True), (399, True), (404, False)])
async def test_http_probe_status_ranges(status: int, ok: bool) -> None:
    async with http_server(status) as (port, seen):
        spec = probe(action="http", port=port, path="/healthz", headers=(("X-Probe", "yes"),))
        result = await http_get("127.0.0.1", port, spec, 1.0)
    assert result.ok is ok
    if not ok:
        assert result.message == f"GET http://127.0.0.1:{port}/healthz: HTTP status 404"
    assert seen[0].startswith(b"GET /healthz HTTP/1.1\r\n")
    assert b"X-Probe: yes\r\n" in seen[0]


async def test_http_probe_times_out_on_a_silent_server() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await http_get("127.0.0.1", port, probe(action="http", port=port), 0.2)
        server.close()
    assert not result.ok and "timed out after 0.2s" in result.message


async def test_tcp_probe_refused_and_accepted() -> None:
    async with http_server(200) as (port, _seen):
        assert (await run_probe(Local(), probe(port=port, timeout=1.0))).ok
    refused = await run_probe(Local(), probe(port=port, timeout=1.0))
    assert not refused.ok and refused.message.startswith(f"TCP 127.0.0.1:{port}: ")


async def test_prober_asks_for_a_restart_once_liveness_gives_up() -> None:
    spec = ReplicaSpec(
        replica_id="r",
        namespace="d",
        workload="w",
        node_id="n",
        image="",
        liveness_probe=probe(action="exec", command=("false",), period=0.01, failure_threshold=3),
        readiness_probe=probe(action="exec", command=("true",), period=0.01),
    )
    reasons: list[str] = []

    async def restart(reason: str) -> None:
        reasons.append(reason)

    prober = Prober("r", spec, Local(), restart)
    async with asyncio.timeout(5):
        await prober.run()  # returns after asking for the restart
    assert len(reasons) == 1 and reasons[0].startswith("liveness probe failed: exec")
    assert prober.state.tracks[ProbeKind.LIVENESS].failures == 3


def _self_signed(tmp_path: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "probe-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    return context


async def test_https_probe_does_not_verify_the_certificate(tmp_path: Path) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=_self_signed(tmp_path))
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await http_get(
            "127.0.0.1", port, probe(action="http", port=port, scheme="HTTPS"), 2.0
        )
    assert result.ok, result.message
