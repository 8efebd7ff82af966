"""Admission: which requested settings a runtime does not enforce, so the workload is refused.

A manifest may ask for restrictions (a read-only root, dropped capabilities, a seccomp
profile, another user, a sandboxing runtime class) that no runtime driver applies yet.
Accepting such a manifest would let a user believe a container is confined when it is
not, so ``cloudlessctl apply`` and the workload workflow refuse it, naming every such
setting (``cloudless.workloads.check_supported`` calls :func:`unenforced_settings`).

:data:`ENFORCED` is the truth about the drivers in ``agent/runtime/``: a setting goes into
a runtime's set in the same change that makes its driver apply it, with a test that shows
the setting on a running replica. A runtime that is not listed enforces nothing.

Pure functions on plain data (the canonical ``security_context`` mapping of a manifest),
no I/O; ``tests/unit/test_admission.py`` checks them with hypothesis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from cloudless.vocabulary import RuntimeName

#: Security settings each runtime applies to its replicas today (keys of
#: :data:`NEUTRAL`). Neither driver passes any of them on yet: the docker driver creates
#: containers with the engine's defaults, the exec driver starts plain processes as the
#: agent's user.
ENFORCED: Final[Mapping[str, frozenset[str]]] = {
    RuntimeName.DOCKER: frozenset(),
    RuntimeName.EXEC: frozenset(),
}

#: Every setting of ``security_context`` (``linux.*`` flattened) with the values that ask
#: for nothing beyond an unconfined default, so any runtime honours them by doing nothing.
#: ``runc`` is the runtime class docker uses anyway and the exec runtime's processes are
#: not sandboxed either: neither promises confinement.
NEUTRAL: Final[Mapping[str, tuple[object, ...]]] = {
    "privileged": (False,),
    "run_as_non_root": (None, False),
    "run_as_user": (None,),
    "run_as_group": (None,),
    "read_only_root_filesystem": (None, False),
    "capabilities_drop": ((), []),
    "capabilities_add": ((), []),
    "host_network": (False,),
    "host_pid": (False,),
    "host_ipc": (False,),
    "linux.seccomp_profile": (None,),
    "linux.apparmor_profile": (None,),
    "linux.selinux_options": (None,),
    "runtime_class_name": ("runc",),
}

#: Values that ask for nothing, for a setting this module does not know yet.
_EMPTY: Final[tuple[object, ...]] = (None, False, (), [], {})


def _flatten(security_context: Mapping[str, object]) -> dict[str, object]:
    """``{"linux": {"seccomp_profile": x}}`` -> ``{"linux.seccomp_profile": x}``."""
    flat: dict[str, object] = {}
    for key, value in security_context.items():
        if key == "linux" and isinstance(value, Mapping):
            flat.update({f"linux.{name}": item for name, item in value.items()})
        elif key == "linux" and value is None:
            continue
        else:
            flat[key] = value
    return flat


def _neutral(name: str, value: object) -> bool:
    # Compared by type too: 0 == False, but run_as_user 0 asks for root.
    return any(type(value) is type(n) and value == n for n in NEUTRAL.get(name, _EMPTY))


def requested_settings(security_context: Mapping[str, object]) -> dict[str, object]:
    """The settings of a ``security_context`` that ask for something (a restriction, a
    privilege or another identity), in the order written; the rest are left out."""
    return {
        name: value
        for name, value in _flatten(security_context).items()
        if not _neutral(name, value)
    }


def enforcing_runtimes(setting: str) -> list[str]:
    """The runtimes that enforce ``setting``, in :data:`ENFORCED` order."""
    return [runtime for runtime, settings in ENFORCED.items() if setting in settings]


def unenforced_settings(runtime: str, security_context: Mapping[str, object]) -> dict[str, object]:
    """The requested settings that ``runtime`` does not enforce (all of them for a runtime
    this module does not know): a workload asking for any of them must be refused."""
    enforced = ENFORCED.get(runtime, frozenset())
    return {
        name: value
        for name, value in requested_settings(security_context).items()
        if name not in enforced
    }
