"""JSON serialization through cattrs converters. JSON only, never pickle.

Step outputs, run outputs and event data are stored as JSON text. A value is stored one of
two ways, and what the code sees afterwards is the same live and on every replay:

- **Annotated** (a step body ``-> T``, a function ``async def fn(ctx) -> T``): the value is
  unstructured by the app's converter *as* ``T`` and the JSON is structured back into a
  ``T``: attrs classes, dataclasses, datetimes, ``Decimal``, ``UUID``, ``bytes``, sets,
  enums, tuples, unions cattrs can tell apart, pydantic models...
- **Unannotated** (or ``-> Any``): the value must be plain JSON (dicts with string keys,
  lists, strings, numbers, booleans, None), which comes back as it went in.

Either way the value is encoded, decoded and compared with the original when it is
recorded; a value that would come back different (a tuple as a list, a ``datetime`` as a
string, an int key as a string) is refused with a :class:`SerializationError` naming the
step, the type and the fix, instead of being silently converted. Plain ints, strings,
booleans and None skip all of this (they cannot change).

Every :class:`~durable_core.App` has its own converter (``App(id, converter=...)``,
``app.converter``), made by :func:`make_converter` unless given one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import decimal
import functools
import json
import sys
import types
import typing
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import attrs
from cattrs import Converter
from cattrs.preconf.json import make_converter as _json_converter

from durable_core.base._errors import SerializationError, ValidationError

__all__ = [
    "HINT_CACHE",
    "MAX_JSON_DEPTH",
    "Unresolvable",
    "check_text",
    "converter",
    "dumps",
    "encode_output",
    "json_problem",
    "loads",
    "make_converter",
    "return_hint",
    "text_problem",
]

MAX_JSON_DEPTH = 64
"""The deepest nesting of lists and objects accepted in event data, step outputs and run
outputs (``{"a": [1]}`` is 2 deep). Deeper values are refused where they enter, so no
recursive code in the engine (JSON, cattrs, CEL) can run out of stack on them."""


def _is_pydantic_model(t: Any) -> bool:
    # pydantic is optional: a type can only be a pydantic model if pydantic was imported.
    pydantic = sys.modules.get("pydantic")
    return (
        pydantic is not None and isinstance(t, type) and issubclass(t, pydantic.BaseModel)
    )


def _decimal(raw: Any, _t: Any) -> decimal.Decimal:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(f"expected a decimal string, got {raw!r}")
    return decimal.Decimal(raw if isinstance(raw, str | int) else repr(raw))


def _uuid(raw: Any, _t: Any) -> uuid.UUID:
    if not isinstance(raw, str):
        raise ValueError(f"expected a UUID string, got {raw!r}")
    return uuid.UUID(raw)


def _time(raw: Any, _t: Any) -> dt.time:
    if not isinstance(raw, str):
        raise ValueError(f"expected an ISO time string, got {raw!r}")
    return dt.time.fromisoformat(raw)


def _timedelta(raw: Any, _t: Any) -> dt.timedelta:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"expected a number of seconds, got {raw!r}")
    return dt.timedelta(seconds=raw)


def make_converter(**kwargs: Any) -> Converter:
    """A new cattrs converter with durable-core's hooks: cattrs' JSON preset (datetimes and
    dates as ISO strings, ``bytes`` as base85, sets as lists, enums by value, attrs classes
    and dataclasses as objects) plus ``Decimal`` (a string, exact), ``UUID`` (a string),
    ``time`` (ISO), ``timedelta`` (seconds) and pydantic models (``model_dump(mode="json")``
    / ``model_validate``) when pydantic is installed.

    Pass it to ``App(id, converter=...)`` after registering your own hooks on it; keyword
    arguments go to the :class:`cattrs.Converter` (``forbid_extra_keys=True``...)."""
    conv = _json_converter(**kwargs)
    conv.register_unstructure_hook(decimal.Decimal, str)
    conv.register_structure_hook(decimal.Decimal, _decimal)
    conv.register_unstructure_hook(uuid.UUID, str)
    conv.register_structure_hook(uuid.UUID, _uuid)
    conv.register_unstructure_hook(dt.time, dt.time.isoformat)
    conv.register_structure_hook(dt.time, _time)
    conv.register_unstructure_hook(dt.timedelta, dt.timedelta.total_seconds)
    conv.register_structure_hook(dt.timedelta, _timedelta)
    conv.register_unstructure_hook_func(
        _is_pydantic_model, lambda model: model.model_dump(mode="json")
    )
    conv.register_structure_hook_func(
        _is_pydantic_model, lambda raw, t: t.model_validate(raw)
    )
    return conv


converter = make_converter()
"""The shared fallback converter (formerly the one converter of the process). Every
:class:`~durable_core.App` has its own (``app.converter``): register hooks there. An app's
own converter defers to this one only for a type it has no hook for itself, so hooks
registered here before apps had converters keep working."""


def app_converter() -> Converter:
    """The converter of an :class:`~durable_core.App` made without ``converter=``: its own
    (hooks registered on it stay in the app), deferring types it does not know to
    :data:`converter`."""
    return make_converter(
        unstructure_fallback_factory=lambda t: converter.get_unstructure_hook(t),
        structure_fallback_factory=lambda t: converter.get_structure_hook(t),
    )


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


def dumps(value: Any, *, what: str, conv: Converter | None = None) -> str:
    """Serialize ``value`` to compact JSON text through ``conv`` (the shared
    :data:`converter` by default); ``what`` names it in the error message.

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
        raw = (converter if conv is None else conv).unstructure(value)
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
            "or dataclasses, or register a hook on the app's converter (app.converter)",
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


