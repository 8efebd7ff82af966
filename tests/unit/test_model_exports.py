"""``cloudless.model`` re-exports every payload model of its entity modules, once."""

from __future__ import annotations

import importlib
import inspect

import cloudless.model as model

MODULES = ("audit", "nodes", "ledger", "enrollment", "workloads", "placement", "agents")


def test_every_public_model_is_exported() -> None:
    for name in MODULES:
        module = importlib.import_module(f"cloudless.model.{name}")
        defined = {
            n
            for n, v in vars(module).items()
            if not n.startswith("_")
            and (inspect.isclass(v) or inspect.isfunction(v))
            and v.__module__ == module.__name__
        }
        assert defined <= set(model.__all__), (name, defined - set(model.__all__))


def test_exports_resolve_and_are_unique() -> None:
    assert len(set(model.__all__)) == len(model.__all__)
    for name in model.__all__:
        assert getattr(model, name) is not None
