"""The base of every manifest model: both spellings of every field, immutability, unknown
keys rejected, and cross-field checks that run on the raw input next to pydantic's own field
checks, so that neither hides the other's problems.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Self

from pydantic import (
    AliasChoices,
    AliasGenerator,
    BaseModel,
    ConfigDict,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

from cloudless.spec._messages import _problem


def _camel_first(name: str) -> AliasChoices:
    camel = to_camel(name)
    return AliasChoices(camel, name) if camel != name else AliasChoices(name)


def _snake_first(name: str) -> AliasChoices:
    camel = to_camel(name)
    return AliasChoices(name, camel) if camel != name else AliasChoices(name)


class _Problem(NamedTuple):
    """A cross-field problem found on raw input; ``loc`` is relative to the model."""

    loc: tuple[str | int, ...]
    message: str
    fix: str
    value: object


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@functools.cache
def _spellings(model: type[BaseModel], name: str) -> tuple[str, ...]:
    """Every input key that ``model`` accepts for field ``name``, canonical spelling first."""
    info = model.model_fields[name]
    alias = info.validation_alias
    keys: list[str] = []
    if isinstance(alias, AliasChoices):
        keys.extend(choice for choice in alias.choices if isinstance(choice, str))
    elif isinstance(alias, str):
        keys.append(alias)
    if model.model_config.get("validate_by_name", False) and name not in keys:
        keys.append(name)
    return tuple(keys) or (name,)


class _Raw:
    """Raw (not yet validated) input of a model, read by field name in any accepted spelling.

    Cross-field checks run on this view so they can report problems even when unrelated
    fields fail validation; values of the wrong type are simply skipped, since the field
    check reports those.
    """

    def __init__(self, model: type[BaseModel], data: object) -> None:
        self.model = model
        self.data = data

    def key(self, name: str) -> str:
        """The spelling the user wrote for ``name``, else the canonical one."""
        spellings = _spellings(self.model, name)
        if isinstance(self.data, Mapping):
            for spelling in spellings:
                if spelling in self.data:
                    return spelling
        return spellings[0]

    def get(self, name: str, default: object = None) -> object:
        if isinstance(self.data, BaseModel):
            return getattr(self.data, name, default)
        if isinstance(self.data, Mapping):
            for spelling in _spellings(self.model, name):
                if spelling in self.data:
                    return self.data[spelling]
        return default

    def sub(self, name: str, model: type[BaseModel]) -> _Raw | None:
        value = self.get(name)
        return _Raw(model, value) if isinstance(value, Mapping | model) else None

    def items(self, name: str, model: type[BaseModel]) -> Iterator[tuple[int, _Raw]]:
        value = self.get(name)
        if isinstance(value, list | tuple):
            for index, item in enumerate(value):
                if isinstance(item, Mapping | model):
                    yield index, _Raw(model, item)


def _merge_errors(
    title: str, error: ValidationError | None, problems: Sequence[_Problem]
) -> ValidationError:
    """One ValidationError holding pydantic's field errors and our cross-field problems."""
    details: list[InitErrorDetails] = []
    if error is not None:
        for item in error.errors(include_url=False):
            ctx = {
                key: value if isinstance(value, str | int | float) else str(value)
                for key, value in (item.get("ctx") or {}).items()
            }
            details.append(
                {
                    "type": PydanticCustomError(item["type"], item["msg"], ctx or None),
                    "loc": item["loc"],
                    "input": item["input"],
                }
            )
    for problem in problems:
        details.append(
            {
                "type": _problem(problem.message, problem.fix),
                "loc": problem.loc,
                "input": problem.value,
            }
        )
    return ValidationError.from_exception_data(title, details)


class _Model(BaseModel):
    """Base of every manifest model: camelCase or snake_case input, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=AliasGenerator(validation_alias=_camel_first, serialization_alias=to_camel),
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    @classmethod
    def _cross_field_problems(cls, raw: _Raw) -> list[_Problem]:
        """Checks spanning several fields; overridden by models that have any."""
        return []

    @model_validator(mode="wrap")
    @classmethod
    def _validate_with_cross_checks(
        cls, data: Any, handler: ModelWrapValidatorHandler[Self]
    ) -> Self:
        """Run field validation and cross-field checks together so neither hides the other."""
        if isinstance(data, cls):
            return handler(data)
        problems = cls._cross_field_problems(_Raw(cls, data)) if isinstance(data, Mapping) else []
        try:
            model = handler(data)
        except ValidationError as error:
            if not problems:
                raise
            raise _merge_errors(cls.__name__, error, problems) from None
        if problems:
            raise _merge_errors(cls.__name__, None, problems)
        return model


class _SnakeModel(_Model):
    """Base of the security-context models, whose canonical names are snake_case."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(validation_alias=_snake_first, serialization_alias=str),
    )