def loads(text: str, hint: Any = None, conv: Converter | None = None) -> Any:
    """Parse JSON text; structure it into ``hint`` through ``conv`` (the shared
    :data:`converter` by default) when a type is given."""
    try:
        raw = json.loads(text)
    except RecursionError:
        raise SerializationError(
            "cannot read stored JSON: it is nested too deeply", field="output"
        ) from None
    if (hint is None or hint is Any or type(hint) is Unresolvable
            or (type(raw) in _SCALARS and hint in _SCALARS)):
        return raw  # (under an unresolvable annotation only plain JSON was recorded)
    try:
        return (converter if conv is None else conv).structure(raw, hint)
    except Exception as exc:  # cattrs raises many exception types
        raise SerializationError(
            f"cannot rebuild a {_type_name(hint)} from stored JSON ({_cattrs_message(exc)})",
            field="output",
        ) from None


def encode_output(
    value: Any, hint: Any, conv: Converter, *, what: str, owner: str = "step body"
) -> tuple[str, Any]:
    """Record ``value`` (a step body's or a function's return value): its JSON text, and
    the value the code sees, which is what a replay rebuilds from that text.

    ``hint`` is the return annotation (:func:`return_hint`) or None. With a hint the value
    is unstructured by ``conv`` as the hint and structured back; without one it must be
    plain JSON. Either way the value that comes back must equal ``value`` (and, at the top,
    have its type): otherwise :class:`SerializationError` says what would change, where,
    and how to fix it. ``what`` names the value (``step 'x' output``), ``owner`` what to
    annotate (``step body``, ``function``).
    """
    if type(hint) is Unresolvable:
        # Plain JSON needs no type to come back as it was; anything else does.
        try:
            return encode_output(value, None, conv, what=what, owner=owner)
        except SerializationError:
            raise hint.error(what) from None
    if hint is None:
        try:
            # No converter: the json module's own types, so anything else (a datetime, a
            # set, bytes, an attrs class...) is refused here rather than converted.
            text = _encoder.encode(value)
        except Exception as exc:  # TypeError, ValueError... or a subclass's own __repr__
            raise _not_json(value, what, exc, owner) from None
    else:
        try:
            text = _encoder.encode(conv.unstructure(value, unstructure_as=hint))
        except RecursionError:
            raise _too_deep(what) from None
        except Exception as exc:  # cattrs and hooks raise many exception types
            raise SerializationError(
                f"{what}: cannot store a {_type_name(type(value))} as the return type "
                f"{_type_name(hint)} ({_cattrs_message(exc)}); return a "
                f"{_type_name(hint)}, or register hooks for the type on the app's "
                "converter (app.converter.register_unstructure_hook / "
                "register_structure_hook)",
                field="output",
            ) from None
    if len(text) > 2 * MAX_JSON_DEPTH and (
        text.count("[") + text.count("{") > MAX_JSON_DEPTH
    ):
        # (See dumps: only a text with more brackets than the limit can be too deep.)
        try:
            nested = json.loads(text)
        except RecursionError:
            raise _too_deep(what) from None
        problem = json_problem(nested, strings=False)
        if problem is not None:
            raise SerializationError(
                f"{what}: cannot be stored: {problem}; return a flatter value", field=what
            )
    if not text.isascii():
        _check_encoded(text, what)
    back = json.loads(text)
    if hint is not None:
        try:
            back = conv.structure(back, hint)
        except Exception as exc:  # cattrs raises many exception types
            raise SerializationError(
                f"{what}: a {_type_name(type(value))} stored as {_type_name(hint)} cannot "
                f"be rebuilt from its JSON ({_cattrs_message(exc)}); annotate the body with "
                "one type cattrs can structure, or register a structure hook for it on the "
                "app's converter",
                field="output",
            ) from None
    try:
        same = bool(back == value)
    except Exception:  # an __eq__ that raises or answers no bool (an array): look closer
        same = False
    if same and (hint is not None or type(back) is type(value)):
        # (Under an annotation the value read back is what the annotation says: a
        # defaultdict returned as ``-> dict[str, int]`` comes back a dict, equal to it.)
        return text, back
    try:
        change = _change(value, back, "")
    except Exception:
        change = None  # values that cannot be compared: trust the hooks that made them
    if change is None:
        return text, back  # only objects without value equality differ: trust their hooks
    where, before, after = change
    at = f" at {where}" if where else ""
    fix = (
        f"annotate the {owner}'s return type ({_arrow(type(value))}) so it is rebuilt as "
        "what it was"
        if hint is None else
        f"annotate the part that changes with its real type instead of "
        f"{_type_name(hint)}, or register hooks for it on the app's converter"
    )
    raise SerializationError(
        f"{what}: the value would change type when stored as JSON and read back on "
        f"replay: {before}{at} would come back as {after}; {fix}",
        field="output",
    )


