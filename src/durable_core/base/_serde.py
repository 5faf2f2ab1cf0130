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

from durable_core.base._errors import SerializationError, ValidationError

__all__ = [
    "MAX_JSON_DEPTH",
    "check_text",
    "converter",
    "dumps",
    "json_problem",
    "loads",
    "return_hint",
    "roundtrip",
    "text_problem",
]

MAX_JSON_DEPTH = 64
"""The deepest nesting of lists and objects accepted in event data, step outputs and run
outputs (``{"a": [1]}`` is 2 deep). Deeper values are refused where they enter, so no
recursive code in the engine (JSON, cattrs, CEL) can run out of stack on them."""

converter = make_converter()
"""The cattrs converter used for every value the engine stores. Register hooks on it to
teach it a type of your own (``converter.register_unstructure_hook(...)``)."""

_SCALARS = (str, int, float, bool, type(None))
_encode_str = json.encoder.encode_basestring  # the C implementation when available
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored as UTF-8 text (a lone surrogate), or None if it can."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end]
        return (
            f"it contains a lone surrogate ({bad!a} at index {exc.start}), which is not "
            "valid Unicode text"
        )
    return None


def check_text(text: str, *, what: str, error: type[ValidationError], nul: bool = False) -> None:
    """Raise ``error`` naming ``what`` if ``text`` has a lone surrogate (or, with ``nul``,
    a NUL character: names and ids are stored as database text, which cannot hold one)."""
    problem = text_problem(text)
    if problem is None and nul and "\x00" in text:
        problem = f"it contains a NUL character at index {text.index(chr(0))}"
    if problem is not None:
        raise error(f"{what}: {_short(text)}: {problem}; use valid text", field=what)


def _short(text: str, limit: int = 60) -> str:
    return ascii(text) if len(text) <= limit else ascii(text[:limit]) + "..."


def json_problem(
    value: Any, max_depth: int = MAX_JSON_DEPTH, *, strings: bool = True
) -> str | None:
    """Why a JSON-like value (dicts, lists, tuples, scalars) cannot be stored, or None.

    Checks the nesting depth against ``max_depth`` and, with ``strings``, that every string
    (keys included) is valid Unicode text. Iterative: it never recurses, whatever the depth.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth = pop()
        t = type(item)
        if t is dict or t is list or t is tuple or (
            t is not str and isinstance(item, dict | list | tuple)
        ):
            depth += 1
            if depth > max_depth:
                return f"it is nested more than {max_depth} levels deep (the limit)"
            if isinstance(item, dict):
                for key in item:
                    if strings and type(key) is str and not key.isascii():
                        problem = text_problem(key)
                        if problem is not None:
                            return f"key {_short(key)}: {problem}"
                children: Any = item.values()
            else:
                children = item
            for child in children:
                if type(child) is str:
                    if strings and not child.isascii():
                        problem = text_problem(child)
                        if problem is not None:
                            return f"string {_short(child)}: {problem}"
                elif child is not None and type(child) not in _SCALARS:
                    push((child, depth))
        elif t is str and strings:
            problem = text_problem(item)
            if problem is not None:
                return f"string {_short(item)}: {problem}"
    return None


def dumps(value: Any, *, what: str) -> str:
    """Serialize ``value`` to compact JSON text; ``what`` names it in the error message.

    Raises :class:`SerializationError` for values that are not JSON-serializable, nested more
    than :data:`MAX_JSON_DEPTH` deep, or holding a string that is not valid Unicode (a lone
    surrogate, which ``json.loads`` of external data can produce)."""
    t = type(value)
    if t is int:
        return repr(value)  # (an exact int: its own repr, the cheapest call)
    if t is str:
        text = _encode_str(value)
        if not text.isascii():
            _check_encoded(text, what)
        return text
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    try:
        raw = converter.unstructure(value)
        text = _encoder.encode(raw)
        # JSON text nests at most as deep as it has opening brackets (those inside strings
        # only add to the count), and so at most half its length: only a text with more
        # brackets than the limit needs the walk. (Counting them is done in C, ~50x cheaper.)
        if len(text) > 2 * MAX_JSON_DEPTH and (
            text.count("[") + text.count("{") > MAX_JSON_DEPTH
        ):
            problem = json_problem(raw, strings=False)
            if problem is not None:
                raise SerializationError(
                    f"{what}: cannot be stored: {problem}; return a flatter value", field=what
                )
    except RecursionError:
        raise SerializationError(
            f"{what}: cannot be stored: it is nested too deeply (more than {MAX_JSON_DEPTH} "
            "levels is refused); return a flatter value",
            field=what,
        ) from None
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, SerializationError):
            raise
        raise SerializationError(
            f"{what}: value of type {type(value).__name__} is not JSON-serializable ({exc}); "
            "return dicts, lists, strings, numbers, booleans, None, datetimes, attrs classes "
            "or dataclasses, or register a hook on durable_core.converter",
            field=what,
        ) from None
    if not text.isascii():
        _check_encoded(text, what)
    return text


def _check_encoded(text: str, what: str) -> None:
    problem = text_problem(text)
    if problem is not None:
        raise SerializationError(
            f"{what}: cannot be stored: a string in it is not valid Unicode text: {problem}; "
            "clean external text first, e.g. s.encode('utf-8', 'replace').decode()",
            field=what,
        )


def loads(text: str, hint: Any = None) -> Any:
    """Parse JSON text; structure it into ``hint`` when a type is given."""
    try:
        raw = json.loads(text)
    except RecursionError:
        raise SerializationError(
            "cannot read stored JSON: it is nested too deeply", field="output"
        ) from None
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
