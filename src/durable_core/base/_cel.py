"""CEL expressions (trigger filters, ``wait_for_event`` matches, ...), backed by cel-python.

:func:`compile_expression` parses an expression once (cached), rejects syntax errors, unknown
top-level variables and unknown functions, and returns an :class:`Expression` that evaluates
against plain JSON-like Python values.

Expressions in the common subset (field paths, comparisons, logic, arithmetic, ``in``,
``size``, ``has``, string methods) are also compiled to Python closures that evaluate on the
plain values directly (:mod:`durable_core.base._cel_compile`, ~1 us instead of ~200 us);
cel-python stays the reference and runs everything else, with the same results either way.

Differences from raw cel-python, chosen to match Inngest (cel-go over JSON data):

* Mixed int/double comparisons work: ``<``, ``<=``, ``>``, ``>=``, ``==`` and ``!=`` compare
  int, uint and double operands by numeric value (cel-python only compares same-typed
  numbers, and only some mixed pairs); ``==``/``!=`` between otherwise incomparable values
  give false/true (CEL's heterogeneous equality) instead of an error. ``+ - * /`` with one
  int/uint and one double operand compute in double (cel-python accepted ``double + int`` but
  failed on ``int + double``). JSON does not reliably tell ``150`` from ``150.0``, so an
  expression should not depend on which one an event carried.
* Integers outside the signed 64-bit range are passed to CEL as doubles (as JSON decoders
  that read numbers as float64 do).
* Only the parts of the activation an expression reads are converted: when it only follows
  field paths (``event.data.amount``), only those keys are converted, so large events stay
  cheap to match. Any other use of a value (``size(event.data)``, ``event.data[k]``,
  methods, macros) converts that whole value.
* Bounded cost. An expression is at most :data:`MAX_EXPRESSION_CHARS` characters (checked
  before parsing, so a huge literal is refused at once), and one evaluation may spend at most
  :data:`MAX_EVALUATION_COST` units: one per node of the expression evaluated (each element
  a macro such as ``all``/``exists``/``map`` visits counts its whole sub-expression again),
  plus one per 64 elements or characters of every list, map or string a node produces. An
  evaluation over budget stops at once with :class:`InvalidExpressionError` (``matches``
  counts it as no match and logs why).

This module never imports trio or reads the clock.
"""

from __future__ import annotations

import datetime as _dt
import functools
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final

import celpy
import lark
from celpy import celtypes
from celpy.evaluation import CELEvalError, Evaluator, base_functions

from durable_core.base._cel_compile import (
    CelError,
    Fallback,
    FastProgram,
    compile_fast,
    to_plain,
)
from durable_core.base._errors import InvalidExpressionError
from durable_core.base._safelog import safe_logger

__all__ = [
    "DEFAULT_VARIABLES",
    "MAX_EVALUATION_COST",
    "MAX_EXPRESSION_CHARS",
    "Expression",
    "compile_expression",
]

MAX_EXPRESSION_CHARS: Final = 4096
"""The longest CEL expression accepted (characters); longer ones are refused before parsing."""

MAX_EVALUATION_COST: Final = 50_000
"""The cost budget of one evaluation (see the module docstring for what a unit is)."""

_log = safe_logger("durable_core.cel")

#: Variables an expression may use unless told otherwise.
DEFAULT_VARIABLES: Final[tuple[str, ...]] = ("event", "async", "vars")

_CEL_SPEC = "https://github.com/google/cel-spec"

# Identifiers that are not variables but are valid on their own in CEL: type names (for
# ``type(x) == int``) and the root of protobuf well-known type names (``google.protobuf.*``).
_BUILTIN_IDENTIFIERS: Final = frozenset(
    {
        "bool",
        "bytes",
        "double",
        "duration",
        "dyn",
        "google",
        "int",
        "list",
        "map",
        "null_type",
        "string",
        "timestamp",
        "type",
        "uint",
    }
)
# Receiver macros that bind a variable: ``list.exists(x, pred)``; cel-python's ``reduce``
# binds two.
_BINDING_MACROS: Final = {
    "all": 1,
    "exists": 1,
    "exists_one": 1,
    "filter": 1,
    "map": 1,
    "reduce": 2,
}
# Functions and methods cel-python can call; anything else can never evaluate.
_KNOWN_FUNCTIONS: Final = (
    frozenset(base_functions)
    | frozenset(_BINDING_MACROS)
    | {
        "has",
        "dyn",
        "min",
    }
)

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