def _type_name(t: Any) -> str:
    if isinstance(t, type) and not typing.get_args(t):
        return t.__qualname__ if t.__module__ in ("builtins",) else (
            f"{t.__module__}.{t.__qualname__}" if t.__module__ in (
                "datetime", "decimal", "uuid") else t.__qualname__
        )
    return repr(t).replace("typing.", "")


def _cattrs_message(exc: BaseException) -> str:
    subs = getattr(exc, "exceptions", None)
    if subs:
        return "; ".join(_cattrs_message(e) for e in subs[:3])
    return f"{type(exc).__name__}: {exc}"


def _a(name: str) -> str:
    return f"an {name}" if name[:1] in "aeioAEIO" else f"a {name}"


def _arrow(t: type) -> str:
    name = _type_name(t)
    return f"-> {name}[...]" if t in (set, frozenset, list, tuple, dict) else f"-> {name}"


def _too_deep(what: str) -> SerializationError:
    return SerializationError(
        f"{what}: cannot be stored: it is nested too deeply (more than {MAX_JSON_DEPTH} "
        "levels is refused); return a flatter value",
        field=what,
    )


def _not_json(value: Any, what: str, exc: BaseException, owner: str) -> SerializationError:
    """The refusal of an unannotated value the json module cannot encode."""
    if isinstance(exc, RecursionError):
        return _too_deep(what)
    if isinstance(exc, ValueError) and "Circular" in str(exc):
        return SerializationError(
            f"{what}: cannot be stored: the {_type_name(type(value))} contains itself "
            "(a circular reference); return a tree of values",
            field=what,
        )
    if isinstance(exc, ValueError):
        return SerializationError(
            f"{what}: value of type {_type_name(type(value))} is not JSON-serializable "
            f"({exc}); return finite numbers",
            field=what,
        )
    bad, is_key = _first_foreign(value)
    name = _type_name(type(bad))
    inside = "" if bad is value else (
        f" ({_a(name)} {'key' if is_key else 'value'} inside the {_type_name(type(value))})"
    )
    return SerializationError(
        f"{what}: without a return annotation a value must be plain JSON (dicts with string "
        f"keys, lists, strings, numbers, booleans, None), got {_a(_type_name(type(value)))}"
        f"{inside}; annotate the {owner}'s return type ({_arrow(type(value))}) so it is "
        "stored and rebuilt as that type (register hooks on the app's converter for a type "
        "cattrs does not know)",
        field="output",
    )


