"""Every saved history in ``tests/histories/`` replays on the current workflow code.

The files were recorded once, with the release's code (``record.py``); a change that makes
one of them fail to replay alters history and must ship behind ``workflow.patched`` with a
newly recorded history of the release before it (see README.md). Only saved files are
replayed here, never histories produced on the fly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workers.coordinator import workflow_runner
from workflows.node import NodeWorkflow
from workflows.workload import WorkloadWorkflow

HERE = Path(__file__).parent
SAVED = sorted(HERE.glob("**/*.json"))
WORKFLOWS = [WorkloadWorkflow, NodeWorkflow]


def workflow_type(path: Path) -> str:
    first = json.loads(path.read_text())["events"][0]
    name: str = first["workflowExecutionStartedEventAttributes"]["workflowType"]["name"]
    return name


def test_every_workflow_has_saved_histories() -> None:
    kinds = {workflow_type(p) for p in SAVED}
    assert kinds == {"WorkloadWorkflow", "NodeWorkflow"}, kinds


@pytest.mark.parametrize("path", SAVED, ids=[str(p.relative_to(HERE)) for p in SAVED])
async def test_saved_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(str(path.relative_to(HERE)), path.read_text())
    replayer = Replayer(
        workflows=WORKFLOWS,
        data_converter=pydantic_data_converter,
        workflow_runner=workflow_runner(),
    )
    await replayer.replay_workflow(history)  # raises on any nondeterminism