# --- the CEL environment ----------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    """The shared cel-python environment (the interpreted runner).

    ``celpy.Environment()`` sets ``sys.setrecursionlimit(2500)`` as a side effect (it needs
    deep recursion for its parse trees); we keep that, but never lower a higher limit the
    application chose. The transpiling ``CompiledRunner`` is not used: it emits Python source
    and fails on ``async``, a Python keyword and one of our variable names.
    """
    previous = sys.getrecursionlimit()
    environment = celpy.Environment()
    sys.setrecursionlimit(max(previous, sys.getrecursionlimit()))
    return environment


def _numeric(value: Any) -> bool:
    return isinstance(value, celtypes.IntType | celtypes.UintType | celtypes.DoubleType)


def _as_number(value: Any) -> int | float:
    # Python compares int and float exactly, even beyond 2**53.
    return float(value) if isinstance(value, celtypes.DoubleType) else int(value)


def _ordering(
    compare: Callable[[Any, Any], bool], fallback: Callable[[Any, Any], Any]
) -> Callable[[Any, Any], Any]:
    def operator(left: Any, right: Any) -> Any:
        if _numeric(left) and _numeric(right) and type(left) is not type(right):
            return celtypes.BoolType(compare(_as_number(left), _as_number(right)))
        return fallback(left, right)

    return operator


def _equality(negate: bool) -> Callable[[Any, Any], Any]:
    fallback = base_functions["_!=_" if negate else "_==_"]

    def operator(left: Any, right: Any) -> Any:
        if _numeric(left) and _numeric(right) and type(left) is not type(right):
            equal = _as_number(left) == _as_number(right)
            return celtypes.BoolType(equal != negate)
        try:
            return fallback(left, right)
        except TypeError:
            # Heterogeneous equality: values of unrelated types are not equal.
            return celtypes.BoolType(negate)

    return operator


def _arithmetic(name: str) -> Callable[[Any, Any], Any]:
    base = base_functions[name]

    def operator(left: Any, right: Any) -> Any:
        if _numeric(left) and _numeric(right) and type(left) is not type(right):
            return base(celtypes.DoubleType(float(left)), celtypes.DoubleType(float(right)))
        return base(left, right)

    return operator


_FUNCTION_OVERRIDES: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "_+_": _arithmetic("_+_"),
    "_-_": _arithmetic("_-_"),
    "_*_": _arithmetic("_*_"),
    "_/_": _arithmetic("_/_"),
    "_<_": _ordering(lambda a, b: a < b, base_functions["_<_"]),
    "_<=_": _ordering(lambda a, b: a <= b, base_functions["_<=_"]),
    "_>_": _ordering(lambda a, b: a > b, base_functions["_>_"]),
    "_>=_": _ordering(lambda a, b: a >= b, base_functions["_>=_"]),
    "_==_": _equality(negate=False),
    "_!=_": _equality(negate=True),
}

#: Every function cel-python's program runs with (its base functions, our overrides).
_FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {**base_functions, **_FUNCTION_OVERRIDES}

# --- bounded evaluation ----------------------------------------------------------------------


class _OverBudget(BaseException):
    """Raised inside cel-python when an evaluation runs out of budget.

    A BaseException, so that cel-python's own ``except Exception`` handlers (which turn
    errors into values, e.g. for ``||``) cannot swallow it and keep evaluating."""


class _Budget:
    __slots__ = ("left",)

    def __init__(self, units: int) -> None:
        self.left = units


class _BoundedEvaluator(Evaluator):
    """cel-python's interpreter, charging every node it evaluates to a shared budget."""

    def __init__(self, ast: Any, activation: Any, budget: _Budget) -> None:
        super().__init__(ast, activation)
        self._budget = budget

    def sub_evaluator(self, ast: Any) -> Any:
        # Macros (all, exists, map...) evaluate their body with a sub-evaluator per macro:
        # it draws on the same budget.
        return _BoundedEvaluator(ast, self.activation, self._budget)

    def _visit_tree(self, tree: Any) -> Any:
        budget = self._budget
        budget.left -= 1
        if budget.left < 0:
            raise _OverBudget
        result = super()._visit_tree(tree)
        if isinstance(result, str | bytes | list | dict):
            budget.left -= len(result) >> 6
            if budget.left < 0:
                raise _OverBudget
        return result


