"""``spec.reschedule`` in manifests: defaults, durations, every rejection, hashes."""

from __future__ import annotations

import pytest

from cloudless.spec import parse_workload
from cloudless.vocabulary import DelayFunction
from cloudless.workloads import template_hash
from policies.reschedule import ReschedulePolicy
from tests.unit.test_spec import issues_of, minimal, put


def test_unset_means_the_defaults_and_leaves_the_spec_hash_alone() -> None:
    w = parse_workload(minimal())
    assert w.spec.reschedule is None
    assert w.spec.reschedule_policy == ReschedulePolicy()
    assert "reschedule" not in w.to_manifest()["spec"]


def test_durations_are_whole_seconds_written_back_in_the_duration_grammar() -> None:
    w = parse_workload(
        put(
            minimal(),
            "spec.reschedule",
            {
                "failures": 2,
                "failureWindow": "1m30s",
                "attempts": 5,
                "interval": 600,
                "delay": "0s",
                "delayFunction": "fibonacci",
                "maxDelay": "2m",
            },
        )
    )
    assert w.spec.reschedule_policy == ReschedulePolicy(
        failures=2,
        failure_window=90,
        attempts=5,
        interval=600,
        delay=0,
        delay_function=DelayFunction.FIBONACCI,
        max_delay=120,
    )
    written = w.to_manifest()["spec"]["reschedule"]
    assert written["failureWindow"] == "1m30s" and written["interval"] == "10m"
    assert parse_workload(w.to_manifest()) == w  # the canonical form reads back the same


def test_snake_case_spellings_are_accepted() -> None:
    w = parse_workload(
        put(minimal(), "spec.reschedule", {"failure_window": "10s", "max_delay": "10s"})
    )
    assert w.spec.reschedule_policy.failure_window == 10


def test_the_policy_is_not_part_of_the_replica_template() -> None:
    """Changing how crash loops are handled must not restart running replicas."""
    plain = parse_workload(minimal())
    tuned = parse_workload(put(minimal(), "spec.reschedule", {"attempts": 1}))
    assert plain.spec_hash() != tuned.spec_hash()
    assert template_hash(plain) == template_hash(tuned)


@pytest.mark.parametrize(
    ("given", "path", "message"),
    [
        ({"failures": 0}, "spec.reschedule.failures", "must be between 1 and 20, got 0"),
        ({"attempts": 21}, "spec.reschedule.attempts", "must be between 0 and 20, got 21"),
        ({"failureWindow": "0s"}, "spec.reschedule.failureWindow", "must be between 1s and 1d"),
        ({"interval": "8d"}, "spec.reschedule.interval", "must be between 1s and 7d"),
        ({"interval": "1.5s"}, "spec.reschedule.interval", "must be whole seconds"),
        ({"delay": "soon"}, "spec.reschedule.delay", "must be a duration like 5s"),
        ({"delay": -5}, "spec.reschedule.delay", "must be between 0s and 1d"),
        ({"failureWindow": True}, "spec.reschedule.failureWindow", "must be a duration"),
        ({"delayFunction": "linear"}, "spec.reschedule.delayFunction", "'fibonacci'"),
        ({"unlimited": "yes"}, "spec.reschedule.unlimited", "must be true or false"),
        (
            {"delay": "10s", "maxDelay": "5s"},
            "spec.reschedule.maxDelay",
            "must not be shorter than delay ('10s'), got '5s'",
        ),
        (
            {"delay": "2m"},
            "spec.reschedule.delay",
            "must not be longer than maxDelay (1m, the default)",
        ),
        (
            {"unlimited": True, "attempts": 3},
            "spec.reschedule.attempts",
            "has no effect when unlimited is true",
        ),
        ({"atempts": 3}, "spec.reschedule.atempts", "unknown field"),
    ],
)
def test_rejections_name_the_field_and_the_fix(
    given: dict[str, object], path: str, message: str
) -> None:
    issues = issues_of(put(minimal(), "spec.reschedule", given))
    assert [i.path for i in issues] == [path], issues
    assert message in issues[0].message, issues[0]
