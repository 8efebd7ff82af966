"""The gRPC settings Cloudless servers run with, and that they are in force in tests too."""

from __future__ import annotations

import os
import subprocess
import sys

from cloudless.grpc_tuning import EXPERIMENTS, merged


def test_merge_adds_missing_experiments() -> None:
    assert merged("") == ",".join(EXPERIMENTS)
    assert merged("foo", ("-bar",)) == "foo,-bar"


def test_merge_keeps_an_operators_own_choice() -> None:
    assert merged("event_engine_listener", ("-event_engine_listener",)) == "event_engine_listener"
    assert merged(" a , -b ,", ("-b", "c")) == "a,-b,c"


def test_this_test_process_runs_with_the_settings() -> None:
    """conftest imports ``agent`` before anything imports grpc."""
    names = os.environ["GRPC_EXPERIMENTS"].split(",")
    assert all(e in names for e in EXPERIMENTS)


def test_entry_packages_apply_the_settings_before_grpc_loads() -> None:
    code = (
        "import os, sys, warnings\n"
        "warnings.simplefilter('error')\n"
        "import workers.coordinator\n"
        "assert 'grpc' in sys.modules\n"
        "print(os.environ['GRPC_EXPERIMENTS'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ",".join(EXPERIMENTS)
