"""Match keys: the equality parts of a CEL condition, as strings an index can look up.

A trigger filter (``on_event(..., if_=...)``) or a ``wait_for_event`` match is evaluated
against every incoming event of its name. Most are equalities on a field of the incoming
event: ``event.data.kind == 'refund'`` (a trigger, the incoming event is ``event``) or
``async.data.order_id == event.data.order_id`` (a wait, the incoming event is ``async`` and
``event`` is the run's own triggering event, known when the wait is registered). Such a part
is a *necessary* condition: when it is not true, the whole condition is not true. So the
condition is analysed once, and:

* :func:`condition_keys` gives the keys a condition (a trigger filter, or a wait with its
  run's triggering event) is stored under: ``path=value`` strings, one per value the part
  accepts (several for ``in [..]``), or ``()`` when no part can be indexed (the condition is
  then tested against every event, as before);
* :func:`event_keys` gives the keys of an incoming event for the paths that are indexed.

A condition can only be true for an event whose keys share one with it; the full condition
is still evaluated on each such candidate, so indexing never changes what matches.

What is indexed: a top-level conjunct (``&&``, parentheses allowed) of the form
``<incoming>.<path> == <known>`` (either side), where ``<incoming>.<path>`` is a chain of
field names on the incoming event and ``<known>`` is a literal (``'x'``, ``42``, ``-1.5``,
``true``, ``null``) or, in a wait, a field path on the run's triggering event; or
``<incoming>.<path> in <known list>`` (a list literal of literals, or a field path on the
triggering event holding a list) with scalar elements. Anything else (``||``,
``!``, ``!=``, comparisons, function calls, macros on the incoming side) is not indexed.

Keys follow the equality of :mod:`durable_core.base._cel` exactly, only coarser: ints,
doubles and bools that CEL holds equal (``1 == 1.0``, ``true == 1``) share a key, while
strings never equal numbers. Values that are not scalars (lists, maps) and NaN give no key;
a part whose known value is not a scalar is not indexed. Long values are hashed, so a key
is never longer than a few hundred characters.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Final

import celpy
import lark

from durable_core.base._cel import compile_expression
from durable_core.base._safelog import safe_logger

__all__ = [
    "MAX_IN_VALUES",
    "MatchPlan",
    "canonical_value",
    "condition_keys",
    "event_keys",
    "key_path",
    "match_plan",
]

MAX_IN_VALUES: Final = 16
"""An ``in [...]`` part with more values than this is not indexed (each value is a key)."""

_MAX_VALUE_CHARS: Final = 200  # a longer canonical value is replaced by its hash

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_log = safe_logger("durable_core.match")


# --------------------------------------------------------------------------- values


def _number_key(value: float) -> str | None:
    if math.isnan(value):
        return None  # NaN equals nothing
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value.is_integer():
        return str(int(value))  # 1.0 == 1 in CEL (compared exactly, as Python does)
    return repr(value)


def canonical_value(value: Any) -> str | None:
    """The key text of a scalar JSON value, or None if it cannot be a key.

    Values CEL holds equal under ``==`` get the same text: an int and a double of the same
    numeric value (compared exactly, as ``_cel`` does), a bool and 1/0 (cel-python's bool is
    an int). Integers outside the signed 64-bit range become doubles, as ``_cel`` passes
    them. Strings are their JSON text (so never equal to a number's). Lists, maps, NaN and
    anything else give None."""
    kind = type(value)
    if kind is str:
        text = json.dumps(value)
    elif kind is bool:
        text = "1" if value else "0"
    elif kind is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            text = str(value)
        else:
            try:
                key = _number_key(float(value))
            except OverflowError:
                return None
            if key is None:
                return None
            text = key
    elif kind is float:
        key = _number_key(value)
        if key is None:
            return None
        text = key
    elif value is None:
        text = "null"
    else:
        return None
    if len(text) > _MAX_VALUE_CHARS:
        text = "#" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return text


def key_path(key: str) -> str:
    """The path part of a key (``data.k`` of ``data.k="x"``)."""
    return key.partition("=")[0]


# --------------------------------------------------------------------------- analysis


@functools.lru_cache(maxsize=1)
def _parser() -> Any:
    """A cel-python environment, used only to parse: the one ``_cel`` built if it has one
    (building cel-python's parser costs about half a second), else our own
    (``celpy.Environment()`` raises the recursion limit for its parse trees; a higher limit
    the application chose is kept)."""
    from durable_core.base import _cel

    shared = getattr(_cel, "_environment", None)
    if callable(shared):
        return shared()
    previous = sys.getrecursionlimit()
    environment = celpy.Environment()
    sys.setrecursionlimit(max(previous, sys.getrecursionlimit()))
    return environment


# A part of a plan: the incoming event's path (dotted), whether it is an ``in`` part, and
# where the accepted value(s) come from: ("const", keys) or ("known", path on the run's own
# triggering event).
_Part = tuple[str, bool, str, Any]


class MatchPlan:
    """What of a condition can be indexed, found once per (condition, kind)."""

    __slots__ = ("parts",)

    def __init__(self, parts: tuple[_Part, ...]) -> None:
        self.parts = parts
        """The indexable conjuncts, ``==`` parts first (fewer keys per wait)."""

    @property
    def indexable(self) -> bool:
        """Whether some part may give keys."""
        return bool(self.parts)


_NO_PLAN: Final = MatchPlan(())


def _only_child(tree: lark.Tree[Any]) -> lark.Tree[Any] | None:
    if len(tree.children) == 1 and isinstance(tree.children[0], lark.Tree):
        return tree.children[0]
    return None


_PASS_THROUGH: Final = frozenset({
    "expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication",
    "unary", "paren_expr",
})


def _unwrap(tree: lark.Tree[Any]) -> lark.Tree[Any]:
    """Down through single-child nodes and parentheses (never into a field access)."""
    while True:
        child = _only_child(tree)
        if child is None:
            return tree
        data = tree.data
        if (data in _PASS_THROUGH or (data == "member" and child.data == "primary")
                or (data == "primary" and child.data == "paren_expr")):
            tree = child
            continue
        return tree


def _conjuncts(tree: lark.Tree[Any], out: list[lark.Tree[Any]]) -> None:
    tree = _unwrap(tree)
    if tree.data == "conditionaland" and len(tree.children) == 2:
        for child in tree.children:
            if isinstance(child, lark.Tree):
                _conjuncts(child, out)
        return
    out.append(tree)


def _path(tree: lark.Tree[Any]) -> tuple[str, ...] | None:
    """``(root, key, ...)`` if ``tree`` is nothing but a field path, else None."""
    tree = _unwrap(tree)
    keys: list[str] = []
    while True:
        if tree.data == "member":
            child = _only_child(tree)
            if child is None:
                return None
            tree = child
            continue
        if tree.data == "member_dot" and len(tree.children) == 2:
            keys.append(str(tree.children[1]))
            inner = tree.children[0]
            if not isinstance(inner, lark.Tree):
                return None
            tree = inner
            continue
        if tree.data == "primary":
            child = _only_child(tree)
            if child is None:
                return None
            if child.data == "ident" and len(child.children) == 1:
                return (str(child.children[0]), *reversed(keys))
            return None
        return None


def _literal(tree: lark.Tree[Any]) -> tuple[bool, Any]:
    """``(True, value)`` if ``tree`` is one literal (``'x'``, ``-1``, ``2.5``, ``true``,
    ``null``) or a list of literals; else ``(False, None)``. Each literal's text is evaluated
    by :mod:`durable_core.base._cel`, so its value is exactly what the condition sees."""
    tree = _unwrap(tree)
    if tree.data == "member":
        child = _only_child(tree)
        if child is None or child.data != "primary":
            return False, None
        tree = child
    if tree.data != "primary" or len(tree.children) != 1:
        return False, None
    node = tree.children[0]
    if not isinstance(node, lark.Tree):
        return False, None
    if node.data == "literal" and len(node.children) == 1:
        token = node.children[0]
        if not isinstance(token, lark.Token) or token.type == "BYTES_LIT":
            return False, None
        try:
            value = compile_expression(str(token), field="match", variables=()).evaluate({})
        except Exception:
            return False, None
        return True, value
    if node.data == "list_lit":
        items: list[Any] = []
        exprlist = _only_child(node)
        if exprlist is None or exprlist.data != "exprlist":
            return False, None
        for item in exprlist.children:
            if not isinstance(item, lark.Tree):
                return False, None
            ok, value = _literal(item)
            if not ok or isinstance(value, list):
                return False, None
            items.append(value)
        return True, items
    return False, None


def _known_keys(value: Any, is_in: bool) -> tuple[str, ...] | None:
    """The keys a known value (or list of values, for ``in``) accepts; None: not indexed."""
    if not is_in:
        key = canonical_value(value)
        return None if key is None else (key,)
    if type(value) is not list or not value or len(value) > MAX_IN_VALUES:
        return None
    keys: list[str] = []
    for item in value:
        key = canonical_value(item)
        if key is None:
            return None
        if key not in keys:
            keys.append(key)
    return tuple(keys)


def _part(
    tree: lark.Tree[Any], incoming: str, known: str | None
) -> _Part | None:
    if tree.data != "relation" or len(tree.children) != 2:
        return None
    op, right = tree.children
    if not isinstance(op, lark.Tree) or not isinstance(right, lark.Tree):
        return None
    if op.data not in ("relation_eq", "relation_in") or len(op.children) != 1:
        return None
    left = op.children[0]
    if not isinstance(left, lark.Tree):
        return None
    is_in = op.data == "relation_in"
    sides = [(left, right)] if is_in else [(left, right), (right, left)]
    for probe, other in sides:
        path = _path(probe)
        if path is None or path[0] != incoming or len(path) < 2:
            continue
        if not all(_IDENT.match(key) for key in path[1:]):
            continue
        dotted = ".".join(path[1:])
        other_path = _path(other)
        if known is not None and other_path is not None and other_path[0] == known:
            return (dotted, is_in, "known", other_path[1:])
        ok, value = _literal(other)
        if ok:
            keys = _known_keys(value, is_in)
            if keys is not None:
                return (dotted, is_in, "const", keys)
    return None


@functools.lru_cache(maxsize=4096)
def match_plan(source: str, incoming: str, known: str | None) -> MatchPlan:
    """The indexable parts of a condition (cached). ``incoming`` is the variable holding the
    incoming event (``event`` in a trigger filter, ``async`` in a wait); ``known`` the one
    known when the condition is registered (``event`` in a wait), or None. A condition that
    does not parse has no plan (it is rejected elsewhere)."""
    try:
        tree = _parser().compile(source)
    except Exception:
        return _NO_PLAN
    try:
        conjuncts: list[lark.Tree[Any]] = []
        _conjuncts(tree, conjuncts)
        parts = [p for p in (_part(c, incoming, known) for c in conjuncts) if p]
    except RecursionError:
        return _NO_PLAN
    parts.sort(key=lambda p: p[1])  # == parts before in parts
    if not parts:
        _log.debug(
            "condition %r has no indexable part (%s.<path> == <value>): every event of its "
            "name is tested against it", source[:200], incoming,
        )
    return MatchPlan(tuple(parts))


def _lookup(value: Any, path: Iterable[str]) -> tuple[bool, Any]:
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return False, None
        value = value[key]
    return True, value


def condition_keys(
    source: str | None, *, incoming: str, known: str | None = None,
    known_value: Any = None,
) -> tuple[str, ...]:
    """The keys a condition is stored under (``()``: not indexed, a candidate for every
    event). For a wait, ``known_value`` is the run's triggering event (a dict, or its JSON
    text, parsed only if a part needs it). The first part that gives keys is used (``==``
    parts before ``in`` parts)."""
    if source is None:
        return ()
    plan = match_plan(source, incoming, known)
    parsed = False
    for dotted, is_in, kind, what in plan.parts:
        if kind == "const":
            return tuple(f"{dotted}={k}" for k in what)
        if not parsed:
            if isinstance(known_value, str):
                try:
                    known_value = json.loads(known_value)
                except ValueError:
                    return ()
            parsed = True
        found, value = _lookup(known_value, what)
        if not found:
            continue
        keys = _known_keys(value, is_in)
        if keys is not None:
            return tuple(f"{dotted}={k}" for k in keys)
    return ()


def event_keys(event: Mapping[str, Any], paths: Iterable[str]) -> list[str]:
    """The keys of an incoming event (its dict form) for the indexed ``paths`` (dotted,
    relative to the event) that it has a scalar value at."""
    out: list[str] = []
    for dotted in paths:
        found, value = _lookup(event, dotted.split("."))
        if found:
            key = canonical_value(value)
            if key is not None:
                out.append(f"{dotted}={key}")
    return out
