"""Declarative configuration: the base of every YAML section, field types that say what they accept,
and the one-line error a bad value gets.

Built on pydantic v2 rather than dataclasses, because a pydantic model declares each field's type,
default and limits in one place, refuses unknown keys, and reports where an error is (the dotted
field every message here must name), all of which dataclasses would leave to hand-written checks.

An error reads ``<dotted.field> must be <what it accepts> (got <value>)`` or ``<dotted.field>: <why>``:
a field type words its own errors (:func:`described`, :func:`choice`); a check that spans fields
raises :func:`invalid` naming the field it blames; :func:`error_line` turns the first error of a
``ValidationError`` into that line.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, GetPydanticSchema,
                      ValidationError, WrapValidator, model_validator)
from pydantic_core import PydanticCustomError, core_schema

ERROR_KIND = "ser_tune"      # the pydantic error type of messages worded here

# What pydantic's own checks ask of a value, worded as the rest of the messages.
WHY = {
    "greater_than": "must be > {gt}", "greater_than_equal": "must be >= {ge}", "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}", "literal_error": "must be {expected}", "finite_number": "must be finite",
    "int_type": "must be an integer", "int_parsing": "must be an integer", "int_from_float": "must be an integer",
    "float_type": "must be a number", "float_parsing": "must be a number", "bool_type": "must be true or false",
    "bool_parsing": "must be true or false", "dict_type": "must be a mapping", "list_type": "must be a list",
    "string_type": "must be a string", "string_pattern_mismatch": "must match {pattern}", "missing": "is required",
}


def invalid(text: str, *under: str | int) -> PydanticCustomError:
    """An error whose ``text`` follows the field's dotted name ("must be ..." or ": why"); ``under``
    names the part of the validated value to blame (a key, then a key inside it...)."""
    return PydanticCustomError(ERROR_KIND, "{text}", {"text": text, "under": under})


def worded(message: Callable[[Any], str]) -> WrapValidator:
    """Every way a value can be wrong becomes the one error ``message(value)``."""
    def check(value: Any, handler):
        try:
            return handler(value)
        except ValidationError:
            raise invalid(message(value)) from None
    return WrapValidator(check)


def described(what: str) -> WrapValidator:
    """``must be <what> (got <value>)`` for every way a value can be wrong."""
    return worded(lambda value: f"must be {what} (got {value!r})")


def choice(names: Sequence[str], *, noun: str | None = None, what: str | None = None) -> Any:
    """One of ``names``; wrong values read ``must be one of a, b (got x)``, or with ``noun`` (for list
    items) ``: unknown <noun> 'x'; choose from a, b``."""
    listed = ", ".join(names)
    if noun:
        return Annotated[Literal[tuple(names)], worded(lambda v: f": unknown {noun} {v!r}; choose from {listed}")]
    return Annotated[Literal[tuple(names)], described(what or f"one of {listed}")]


def integer(what: str, *, optional: bool = False, **limits) -> Any:
    """An int (never a bool, a float or a string) within ``limits`` (gt, ge, lt, le)."""
    checked = Annotated[int, Field(strict=True, **limits)]
    return Annotated[Optional[checked] if optional else checked, described(what)]


def number(what: str, *, optional: bool = False, **limits) -> Any:
    """A finite int or float, kept as given (never a bool or a string), within ``limits``."""
    checked = Union[Annotated[int, Field(strict=True, **limits)],
                    Annotated[float, Field(strict=True, allow_inf_nan=False, **limits)]]
    return Annotated[Optional[checked] if optional else checked, described(what)]


Flag = Annotated[bool, Field(strict=True), described("true or false")]
NonNegativeInt = integer("an integer >= 0", ge=0)
PositiveInt = integer("a positive integer", ge=1)
MappingOrNull = Annotated[dict, BeforeValidator(lambda value: {} if value is None else value)]    # null is {}


def listed(item: Any, what: str, *, single: bool = False, empty: bool = False, noun: str | None = None) -> Any:
    """A list of ``item`` (``what`` words a value that is no such list); ``single``: one item is a list
    of one; ``empty``: [] allowed (and null is []); ``noun``: no item twice (``: <noun> is listed twice``)."""
    def shape(value: Any) -> Any:
        if value is None and empty:
            return []
        if single and not isinstance(value, (list, tuple, dict, type(None))):
            value = [value]
        if not isinstance(value, list) or not (value or empty):
            raise invalid(f"must be {what} (got {value!r})")
        return value

    def once(items: list) -> list:
        if noun and len(set(items)) != len(items):
            raise invalid(f": {noun} is listed twice ({items!r})")
        return items
    return Annotated[list[item], BeforeValidator(shape), AfterValidator(once)]


def kept_as_dict(model: type[Section]) -> GetPydanticSchema:
    """Validate a ``dict`` field with ``model`` (errors keep their dotted fields) and keep the plain
    ``model.to_dict()``, for fields the rest of the code reads as mappings."""
    return GetPydanticSchema(lambda _source, handler: core_schema.no_info_after_validator_function(
        lambda validated: validated.to_dict(), handler(model),
        serialization=core_schema.plain_serializer_function_ser_schema(dict)))


class Section(BaseModel):
    """A mapping in a configuration file: unknown keys are errors listing the known ones; null means
    every default. Fields with ``exclude=True`` are not keys of the file (e.g. the file's own path)."""
    model_config = ConfigDict(extra="forbid")
    KEY_HINTS: ClassVar[dict[str, str]] = {}     # unknown key -> a hint appended to its error

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, raw: Any) -> Any:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise invalid(f"must be a mapping (got {raw!r})")
        known = cls.known_keys()
        for key in raw:
            if key not in known:
                raise invalid(f"is not a known key; known keys: {', '.join(known)}{cls.KEY_HINTS.get(key, '')}", key)
        return raw

    @classmethod
    def known_keys(cls) -> list[str]:
        return [name for name, f in cls.model_fields.items() if not f.exclude]

    def to_dict(self) -> dict:
        """JSON-able, in the file's own form (what a file with these values would say)."""
        return self.model_dump(mode="json")


def why(error: dict) -> str:
    """What a pydantic error asks of the value (its own message when not worded here)."""
    if error["type"] == ERROR_KIND:
        return error["ctx"]["text"]
    template = WHY.get(error["type"])
    return template.format(**error.get("ctx", {})) if template else error["msg"]


def dotted(parts: Sequence[str | int]) -> str:
    """("crosscorpus", 0, "root") -> "crosscorpus[0].root"."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def error_line(err: ValidationError, at: str = "") -> str:
    """The first error of ``err`` as one line: its dotted field (below ``at``), then what is wrong."""
    first = err.errors(include_url=False)[0]
    under = (first.get("ctx") or {}).get("under", ())
    place = dotted(((at,) if at else ()) + tuple(first["loc"]) + tuple(under))
    text = why(first)
    if first["type"] not in (ERROR_KIND, "missing"):
        text += f" (got {first['input']!r})"
    return place + text if not place or text[:1] in ":.[" else f"{place} {text}"
