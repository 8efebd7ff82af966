"""policies.admission: a setting that asks for something a runtime does not enforce is
named for refusal; a setting that asks for nothing never is (issue #10, item 8)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cloudless.spec import LinuxSecurityOptions, SecurityContext, parse_workload
from cloudless.vocabulary import RUNTIMES
from policies.admission import (
    ENFORCED,
    NEUTRAL,
    enforcing_runtimes,
    requested_settings,
    unenforced_settings,
)


def canonical_settings() -> set[str]:
    """Every setting of the manifest's security_context, ``linux.*`` flattened."""
    names = {name for name in SecurityContext.model_fields if name != "linux"}
    return names | {f"linux.{name}" for name in LinuxSecurityOptions.model_fields}


def test_every_security_setting_has_its_neutral_values() -> None:
    """A new setting must say which values ask for nothing, or it is always refused."""
    assert set(NEUTRAL) == canonical_settings()


def test_every_runtime_declares_what_it_enforces() -> None:
    assert set(ENFORCED) == set(RUNTIMES)
    for settings in ENFORCED.values():
        assert settings <= set(NEUTRAL)


def test_the_defaults_of_a_manifest_ask_for_nothing() -> None:
    workload = parse_workload(
        {
            "apiVersion": "cloudless.dev/v1",
            "kind": "Workload",
            "metadata": {"name": "web"},
            "spec": {"container": {"image": "busybox"}},
        }
    )
    security = workload.to_manifest()["spec"]["security_context"]
    assert requested_settings(security) == {}
    for runtime in RUNTIMES:
        assert unenforced_settings(runtime, security) == {}


def test_zero_is_a_request_not_a_default() -> None:
    """run_as_user 0 asks for root; False == 0 in Python, but not here."""
    assert requested_settings({"run_as_user": 0}) == {"run_as_user": 0}
    assert requested_settings({"privileged": 0}) == {"privileged": 0}
    assert requested_settings({"privileged": False, "run_as_user": None}) == {}


def test_linux_options_are_flattened_and_an_empty_linux_asks_nothing() -> None:
    assert requested_settings({"linux": None}) == {}
    assert requested_settings({"linux": {}}) == {}
    assert requested_settings({"linux": {"seccomp_profile": {"type": "Unconfined"}}}) == {
        "linux.seccomp_profile": {"type": "Unconfined"}
    }


def test_an_unknown_setting_is_refused_unless_empty() -> None:
    assert requested_settings({"new_knob": True}) == {"new_knob": True}
    assert requested_settings({"new_knob": None, "other": []}) == {}
    assert unenforced_settings("wasm", {"privileged": True}) == {"privileged": True}


setting_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["runc", "gvisor", "kata"]),
    st.lists(st.sampled_from(["ALL", "NET_RAW"]), max_size=2),
    st.fixed_dictionaries({"type": st.sampled_from(["RuntimeDefault", "Unconfined"])}),
)
contexts = st.dictionaries(st.sampled_from(sorted(NEUTRAL)), setting_values, max_size=8)
enforced_sets = st.fixed_dictionaries(
    {r: st.frozensets(st.sampled_from(sorted(NEUTRAL))) for r in RUNTIMES}
)


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        if name.startswith("linux."):
            nested.setdefault("linux", {})[name.removeprefix("linux.")] = value
        else:
            nested[name] = value
    return nested


@given(contexts, enforced_sets, st.sampled_from(RUNTIMES))
def test_refused_is_exactly_requested_minus_enforced(
    flat: dict[str, Any], enforced: dict[str, frozenset[str]], runtime: str
) -> None:
    import policies.admission

    original = policies.admission.ENFORCED
    policies.admission.ENFORCED = enforced  # type: ignore[misc]
    try:
        requested = requested_settings(unflatten(flat))
        refused = unenforced_settings(runtime, unflatten(flat))
        enforcers = {name: enforcing_runtimes(name) for name in NEUTRAL}
    finally:
        policies.admission.ENFORCED = original  # type: ignore[misc]
    # Every requested value is one that is not neutral, with its value kept as written.
    for name, value in flat.items():
        neutral = any(type(value) is type(n) and value == n for n in NEUTRAL[name])
        assert (name in requested) is not neutral
        if not neutral:
            assert requested[name] == value
    assert refused == {n: v for n, v in requested.items() if n not in enforced[runtime]}
    assert list(refused) == [n for n in requested if n in refused]  # order as written
    for name, runtimes in enforcers.items():
        assert runtimes == [r for r in enforced if name in enforced[r]]
