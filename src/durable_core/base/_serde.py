"""JSON serialization through one cattrs converter. JSON only, never pickle.

Step outputs, run outputs and event data are stored as JSON text. attrs classes, dataclasses,
datetimes, enums, sets and tuples are unstructured to JSON by the converter; when a step body
has a return annotation, the recorded JSON is structured back into that type, so the value
orchestration code sees is the same on the first execution and on every replay.
"""

from __future__ import annotations

import contextlib
import json
import typing
import weakref
from collections.abc import Callable
from types import UnionType
from typing import Any

from cattrs.preconf.json import make_converter

from durable_core.base._errors import SerializationError

__all__ = ["converter", "dumps", "loads", "return_hint", "roundtrip"]

converter = make_converter()
"""The cattrs converter used for every value the engine stores. Register hooks on it to
teach it a type of your own (``converter.register_unstructure_hook(...)``)."""

_SCALARS = (str, int, float, bool, type(None))
_encode_str = json.encoder.encode_basestring  # the C implementation when available
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(value: Any, *, what: str) -> str:
    """Serialize ``value`` to compact JSON text; ``what`` names it in the error message."""
    t = type(value)
    if t is int:
        return int.__repr__(value)
    if t is str:
        return _encode_str(value)
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    try:
        return _encoder.encode(converter.unstructure(value))
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(
            f"{what}: value of type {type(value).__name__} is not JSON-serializable ({exc}); "
            "return dicts, lists, strings, numbers, booleans, None, datetimes, attrs classes "
            "or dataclasses, or register a hook on durable_core.converter",
            field=what,
        ) from None


def loads(text: str, hint: Any = None) -> Any:
    """Parse JSON text; structure it into ``hint`` when a type is given."""
    raw = json.loads(text)
    if hint is None or hint is Any or (type(raw) in _SCALARS and hint in _SCALARS):
        return raw
    try:
        return converter.structure(raw, hint)
    except Exception as exc:  # cattrs raises many exception types
        raise SerializationError(
            f"cannot rebuild a {hint!r} from stored JSON ({exc})", field="output"
        ) from None


def roundtrip(value: Any, text: str, hint: Any) -> Any:
    """What a replay would produce for ``value`` recorded as ``text``.

    Scalars come back unchanged; everything else is rebuilt from its JSON, so live runs and
    replays see identical values.
    """
    if type(value) in _SCALARS and type(value) is not float:
        return value
    return loads(text, hint)


_HINTS: weakref.WeakKeyDictionary[Callable[..., Any], Any] = weakref.WeakKeyDictionary()


def return_hint(fn: Callable[..., Any]) -> Any:
    """The return annotation of ``fn`` to structure its recorded output into, or None."""
    try:
        return _HINTS[fn]
    except (KeyError, TypeError):
        pass
    try:
        hint: Any = typing.get_type_hints(fn).get("return")
    except Exception:
        hint = None
    if hint is type(None) or hint is Any or typing.get_origin(hint) in (typing.Union, UnionType):
        # Unions and Any give no single type to rebuild: keep the JSON value as it is.
        hint = None
    with contextlib.suppress(TypeError):
        _HINTS[fn] = hint
    return hint