_PLAIN = (str, int, float, bool, type(None), dict, list, tuple)


def _first_foreign(value: Any) -> tuple[Any, bool]:
    """The first value (or key: then True) inside ``value`` the json module cannot encode,
    else ``value``."""
    stack = [value]
    seen = 0
    while stack and seen < 100_000:
        item = stack.pop()
        seen += 1
        if not isinstance(item, _PLAIN):
            return item, False
        if isinstance(item, dict):
            for key in item:
                if not isinstance(key, str | int | float | bool | None):
                    return key, True
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(reversed(item))
    return value, False


def _change(before: Any, after: Any, path: str) -> tuple[str, str, str] | None:
    """Where ``after`` (read back from JSON) first differs from ``before``: ``(path, what
    it was, what it becomes)``; None if they differ only in objects compared by identity
    (classes without ``__eq__``, which cannot be compared)."""
    tb, ta = type(before), type(after)
    if isinstance(before, dict) and isinstance(after, dict):
        for key, item in before.items():
            if key not in after:
                back = json.loads(json.dumps({key: None}))
                new = next(iter(back))
                return (path, f"the key {key!r} ({_type_name(type(key))})",
                        f"the key {new!r} ({_type_name(type(new))})")
            change = _change(item, after[key], f"{path}[{key!r}]")
            if change is not None:
                return change
        return None if tb is ta else (path, _describe(before), _describe(after))
    if (isinstance(before, list) and isinstance(after, list)) or (
        isinstance(before, tuple) and isinstance(after, tuple)
    ):
        if len(before) != len(after):
            return path, f"{len(before)} items", f"{len(after)} items"
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            change = _change(b, a, f"{path}[{i}]")
            if change is not None:
                return change
        return None if tb is ta else (path, _describe(before), _describe(after))
    if tb is not ta:
        return path, _describe(before), _describe(after)
    if attrs.has(tb) or dataclasses.is_dataclass(tb):
        names = ([f.name for f in attrs.fields(tb)] if attrs.has(tb)
                 else [f.name for f in dataclasses.fields(before)])
        for name in names:
            change = _change(getattr(before, name), getattr(after, name), f"{path}.{name}")
            if change is not None:
                return change
        return None
    if getattr(tb, "__eq__", None) is object.__eq__:
        return None  # no value equality to compare with
    if before == after:
        return None
    return path, _describe(before), _describe(after)


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{_a(_type_name(type(value)))} ({text})"


_HINTS: weakref.WeakKeyDictionary[Callable[..., Any], Any] = weakref.WeakKeyDictionary()


