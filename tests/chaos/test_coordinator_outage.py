"""NFR-A1: containers keep serving through a coordinator outage; on reconnect the agents
reconcile. Real processes (dev stack: transit, Temporal, coordinator, three agents) and
the docker runtime; the outage is compressed to ~35 s here, ``bench/outage_soak.py`` runs
the same scenario for 15 minutes (``cloudless/testing/outage.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudless.cli.devstack import DevPorts
from cloudless.model import NodeState
from cloudless.testing.outage import CRASHY, ONESHOT, WEB, run_outage

pytestmark = [pytest.mark.temporal, pytest.mark.docker]

# Below 10,000, clear of dev (0), devstack (1100), crash (1300) and rotation (1600).
PORTS = DevPorts.shifted(1400)
OUTAGE = 35.0


async def test_replicas_serve_through_a_coordinator_outage_and_agents_reconcile(
    tmp_path: Path, busybox_image: str
) -> None:
    report = await run_outage(tmp_path / "stack", outage=OUTAGE, ports=PORTS)

    # The surviving replica served every probe: before, during and after the outage,
    # through its own agent's restart.
    assert report.outage_seconds >= OUTAGE
    assert len(report.probes) >= OUTAGE / 0.2 * 0.8, len(report.probes)
    assert report.failed_probes == [], report.failed_probes[:5]

    # ... including while the web replica's own agent was dead and restarting.
    down, up = report.web_agent_down
    assert [p for p in report.probes if down <= p.at <= up and p.ok], report.web_agent_down

    # The agent adopted the running container instead of starting another one.
    before, after = report.web_container
    assert before and after == before, report.web_container

    # The crashed replica was restarted by its agent alone (restartPolicy Always) ...
    restarts, phase, _reason = report.crashy_restart
    assert restarts >= 1 and phase == "Running", report.crashy_restart
    # ... and the run-once replica was left down (restartPolicy Never), its exit held.
    assert report.oneshot_exit[:2] == ("Failed", True), report.oneshot_exit
    assert report.oneshot_exit[2] == 137, report.oneshot_exit  # SIGKILL

    # Every agent reconnected to the restarted coordinator.
    assert all(now > then for then, now in report.reconnects.values()), report.reconnects
    assert all(s == NodeState.READY for s in report.node_states.values()), report.node_states

    # The exit was reported: the workload replaced the dead run-once replica. The others
    # kept their replica ids (restarts and adoption are the agent's business).
    (web,) = report.after[WEB].replicas
    (crashy,) = report.after[CRASHY].replicas
    (oneshot,) = report.after[ONESHOT].replicas
    assert web.replica_id == report.before[WEB]
    assert crashy.replica_id == report.before[CRASHY]
    assert oneshot.replica_id != report.before[ONESHOT]

    # Converged, exactly: each replica runs once, on one node, in one container.
    wanted = {web.replica_id, crashy.replica_id, oneshot.replica_id}
    assert set(report.running) == wanted, report.running
    assert all(len(nodes) == 1 for nodes in report.running.values()), report.running
    assert report.containers == dict.fromkeys(wanted, 1), report.containers
