"""Event models built from values a schema has already typed: only the models' own rules run.

Why not `validated`? A record read back from the log was decoded by fastavro against the
event's Avro schema, so every value already has the type its field declares: strings are
strings, a role is one of the enum's symbols, a map holds strings. A second full pydantic
pass over it re-checked those types and cost as much as the Avro read itself (issue 19:
decode was 45% of a replay's CPU, a fifth of it pydantic). What Avro cannot check are
the rules the models add on top: the id patterns and lengths, the content's length, the
bounds of counters and of a task's progress, the UTC timestamp. `typed_builder` reads
those rules from the models themselves (their `Annotated` metadata and `Field`
constraints), once per model, and `from_typed` applies exactly them before it builds the
model without pydantic's validator. A model with a rule this module does not know how to
apply (a new constraint kind, a field validator) fails at import, never silently.

The rules are the models': nothing is written twice. The caps of `MAX_NAME_CHARS` and
its siblings are not applied, as `validated` under `READ_FROM_LOG` does not apply them
(the envelope's model validator only checks them for events being written).
"""

from __future__ import annotations

import collections.abc
import enum
import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import cache
from typing import Any, NoReturn, TypeVar, cast

import annotated_types
from pydantic import AfterValidator, BaseModel
from pydantic.fields import FieldInfo

from chatlog.schemas.errors import InvalidEvent, InvalidId

__all__ = ["from_typed", "typed_builder"]

_M = TypeVar("_M", bound=BaseModel)

# Model validators that apply no rule to what is read from the log (`READ_FROM_LOG`):
# `ConversationEvent._within_caps` checks the caps of events being written only.
_WAIVED_ON_READ = frozenset({"_within_caps"})
# The types a schema's reader hands over as they are: Avro's string, long/int, double,
# boolean, bytes and timestamp-millis.
_SCALARS = (str, int, float, bool, bytes, datetime)

_Convert = Callable[[Any], Any]
_NOTHING = object()


def from_typed(model: type[_M], data: Mapping[str, Any]) -> _M:
    """`model` built from `data`, whose values a schema already typed (see the module).

    Raises what `validated(model, data, context=READ_FROM_LOG)` raises for a value that
    breaks a rule: `InvalidId` for an id, `InvalidEvent` naming the field otherwise.
    """
    return typed_builder(model)(data)


def typed_builder(model: type[_M]) -> Callable[[Mapping[str, Any]], _M]:
    """The function `from_typed` uses for `model`, compiled from its fields once."""
    return cast(Callable[[Mapping[str, Any]], _M], _compiled(model))


@cache
def _compiled(model: type[BaseModel]) -> Callable[[Mapping[str, Any]], BaseModel]:
    decorators = model.__pydantic_decorators__
    unknown = set(decorators.model_validators) - _WAIVED_ON_READ
    if unknown or decorators.field_validators or decorators.validators:
        raise TypeError(f"{model.__name__} has validators typed_builder cannot apply: {unknown}")
    # The builder is generated as straight-line code, one statement per field, as
    # `dataclasses` generates `__init__`: a loop over the fields cost as much as
    # pydantic's own validator, which the builder is there to undercut.
    scope: dict[str, Any] = {
        "_NOTHING": _NOTHING,
        "_extra": functools.partial(_extra, model),
        "_new": model.__new__,
        "_set": object.__setattr__,
        "_model": model,
        "_names": set(model.model_fields),  # a set: pydantic updates `fields_set` in place
    }
    lines = ["def build(data):", " get = data.get"]
    for n, (name, info) in enumerate(model.model_fields.items()):
        where = f"{model.__name__}.{name}"
        convert = _converter(info.annotation, list(info.metadata), where)
        scope[f"_c{n}"], scope[f"_d{n}"] = convert, _default_of(where, info)
        lines += [
            f" v{n} = get({name!r}, _NOTHING)",
            f" if v{n} is _NOTHING: v{n} = _d{n}()",
        ]
        if convert is not None:
            lines.append(f" else: v{n} = _c{n}(v{n})")
    count = len(model.model_fields)
    values = ", ".join(f"{name!r}: v{n}" for n, name in enumerate(model.model_fields))
    lines += [
        " present = _names.intersection(data)",
        " if len(present) != len(data): _extra(data)",
        # What `BaseModel.model_construct` does, without its per-field alias handling:
        # every field is set, in the model's order, as validation would leave it.
        " built = _new(_model)",
        f" _set(built, '__dict__', {{{values}}})",
        " _set(built, '__pydantic_fields_set__', present)",
        " _set(built, '__pydantic_extra__', None)",
        " _set(built, '__pydantic_private__', None)",
        " return built",
    ]
    assert count == len(model.model_fields)
    exec("\n".join(lines), scope)  # noqa: S102 - code made from the model's field names
    build: Callable[[Mapping[str, Any]], BaseModel] = scope["build"]
    return build