class Unresolvable:
    """A return annotation that does not resolve to a type (a name not defined in the
    function's module, under ``from __future__ import annotations``). A plain JSON value is
    recorded under it as without an annotation; any other value is refused with
    ``problem``, rather than silently stored untyped."""

    __slots__ = ("annotation", "problem")

    def __init__(self, annotation: object, problem: str) -> None:
        self.annotation = annotation
        self.problem = problem

    def error(self, what: str) -> SerializationError:
        """The refusal, naming ``what``."""
        return SerializationError(
            f"{what}: the value is not plain JSON and the return annotation "
            f"{self.annotation!r} that would rebuild it does not resolve to a type "
            f"({self.problem}); define the type at module level (annotations are evaluated "
            "in the function's module), or import it there",
            field="output",
        )


def _probe(target: Any, annotation: Any) -> Any:
    """A function with only ``annotation`` as its return annotation, resolved in the
    globals of ``target`` (and its closure's names)."""

    def probe() -> None:
        pass

    code = getattr(target, "__code__", None)
    cells = getattr(target, "__closure__", None) or ()
    names = code.co_freevars if code is not None else ()
    local: dict[str, Any] = {}
    for name, cell in zip(names, cells, strict=False):
        with contextlib.suppress(ValueError):  # an empty cell
            local[name] = cell.cell_contents
    shim = types.FunctionType(probe.__code__, {
        **getattr(target, "__globals__", {}), **local})
    shim.__annotations__ = {"return": annotation}
    return shim


_MISSING: Any = object()
_FunctionType = types.FunctionType
HINT_CACHE: dict[Any, Any] = {}
"""Return hints of plain functions without a closure (module-level bodies, the common
case), by function: one dict look-up per step on the hot path (``RunStep.succeeded``
reads it directly). Bounded: cleared when it holds :data:`_HINT_CACHE_MAX` functions
(so functions made over and over, without a closure, cannot grow it for ever)."""
_HINT_CACHE_MAX = 4096


def return_hint(fn: Callable[..., Any]) -> Any:
    """The return annotation of ``fn`` (of the function a ``functools.partial`` or a bound
    method wraps) to store its output as and rebuild it into, or None (no annotation,
    ``-> Any``, ``-> None``: the output must then be plain JSON); an :class:`Unresolvable`
    for an annotation that names no type. Unions and ``Optional`` are kept: cattrs
    structures those it can tell apart, and refuses the others the first time a value is
    recorded."""
    try:
        hint = HINT_CACHE.get(fn, _MISSING)
    except TypeError:  # an unhashable callable
        return _resolve_hint(fn)
    if hint is not _MISSING:
        return hint
    if isinstance(fn, types.MethodType):
        return return_hint(fn.__func__)  # (not cached itself: it would keep its object)
    if type(fn) is _FunctionType and fn.__closure__ is None:
        hint = _resolve_hint(fn)
        if len(HINT_CACHE) >= _HINT_CACHE_MAX:
            HINT_CACHE.clear()
        HINT_CACHE[fn] = hint
        return hint
    # Closures (often made anew for each step), partials, callable objects: by weak
    # reference, so the cache keeps nothing alive.
    try:
        return _HINTS[fn]
    except (KeyError, TypeError):
        pass
    hint = _resolve_hint(fn)
    with contextlib.suppress(TypeError):
        _HINTS[fn] = hint
    return hint


def _resolve_hint(fn: Callable[..., Any]) -> Any:
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    raw = getattr(target, "__annotations__", None)
    written = raw.get("return") if isinstance(raw, dict) else None
    hint: Any = written
    if isinstance(written, str) or (written is not None and typing.get_args(written)):
        # Resolve the return annotation alone: a parameter's annotation that does not
        # resolve (``ctx: Context`` imported inside a function) is no concern of ours.
        probe = _probe(target, written)
        try:
            hint = typing.get_type_hints(probe).get("return")
        except Exception as exc:
            hint = Unresolvable(written, f"{type(exc).__name__}: {exc}")
    if hint is type(None) or hint is Any or hint is object:
        hint = None
    return hint