# --- static analysis of the parse tree ----------------------------------------------------

# What an expression reads from one variable: ``_WHOLE`` (the entire value) or a dict from
# key to what it reads from that key. Only field-path reads (``event.data.amount``) narrow it.
_WHOLE: Final = None
_Need = dict[str, Any] | None


def _add_path(needs: dict[str, _Need], path: tuple[str, ...]) -> None:
    node: dict[str, _Need] = needs
    for position, key in enumerate(path):
        last = position == len(path) - 1
        if key in node and node[key] is _WHOLE:
            return
        if last:
            node[key] = _WHOLE
            return
        child = node.get(key)
        if child is None:
            child = {}
            node[key] = child
        node = child


def _subtrees(tree: lark.Tree[Any]) -> list[lark.Tree[Any]]:
    return [child for child in tree.children if isinstance(child, lark.Tree)]


def _token_text(tree: lark.Tree[Any], index: int) -> str:
    return str(tree.children[index])


def _member_path(member: lark.Tree[Any]) -> tuple[str, ...] | None:
    """``(name, key, key, ...)`` if ``member`` is ``name.key.key...``, else None."""
    keys: list[str] = []
    node = member
    while True:
        inner = node.children[0]
        if not isinstance(inner, lark.Tree):
            return None
        if inner.data == "member_dot":
            keys.append(_token_text(inner, 1))
            node = inner.children[0]
            continue
        if inner.data == "primary":
            leaf = inner.children[0]
            if isinstance(leaf, lark.Tree) and leaf.data in ("ident", "dot_ident"):
                return (_token_text(leaf, 0), *reversed(keys))
        return None


def _bare_identifier(expr: lark.Tree[Any]) -> str | None:
    """The name if ``expr`` is nothing but an identifier (a macro's bound variable)."""
    node = expr
    while True:
        subtrees = _subtrees(node)
        if node.data == "ident":
            return _token_text(node, 0)
        if len(subtrees) != 1 or len(node.children) != 1:
            return None
        node = subtrees[0]


class _Analysis:
    """Walks a parse tree, collecting variable reads and unknown names, honouring scopes."""

    def __init__(self, variables: tuple[str, ...]) -> None:
        self.variables = frozenset(variables)
        self.needs: dict[str, _Need] = {}
        self.unknown_identifiers: list[str] = []
        self.unknown_functions: list[str] = []

    def reference(self, path: tuple[str, ...], bound: frozenset[str]) -> None:
        name = path[0]
        if name in bound:
            return
        if name in self.variables:
            _add_path(self.needs, path)
        elif name not in _BUILTIN_IDENTIFIERS and name not in self.unknown_identifiers:
            self.unknown_identifiers.append(name)

    def function(self, name: str) -> None:
        if name not in _KNOWN_FUNCTIONS and name not in self.unknown_functions:
            self.unknown_functions.append(name)

    def walk(self, tree: lark.Tree[Any], bound: frozenset[str]) -> None:
        data = tree.data
        if data == "member":
            path = _member_path(tree)
            if path is not None:
                self.reference(path, bound)
                return
            inner = tree.children[0]
            if isinstance(inner, lark.Tree) and inner.data == "member_dot_arg":
                self.walk_call(inner, bound)
                return
        elif data in ("ident", "dot_ident"):  # only reachable outside a member: be safe
            self.reference((_token_text(tree, 0),), bound)
            return
        elif data in ("ident_arg", "dot_ident_arg"):
            self.function(_token_text(tree, 0))
        for child in _subtrees(tree):
            self.walk(child, bound)

    def walk_call(self, call: lark.Tree[Any], bound: frozenset[str]) -> None:
        receiver = call.children[0]
        method = _token_text(call, 1)
        arguments: list[lark.Tree[Any]] = []
        if len(call.children) > 2 and isinstance(call.children[2], lark.Tree):
            arguments = _subtrees(call.children[2])
        if isinstance(receiver, lark.Tree):
            self.walk(receiver, bound)
        self.function(method)
        inner_bound = bound
        binds = _BINDING_MACROS.get(method, 0)
        if binds and len(arguments) > binds:
            names = [_bare_identifier(argument) for argument in arguments[:binds]]
            if all(name is not None for name in names):
                inner_bound = bound | {name for name in names if name is not None}
                arguments = arguments[binds:]
        for argument in arguments:
            self.walk(argument, inner_bound)