def _default_of(where: str, info: FieldInfo) -> Callable[[], Any]:
    if info.is_required():

        def required() -> Any:
            raise InvalidEvent(f"invalid {where}: Field required")

        return required
    return functools.partial(info.get_default, call_default_factory=True)


def _extra(model: type[BaseModel], data: Mapping[str, Any]) -> NoReturn:
    extra = ", ".join(sorted(set(data) - set(model.model_fields)))
    raise InvalidEvent(f"invalid {model.__name__}: {extra}: Extra inputs are not permitted")


def _converter(annotation: Any, metadata: list[Any], where: str) -> _Convert | None:
    """What turns a schema-typed value into the field's value and applies its rules;
    None when the value is kept as it is."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *more = typing.get_args(annotation)
        metadata = [*metadata, *more]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        if len(present) == 1:
            inner = _converter(present[0], metadata, where)
            if inner is None:
                return None
            return lambda value: None if value is None else inner(value)
        if metadata or not all(_is_model(a) for a in present):
            raise TypeError(f"{where}: typed_builder cannot apply {annotation!r}")
        # A union of models (the payload): built by the caller, which knows the branch
        # from the schema's union; only an instance of one of them is accepted.
        kinds = tuple(present)

        def one_of(value: Any) -> Any:
            if not isinstance(value, kinds):
                raise InvalidEvent(f"invalid {where}: expected one of the union's models")
            return value

        return one_of
    convert = _container(annotation, origin, args, where)
    checks = [_rule(item, where) for item in metadata]
    if not checks:
        return convert
    if convert is None:
        if len(checks) == 1:
            return checks[0]
        convert = _identity
    steps = [convert, *checks]

    def chained(value: Any) -> Any:
        for step in steps:
            value = step(value)
        return value

    return chained


def _container(annotation: Any, origin: Any, args: tuple[Any, ...], where: str) -> _Convert | None:
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _converter(args[0], [], where)
        if item is None:
            return tuple
        return lambda value: tuple(map(item, value)) if value else ()
    if origin in (collections.abc.Mapping, dict):
        if any(_converter(a, [], where) is not None for a in args):
            raise TypeError(f"{where}: typed_builder keeps maps of plain values only")
        return None  # the reader's dict, fresh for each record
    if _is_model(annotation):
        model, build = annotation, typed_builder(annotation)
        # An instance is kept as it is, as pydantic keeps one (`revalidate_instances`).
        return lambda value: value if isinstance(value, model) else build(value)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        enum_type = annotation
        members = {m.value: m for m in enum_type}  # a dict lookup: a third of `Role(value)`

        def member(value: Any) -> Any:
            found = members.get(value)
            if found is None:
                raise InvalidEvent(f"invalid {where}: {value!r} is not a {enum_type.__name__}")
            return found

        return member
    if annotation in _SCALARS:
        return None
    raise TypeError(f"{where}: typed_builder cannot apply {annotation!r}")


def _rule(item: Any, where: str) -> _Convert:
    """The check of one constraint from a field's metadata."""
    if isinstance(item, AfterValidator):
        func = item.func
        if len(inspect.signature(func).parameters) != 1:
            raise TypeError(f"{where}: an after-validator with info is not supported")

        def after(value: Any) -> Any:
            try:
                return func(value)  # type: ignore[call-arg]
            except InvalidId:
                raise  # names the id and the rule, as `validated` reports it
            except (ValueError, AssertionError) as exc:
                raise InvalidEvent(f"invalid {where}: {exc}") from None

        return after
    if isinstance(item, annotated_types.MaxLen):
        limit = item.max_length

        def max_len(value: Any) -> Any:
            if len(value) > limit:
                raise InvalidEvent(
                    f"invalid {where}: has {len(value)} characters; at most {limit} allowed"
                )
            return value

        return max_len
    if isinstance(item, annotated_types.Ge | annotated_types.Le):
        low = item.ge if isinstance(item, annotated_types.Ge) else None
        high = item.le if isinstance(item, annotated_types.Le) else None

        def bounded(value: Any) -> Any:
            # Written as "not within" so that NaN, within no bound, is refused too.
            if low is not None and not value >= low:
                raise InvalidEvent(f"invalid {where}: {value!r} is below {low}")
            if high is not None and not value <= high:
                raise InvalidEvent(f"invalid {where}: {value!r} is above {high}")
            return value

        return bounded
    raise TypeError(f"{where}: typed_builder cannot apply the rule {item!r}")


def _identity(value: Any) -> Any:
    return value


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
