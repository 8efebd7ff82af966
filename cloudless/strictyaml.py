"""Safe YAML for untrusted text: duplicate keys are refused (PyYAML keeps the last one)
and nesting is bounded before PyYAML's recursive composer could run out of stack.

Manifests (``cloudless.spec``) and the client config file (``cloudless.clientconfig``)
both load through :func:`strict_loader`, each with its own depth limit.
"""

from __future__ import annotations

from collections.abc import Hashable
from functools import cache
from typing import Any, ClassVar

import yaml


class TooDeepError(yaml.YAMLError):
    """A document nests deeper than its loader's limit (found while composing it)."""

    def __init__(self, max_depth: int, mark: object) -> None:
        super().__init__(f"nested more than {max_depth} levels deep")
        self.problem_mark = mark


class StrictLoader(yaml.SafeLoader):
    """A SafeLoader (it never builds arbitrary Python objects) refusing duplicate keys
    and documents nested deeper than :attr:`max_depth`."""

    max_depth: ClassVar[int] = 32
    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
                raise TooDeepError(self.max_depth, event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Hashable, yaml.Mark] = {}
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable):
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first defined on line {seen[key].line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=True)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@cache
def strict_loader(max_depth: int) -> type[StrictLoader]:
    """A :class:`StrictLoader` whose documents nest at most ``max_depth`` levels."""
    return type(f"StrictLoader{max_depth}", (StrictLoader,), {"max_depth": max_depth})