# --- conversion between Python and CEL values ---------------------------------------------


class _ConversionError(Exception):
    pass


# cel-python's constructors are pure-Python ``__new__`` methods (IntType's costs ~4.5 us as it
# builds a range-checking wrapper on every call); for values already known to be of the right
# builtin type and range, the builtin constructors give identical objects much faster.
_STRING = celtypes.StringType
_INT = celtypes.IntType
_DOUBLE = celtypes.DoubleType


def _to_cel(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        return str.__new__(_STRING, value)
    if kind is dict:
        return _map_to_cel(value)
    if kind is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return int.__new__(_INT, value)
        try:
            return float.__new__(_DOUBLE, value)
        except OverflowError:
            raise _ConversionError("an integer too large for a double") from None
    if kind is float:
        return float.__new__(_DOUBLE, value)
    if kind is bool:
        return celtypes.BoolType(value)
    if value is None:
        return None
    if kind is list or kind is tuple:
        return celtypes.ListType([_to_cel(item) for item in value])
    return _to_cel_slow(value)


def _to_cel_slow(value: Any) -> Any:
    if isinstance(
        value,
        celtypes.BoolType
        | celtypes.IntType
        | celtypes.UintType
        | celtypes.DoubleType
        | celtypes.StringType
        | celtypes.BytesType
        | celtypes.ListType
        | celtypes.MapType
        | celtypes.TimestampType
        | celtypes.DurationType,
    ):
        return value  # already a CEL value
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return _to_cel(int(value))
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, Mapping):
        return _map_to_cel(value)
    if isinstance(value, list | tuple):
        return celtypes.ListType([_to_cel(item) for item in value])
    if isinstance(value, bytes):
        return celtypes.BytesType(value)
    if isinstance(value, _dt.datetime) and value.utcoffset() is not None:
        return celtypes.TimestampType(value)
    if isinstance(value, _dt.timedelta):
        return celtypes.DurationType(value)
    raise _ConversionError(f"a value of type {type(value).__name__}")


def _map_to_cel(value: Mapping[Any, Any]) -> Any:
    result = celtypes.MapType()
    for key, item in value.items():
        if type(key) is str:
            cel_key: Any = str.__new__(_STRING, key)
        elif isinstance(key, str | int):  # bool is an int, and a valid CEL key
            cel_key = _to_cel(key)
        else:
            raise _ConversionError(f"a map key of type {type(key).__name__}")
        dict.__setitem__(result, cel_key, _to_cel(item))
    return result


def _needed_to_cel(value: Any, need: _Need) -> Any:
    """Convert only the parts of ``value`` described by ``need``."""
    if need is _WHOLE or not isinstance(value, Mapping):
        return _to_cel(value)
    result = celtypes.MapType()
    for key, sub_need in need.items():
        if key in value:
            converted = _needed_to_cel(value[key], sub_need)
            dict.__setitem__(result, str.__new__(_STRING, key), converted)
    return result


def _from_cel(value: Any) -> Any:
    if value is None or isinstance(value, celtypes.NullType):
        return None
    if isinstance(value, CELEvalError):
        raise value
    if isinstance(value, celtypes.BoolType | bool):  # BoolType subclasses int, not bool
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, Mapping):
        return {_from_cel(key): _from_cel(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_from_cel(item) for item in value]
    if isinstance(value, _dt.datetime):
        # Plain datetime in UTC (cel-python uses its own tzinfo class).
        return _dt.datetime.combine(value.date(), value.timetz()).astimezone(_dt.UTC)
    if isinstance(value, _dt.timedelta):
        return _dt.timedelta(
            days=value.days, seconds=value.seconds, microseconds=value.microseconds
        )
    if isinstance(value, type):  # type(x) gives a class; return its CEL name
        return _CEL_TYPE_NAMES.get(value, value.__name__)
    return value


_CEL_TYPE_NAMES: Final[dict[type, str]] = {
    celtypes.BoolType: "bool",
    celtypes.BytesType: "bytes",
    celtypes.DoubleType: "double",
    celtypes.DurationType: "google.protobuf.Duration",
    celtypes.IntType: "int",
    celtypes.ListType: "list",
    celtypes.MapType: "map",
    celtypes.StringType: "string",
    celtypes.TimestampType: "google.protobuf.Timestamp",
    celtypes.TypeType: "type",
    celtypes.UintType: "uint",
    type(None): "null_type",
}


# --- compilation ---------------------------------------------------------------------------


class _CompileFailure(Exception):
    """Why an expression was rejected (the caller adds the field and the advice)."""


class _Compiled:
    __slots__ = ("fast", "needs", "program")

    def __init__(
        self, program: Any, needs: dict[str, _Need], fast: FastProgram | None = None
    ) -> None:
        self.program = program
        self.needs = needs
        #: The expression compiled to Python closures, or None if it is outside the
        #: compiled subset (see :mod:`durable_core.base._cel_compile`).
        self.fast = fast

    def evaluate(self, context: dict[str, Any], budget: int) -> Any:
        """Evaluate within ``budget`` units (raises _OverBudget past it)."""
        program = self.program
        evaluator = _BoundedEvaluator(program.ast, program.new_activation(), _Budget(budget))
        return evaluator.evaluate(context)


def _syntax_error_detail(source: str, error: Exception) -> str:
    line = getattr(error, "line", None)
    column = getattr(error, "column", None)
    if not isinstance(line, int) or not isinstance(column, int):
        first = str(error).strip().splitlines()
        return f"syntax error: {first[0] if first else type(error).__name__}"
    lines = source.splitlines() or [""]
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    near = text[column - 1 : column + 9].strip()
    where = f"near {near!r}" if near else "at the end of the expression"
    return f"syntax error at line {line}, column {column}, {where}"


@functools.lru_cache(maxsize=1024)
def _compile(source: str, variables: tuple[str, ...]) -> _Compiled:
    environment = _environment()
    try:
        tree = environment.compile(source)
    except RecursionError:
        raise _CompileFailure("the expression is nested too deeply") from None
    except Exception as error:  # CELParseError, or lark errors it does not wrap
        raise _CompileFailure(_syntax_error_detail(source, error)) from None
    analysis = _Analysis(variables)
    try:
        analysis.walk(tree, frozenset())
    except RecursionError:
        raise _CompileFailure("the expression is nested too deeply") from None
    allowed = ", ".join(variables) if variables else "none"
    if analysis.unknown_identifiers:
        names = ", ".join(analysis.unknown_identifiers)
        raise _CompileFailure(
            f"unknown variable(s) {names}; this expression may only use: {allowed}"
        )
    if analysis.unknown_functions:
        names = ", ".join(analysis.unknown_functions)
        raise _CompileFailure(f"unknown function(s) {names}")
    try:
        program = environment.program(tree, functions=_FUNCTION_OVERRIDES)
    except Exception as error:
        raise _CompileFailure(f"cannot be prepared for evaluation: {error}") from None
    fast = compile_fast(tree, variables, analysis.needs, _FUNCTIONS, MAX_EVALUATION_COST)
    return _Compiled(program, analysis.needs, fast)


def compile_expression(
    source: str, *, field: str, variables: tuple[str, ...] = DEFAULT_VARIABLES
) -> Expression:
    """Compile a CEL expression once (cached by ``(source, variables)``).

    ``variables`` are the top-level names the expression may use: a trigger filter may only
    use ``("event",)``, a ``wait_for_event`` match ``("event", "async")``. Raises
    :class:`InvalidExpressionError` naming ``field`` for syntax errors, unknown variables and
    unknown functions.
    """
    if not isinstance(source, str):
        raise InvalidExpressionError(
            f"{field}: a CEL expression must be a string, not {type(source).__name__}; "
            f'write e.g. "event.data.amount > 100", see {_CEL_SPEC}',
            field=field,
        )
    variables = tuple(variables)
    if len(source) > MAX_EXPRESSION_CHARS:
        raise InvalidExpressionError(
            f"{field}: the CEL expression {_quote(source, 60)} is {len(source)} characters, over "
            f"the limit of {MAX_EXPRESSION_CHARS}; keep expressions short (match on a field "
            "or an id, not on a literal list of values)",
            field=field,
        )
    try:
        compiled = _compile(source, variables)
    except _CompileFailure as failure:
        raise InvalidExpressionError(
            f"{field}: invalid CEL expression {_quote(source)} ({failure}); fix the expression, "
            f"see {_CEL_SPEC}",
            field=field,
        ) from None
    return Expression(source, field, compiled)


class Expression:
    """A compiled CEL expression. Build it with :func:`compile_expression`."""

    __slots__ = ("_compiled", "field", "source")

    def __init__(self, source: str, field: str, compiled: _Compiled) -> None:
        self.source = source
        self.field = field
        self._compiled = compiled

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def evaluate(self, activation: Mapping[str, Any]) -> Any:
        """Evaluate against ``activation`` (variable name to a JSON-like Python value).

        Values may be dicts, lists, tuples, str, int, float, bool and None (CEL values pass
        through unchanged). The result is converted back to plain Python values. Raises
        :class:`InvalidExpressionError` if evaluation fails (a missing key, a type error...)
        or a value cannot be converted.
        """
        fast = self._compiled.fast
        if fast is not None:
            try:
                return to_plain(fast.run(activation))
            except (CelError, Fallback):
                pass  # cel-python decides, and words the error exactly
        context = self._context(activation)
        try:
            return _from_cel(self._compiled.evaluate(context, MAX_EVALUATION_COST))
        except _OverBudget:
            raise self._over_budget() from None
        except Exception as error:  # CELEvalError, or an internal cel-python error
            raise InvalidExpressionError(
                f"{self.field}: evaluating CEL expression {_quote(self.source)} failed "
                f"({_describe(error)}); check that the fields it reads exist (guard them with "
                "has(...)) and have the types it expects",
                field=self.field,
            ) from None

    def matches(self, activation: Mapping[str, Any]) -> bool:
        """True only if the expression evaluates to boolean true.

        Evaluation errors (a missing key, a type mismatch) and non-boolean results count as
        no match, as in Inngest; so does an evaluation over the cost budget (logged as a
        warning on ``durable_core.cel``, naming the expression). Values that cannot be
        converted to CEL still raise :class:`InvalidExpressionError`.
        """
        fast = self._compiled.fast
        if fast is not None:
            try:
                return fast.run(activation) is True
            except CelError:
                return False
            except Fallback:
                pass
        context = self._context(activation)
        try:
            result = self._compiled.evaluate(context, MAX_EVALUATION_COST)
        except _OverBudget:
            _log.warning("%s", self._over_budget())
            return False
        except RecursionError:
            _log.warning("%s: CEL expression %s: the data is nested too deeply; no match",
                         self.field, _quote(self.source))
            return False
        except Exception:  # CELEvalError, or an internal cel-python error: no match
            return False
        # cel-python's BoolType subclasses int, not bool.
        return isinstance(result, celtypes.BoolType | bool) and bool(result)

    def _over_budget(self) -> InvalidExpressionError:
        return _over_budget_error(self)

    def _context(self, activation: Mapping[str, Any]) -> dict[str, Any]:
        """Convert the variables the expression reads (and only the parts it reads)."""
        context: dict[str, Any] = {}
        for name, need in self._compiled.needs.items():
            if name in activation:
                try:
                    context[name] = _needed_to_cel(activation[name], need)
                except RecursionError:
                    raise InvalidExpressionError(
                        f"{self.field}: cannot pass {name!r} to the CEL expression "
                        f"{_quote(self.source)}: it is nested too deeply",
                        field=self.field,
                    ) from None
                except _ConversionError as error:
                    raise InvalidExpressionError(
                        f"{self.field}: cannot pass {error} inside {name!r} to the CEL "
                        f"expression {_quote(self.source)}; use JSON-like values (dict, list, str, "
                        "int, float, bool, None)",
                        field=self.field,
                    ) from None
        return context


def _over_budget_error(expression: Expression) -> InvalidExpressionError:
    return InvalidExpressionError(
        f"{expression.field}: evaluating CEL expression {_quote(expression.source)} was "
        f"stopped: it went over the cost budget of {MAX_EVALUATION_COST} units (nested loops "
        "over large lists?); simplify the expression or send smaller lists",
        field=expression.field,
    )


def _quote(source: str, limit: int = 200) -> str:
    """``repr(source)``, shortened for error messages."""
    if len(source) <= limit:
        return repr(source)
    return repr(source[:limit]) + f"... ({len(source)} characters)"


def _describe(error: Exception) -> str:
    if isinstance(error, CELEvalError) and error.args:
        return str(error.args[0])
    return f"{type(error).__name__}: {error}"
