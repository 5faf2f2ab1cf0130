"""CEL compiled to Python closures: the hot path of :mod:`durable_core.base._cel`.

cel-python (the reference) interprets its lark parse tree on every call and first converts the
activation into its own value classes (``celtypes``); a simple condition costs about 200 us.
:func:`compile_fast` turns the same parse tree, once, into nested Python closures that evaluate
directly on the plain JSON values of the activation (dict, list, str, int, float, bool, None):
a simple comparison costs about 1 us.

The compiled program must give what cel-python gives -- the same value, or an error of the same
kind (the Python exception class cel-python records in its ``CELEvalError``) -- for every
expression and activation. Three rules make that hold:

* **A subset, decided at compile time.** Field paths, ``x[i]``, literals (int, double, string,
  bool, null, lists, maps with string-literal keys), ``== != < <= > >= in``, ``&& || ! ?:``,
  ``+ - * / %``, unary ``-``, ``size``, ``has``, ``dyn`` and the string methods
  ``startsWith``, ``endsWith``, ``contains``, ``matches``. Anything else (macros such as
  ``exists``/``map``, conversions such as ``int()``, ``type()``, timestamps, uint and bytes
  literals, ...) makes :func:`compile_fast` return None: that expression always runs on
  cel-python.
* **Fast paths only where the semantics are plain.** Each operator handles the common type
  pairs inline (``str == str``, ``int < double``, ``str in list`` ...), following cel-python
  exactly, quirks included (``true == 1`` is true but ``1 == true`` is false; ``[1] == [1.0]``
  is false; ``0.0 / 0.0`` is +inf). Every other combination *delegates*: the operands are
  converted to celtypes and cel-python's own operator function (with our mixed int/double
  overrides) is called with the exception handling of cel-python's interpreter for that node,
  so it cannot differ. cel-python leaves the results of some operations as plain Python
  objects rather than celtypes (``1.5 + 1.5`` is a plain ``float``, ``'a' + 'b'`` a plain
  ``str``) and those behave differently afterwards (``3 == 1.5 + 1.5`` is false); the
  compiled program marks them with the private subclasses below, so the difference is kept.
* **Runtime fallback for what the fast path does not model.** Values outside plain JSON (a
  tuple, an int outside int64, a non-string map key, data nested very deep, a ``celtypes``
  value), an unexpected Python exception, and an evaluation that might approach the cost
  budget raise :class:`Fallback`, and the caller evaluates that call with cel-python, which
  decides exactly (conversion errors, over-budget...).

Cost bound. The compiled program keeps an upper bound of what cel-python's bounded evaluator
would charge: the number of parse-tree nodes (every node is evaluated at most once in this
subset: no macros, so no loops) plus, for every value of 64 or more elements or characters a
node produces, ``len >> 6`` times the height of the parse tree (the longest chain of
parse-tree nodes that can hand the same value up). While that bound stays within the budget,
cel-python would not have stopped either, so the result is the same; once it would pass the
budget the program stops at once and falls back to cel-python, which charges exactly. Without
macros the work is otherwise linear in the data the expression reads.

This module never imports trio or reads the clock.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Mapping
from typing import Any, Final

import lark
import re2  # type: ignore[import-untyped]
from celpy import celtypes
from celpy.evaluation import CELEvalError, celstr

__all__ = ["CelError", "Fallback", "FastProgram", "compile_fast", "to_plain"]

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_MAX_CHECK_DEPTH: Final = 100


class CelError(Exception):
    """An evaluation error; ``kind`` is the exception class cel-python records for it."""

    __slots__ = ("kind",)

    def __init__(self, kind: Any) -> None:
        super().__init__(kind)
        self.kind = kind


class Fallback(Exception):
    """This evaluation must run on cel-python (see the module docstring)."""


class _Unsupported(Exception):
    """The expression is outside the compiled subset (compile time)."""


# cel-python results that are plain Python objects instead of celtypes (see module docstring).
class _PlainFloat(float):
    __slots__ = ()


class _PlainStr(str):
    __slots__ = ()


class _PlainList(list[Any]):
    __slots__ = ()


_NUMBERS: Final = frozenset({int, float})
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
_SIZED: Final = frozenset({str, list, dict, _PlainStr, _PlainList})

# --- conversion to and from celtypes (only for delegated operations) --------------------------


def _to_cel(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        return str.__new__(celtypes.StringType, value)
    if kind is bool:
        return celtypes.BoolType(value)
    if kind is int:
        return int.__new__(celtypes.IntType, value)
    if kind is float:
        return float.__new__(celtypes.DoubleType, value)
    if value is None:
        return None
    if kind is list:
        return celtypes.ListType([_to_cel(item) for item in value])
    if kind is dict:
        result = celtypes.MapType()
        for key, item in value.items():
            dict.__setitem__(result, str.__new__(celtypes.StringType, key), _to_cel(item))
        return result
    if kind is CelError:
        return CELEvalError("error", value.kind, None)
    if kind is _PlainFloat:
        return float(value)
    if kind is _PlainStr:
        return str(value)
    if kind is _PlainList:
        return [_to_cel(item) for item in value]
    raise Fallback


def _from_cel(value: Any) -> Any:
    kind = type(value)
    if kind is celtypes.BoolType:
        return bool(value)
    if kind is celtypes.StringType:
        return str(value)
    if kind is celtypes.IntType:
        return int(value)
    if kind is celtypes.DoubleType:
        return float(value)
    if value is None:
        return None
    if kind is celtypes.ListType:
        return [_from_cel(item) for item in value]
    if kind is celtypes.MapType:
        result: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not celtypes.StringType:
                raise Fallback
            result[str(key)] = _from_cel(item)
        return result
    if isinstance(value, CELEvalError):
        raise CelError(value.args[1] if len(value.args) > 1 else None)
    if kind is float:
        return _PlainFloat(value)
    if kind is str:
        return _PlainStr(value)
    if kind is list:
        return _PlainList([_from_cel(item) for item in value])
    raise Fallback  # a plain int or bool, bytes, a type, a timestamp...


def to_plain(value: Any) -> Any:
    """A compiled result as the plain Python value cel-python's result converts to."""
    kind = type(value)
    if kind is list or kind is _PlainList:
        return [to_plain(item) for item in value]
    if kind is dict:
        return {key: to_plain(item) for key, item in value.items()}
    if kind is _PlainFloat:
        return float(value)
    if kind is _PlainStr:
        return str(value)
    return value


# Exception handling of cel-python's interpreter, per kind of parse-tree node.
_RELATION: Final = (TypeError,)
_ADDITION: Final = (TypeError, ValueError, OverflowError)
_MULTIPLICATION: Final = (TypeError, ZeroDivisionError, ValueError, OverflowError)
_UNARY: Final = (TypeError, ValueError)
_CALL: Final = (ValueError, TypeError, AttributeError)
_INDEX: Final = (TypeError, KeyError, IndexError)


class _Delegate:
    """Calls cel-python's function for an operation, as its interpreter would."""

    __slots__ = ("functions",)

    def __init__(self, functions: Mapping[str, Callable[..., Any]]) -> None:
        self.functions = functions

    def __call__(self, name: str, handled: tuple[type[BaseException], ...], *args: Any) -> Any:
        function = self.functions[name]
        converted = [_to_cel(argument) for argument in args]
        try:
            result = function(*converted)
        except handled as error:
            raise CelError(type(error)) from None
        return _from_cel(result)


def _value(value: Any) -> Any:
    if type(value) is CelError:
        raise value
    return value


# --- the compiler ---------------------------------------------------------------------------

Program = Callable[[Mapping[str, Any], list[int]], Any]


class _Const:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_Node = Program | _Const


def _program(node: _Node) -> Program:
    if isinstance(node, _Const):
        value = node.value

        def constant(act: Mapping[str, Any], budget: list[int]) -> Any:
            return value

        return constant
    return node


def _subtrees(tree: lark.Tree[Any]) -> list[lark.Tree[Any]]:
    return [child for child in tree.children if isinstance(child, lark.Tree)]


def _tree_size(tree: lark.Tree[Any]) -> tuple[int, int]:
    """(number of nodes, height) of a parse tree, without recursion."""
    count = 0
    height = 0
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        height = max(height, depth)
        stack.extend((child, depth + 1) for child in _subtrees(node))
    return count, height


class _Compiler:
    def __init__(
        self,
        variables: frozenset[str],
        needs: Mapping[str, Any],
        delegate: _Delegate,
        height: int,
    ) -> None:
        self.variables = variables
        self.needs = needs
        self.delegate = delegate
        self.height = height

    # -- value accounting

    def charge(self) -> Callable[[Any, list[int]], None]:
        height = self.height

        def charge(value: Any, budget: list[int]) -> None:
            budget[0] -= (len(value) >> 6) * height
            if budget[0] < 0:
                raise Fallback

        return charge

    # -- dispatch

    def compile(self, tree: lark.Tree[Any]) -> _Node:
        data = tree.data
        children = tree.children
        if data in (
            "expr",
            "conditionalor",
            "conditionaland",
            "relation",
            "addition",
            "multiplication",
            "unary",
        ):
            if len(children) == 1:
                return self.compile(children[0])
            method: Callable[[lark.Tree[Any]], _Node] = getattr(self, f"node_{data}")
            return method(tree)
        if data == "member":
            return self.compile(children[0])
        if data == "primary":
            return self.primary(children[0])
        if data in ("member_dot", "member_dot_arg", "member_index"):
            member: Callable[[lark.Tree[Any]], _Node] = getattr(self, f"node_{data}")
            return member(tree)
        raise _Unsupported(data)

    # -- logic

    def node_expr(self, tree: lark.Tree[Any]) -> _Node:
        condition, when_true, when_false = (_program(self.compile(c)) for c in tree.children)

        def ternary(act: Mapping[str, Any], budget: list[int]) -> Any:
            try:
                chosen = condition(act, budget)
            except CelError as error:
                chosen = error
            if type(chosen) is bool:
                return (when_true if chosen else when_false)(act, budget)
            # cel-python takes the branch by Python truthiness, then finds no overload.
            branch = when_true if type(chosen) is CelError or chosen else when_false
            with contextlib.suppress(CelError):
                branch(act, budget)
            raise CelError(TypeError)

        return ternary

    def node_conditionalor(self, tree: lark.Tree[Any]) -> _Node:
        left, right = (_program(self.compile(c)) for c in tree.children)

        def logical_or(act: Mapping[str, Any], budget: list[int]) -> Any:
            # Both sides are evaluated, as cel-python does (its cost counts both).
            try:
                x = left(act, budget)
            except CelError as error:
                x = error
            try:
                y = right(act, budget)
            except CelError as error:
                y = error
            if type(x) is bool:
                if type(y) is bool:
                    return x or y
                return True if x else _value(y)
            if type(y) is bool:
                return True if y else _value(x)
            raise CelError(TypeError)

        return logical_or

    def node_conditionaland(self, tree: lark.Tree[Any]) -> _Node:
        left, right = (_program(self.compile(c)) for c in tree.children)

        def logical_and(act: Mapping[str, Any], budget: list[int]) -> Any:
            try:
                x = left(act, budget)
            except CelError as error:
                x = error
            try:
                y = right(act, budget)
            except CelError as error:
                y = error
            if type(x) is bool:
                if type(y) is bool:
                    return x and y
                return _value(y) if x else False
            if type(y) is bool:
                return _value(x) if y else False
            raise CelError(TypeError)

        return logical_and

    # -- binary operators

    def binary(
        self,
        tree: lark.Tree[Any],
        operate: Callable[[Any, Any], Any],
        fast: Callable[[Program, Any, Callable[[Any, Any], Any]], Program] | None = None,
    ) -> Program:
        operator_tree, right_tree = tree.children
        left = _program(self.compile(operator_tree.children[0]))
        right_node = self.compile(right_tree)
        if isinstance(right_node, _Const):
            constant = right_node.value

            def with_constant(act: Mapping[str, Any], budget: list[int]) -> Any:
                try:
                    x = left(act, budget)
                except CelError as error:
                    x = error
                return operate(x, constant)

            return with_constant if fast is None else fast(left, constant, operate)
        right = right_node

        def binary(act: Mapping[str, Any], budget: list[int]) -> Any:
            try:
                x = left(act, budget)
            except CelError as error:
                x = error
            try:
                y = right(act, budget)
            except CelError as error:
                y = error
            return operate(x, y)

        return binary

    def node_relation(self, tree: lark.Tree[Any]) -> _Node:
        op = tree.children[0].data
        delegate = self.delegate
        if op in ("relation_eq", "relation_ne"):
            negate = op == "relation_ne"
            name = "_!=_" if negate else "_==_"

            def equality(x: Any, y: Any) -> Any:
                tx = type(x)
                ty = type(y)
                if tx is ty:
                    if tx is str or tx is int or tx is float or tx is bool or x is None:
                        return (x == y) is not negate
                elif tx in _NUMBERS and ty in _NUMBERS:
                    return (x == y) is not negate
                elif tx in _SCALARS and ty in _SCALARS:
                    # bool == int compares by value (int.__eq__); every other mixed pair
                    # of scalars is heterogeneous: not equal.
                    if tx is bool and ty is int:
                        return (x == y) is not negate
                    return negate
                return delegate(name, _RELATION, x, y)

            return self.binary(tree, equality, _equal_constant(negate))
        if op == "relation_in":

            def contains(item: Any, container: Any) -> Any:
                tc = type(container)
                ti = type(item)
                if tc is dict and ti is str:
                    return item in container
                if tc is list and (ti is str or ti is int):
                    failed = False
                    for element in container:
                        te = type(element)
                        if te is ti:
                            if element == item:
                                return True
                        elif ti is str and (element is None or te is bool):
                            pass
                        elif ti is int and te is bool:
                            if element == item:
                                return True
                        elif te in _SCALARS or te is list or te is dict:
                            failed = True  # cel-python: TypeError from ==, remembered
                        else:
                            return delegate("_in_", _RELATION, item, container)
                    if failed:
                        raise CelError(TypeError)
                    return False
                return delegate("_in_", _RELATION, item, container)

            return self.binary(tree, contains)
        name, compare = {
            "relation_lt": ("_<_", operator.lt),
            "relation_le": ("_<=_", operator.le),
            "relation_gt": ("_>_", operator.gt),
            "relation_ge": ("_>=_", operator.ge),
        }[op]

        def ordering(x: Any, y: Any) -> Any:
            tx = type(x)
            ty = type(y)
            if (tx is ty and (tx is int or tx is float or tx is str)) or (
                tx in _NUMBERS and ty in _NUMBERS
            ):
                return compare(x, y)
            return delegate(name, _RELATION, x, y)

        return self.binary(tree, ordering, _compare_constant(compare))

    def node_addition(self, tree: lark.Tree[Any]) -> _Node:
        subtract = tree.children[0].data == "addition_sub"
        name = "_-_" if subtract else "_+_"
        delegate = self.delegate

        def addition(x: Any, y: Any) -> Any:
            tx = type(x)
            ty = type(y)
            if tx is int and ty is int:
                result = x - y if subtract else x + y
                if _INT64_MIN <= result <= _INT64_MAX:
                    return result
                raise CelError(ValueError)
            if tx in _NUMBERS and ty in _NUMBERS:
                # double arithmetic gives a plain float in cel-python
                return _PlainFloat(x - y if subtract else x + y)
            return delegate(name, _ADDITION, x, y)

        return self.sized(self.binary(tree, addition))

    def node_multiplication(self, tree: lark.Tree[Any]) -> _Node:
        op = tree.children[0].data
        delegate = self.delegate
        if op == "multiplication_mul":

            def multiply(x: Any, y: Any) -> Any:
                tx = type(x)
                ty = type(y)
                if tx is int and ty is int:
                    result = x * y
                    if _INT64_MIN <= result <= _INT64_MAX:
                        return result
                    raise CelError(ValueError)
                if tx in _NUMBERS and ty in _NUMBERS:
                    return _PlainFloat(x * y)
                return delegate("_*_", _MULTIPLICATION, x, y)

            return self.sized(self.binary(tree, multiply))
        if op == "multiplication_div":

            def divide(x: Any, y: Any) -> Any:
                tx = type(x)
                ty = type(y)
                if tx is int and ty is int:
                    if y == 0:
                        raise CelError(ZeroDivisionError)
                    quotient = abs(x) // abs(y)
                    result = -quotient if (x < 0) != (y < 0) else quotient
                    if _INT64_MIN <= result <= _INT64_MAX:
                        return result
                    raise CelError(ValueError)
                if tx in _NUMBERS and ty in _NUMBERS:
                    # cel-python's DoubleType: anything / 0.0 is +inf
                    return float("inf") if y == 0 else float(x) / float(y)
                return delegate("_/_", _MULTIPLICATION, x, y)

            return self.binary(tree, divide)

        def modulo(x: Any, y: Any) -> Any:
            if type(x) is int and type(y) is int:
                if y == 0:
                    raise CelError(ZeroDivisionError)
                remainder = abs(x) % abs(y)
                return -remainder if x < 0 else remainder
            return delegate("_%_", _MULTIPLICATION, x, y)

        return self.binary(tree, modulo)

    def node_unary(self, tree: lark.Tree[Any]) -> _Node:
        operator_tree, operand_tree = tree.children
        operand = _program(self.compile(operand_tree))
        delegate = self.delegate
        if operator_tree.data == "unary_not":

            def logical_not(act: Mapping[str, Any], budget: list[int]) -> Any:
                value = operand(act, budget)  # an error passes through
                if type(value) is bool:
                    return not value
                raise CelError(TypeError)

            return logical_not

        def negate(act: Mapping[str, Any], budget: list[int]) -> Any:
            try:
                value = operand(act, budget)
            except CelError as error:
                value = error
            kind = type(value)
            if kind is int:
                if value == _INT64_MIN:
                    raise CelError(ValueError)
                return -value
            if kind is float:
                return -value
            return delegate("-_", _UNARY, value)

        return negate

    def sized(self, program: Program) -> Program:
        """Charge the values ``program`` produces to the budget."""
        charge = self.charge()

        def sized(act: Mapping[str, Any], budget: list[int]) -> Any:
            value = program(act, budget)
            if type(value) in _SIZED and len(value) >= 64:
                charge(value, budget)
            return value

        return sized

    # -- members

    def node_member_dot(self, tree: lark.Tree[Any]) -> _Node:
        path = self.path(tree)
        if path is not None:
            return self.path_program(path)
        member_tree, name_token = tree.children
        member = _program(self.compile(member_tree))
        key = str(name_token)

        def select(act: Mapping[str, Any], budget: list[int]) -> Any:
            value = member(act, budget)
            if type(value) is not dict:
                raise CelError(TypeError)
            try:
                return value[key]
            except KeyError:
                raise CelError(KeyError) from None

        return self.sized(select)

    def path(self, tree: lark.Tree[Any]) -> tuple[str, ...] | None:
        """``(variable, key, ...)`` if ``tree`` (a member_dot) is ``variable.key.key...``."""
        keys: list[str] = []
        node = tree
        while node.data == "member_dot":
            keys.append(str(node.children[1]))
            member = node.children[0]
            node = member.children[0]
        if node.data != "primary":
            return None
        leaf = node.children[0]
        if leaf.data != "ident":
            return None
        return (str(leaf.children[0]), *reversed(keys))

    def path_program(self, path: tuple[str, ...]) -> Program:
        """Read ``variable.key.key...`` from the activation.

        cel-python converted what the expression reads before evaluating; the path checks,
        as it reads, that what it reads is plain JSON (see :func:`_leaf`), so that the
        conversion would have succeeded and given the same values (else: fallback).
        """
        name = path[0]
        if name not in self.variables:
            raise _Unsupported(name)  # a type name such as ``int``
        keys = path[1:]
        # An intermediate map is charged only where cel-python converts it whole; where it
        # is narrowed to the keys read, it holds fewer than 64 of them (checked below).
        whole_from = len(keys)
        need = self.needs.get(name)
        for position in range(len(keys)):
            if need is None:
                whole_from = position
                break
            if len(need) >= 64:
                raise _Unsupported("64 keys or more read from one map")
            need = need.get(keys[position])
        leaf = self.leaf()
        if whole_from < len(keys) or len(keys) > 3:
            return self.long_path(name, keys, whole_from, leaf)
        not_a_map = self.not_a_map()
        if not keys:

            def path0(act: Mapping[str, Any], budget: list[int]) -> Any:
                try:
                    value = act[name]
                except KeyError:
                    raise CelError(KeyError) from None
                kind = type(value)
                if (
                    (kind is str and len(value) < 64)
                    or kind is bool
                    or kind is float
                    or value is None
                    or (kind is int and _INT64_MIN <= value <= _INT64_MAX)
                ):
                    return value
                return leaf(value, budget)

            return path0
        if len(keys) == 1:
            (k1,) = keys

            def path1(act: Mapping[str, Any], budget: list[int]) -> Any:
                try:
                    value = act[name]
                except KeyError:
                    raise CelError(KeyError) from None
                if type(value) is not dict:
                    raise not_a_map(value, budget)
                try:
                    value = value[k1]
                except KeyError:
                    raise CelError(KeyError) from None
                kind = type(value)
                if (
                    (kind is str and len(value) < 64)
                    or kind is bool
                    or kind is float
                    or value is None
                    or (kind is int and _INT64_MIN <= value <= _INT64_MAX)
                ):
                    return value
                return leaf(value, budget)

            return path1
        if len(keys) == 2:
            k1, k2 = keys

            def path2(act: Mapping[str, Any], budget: list[int]) -> Any:
                try:
                    value = act[name]
                except KeyError:
                    raise CelError(KeyError) from None
                if type(value) is not dict:
                    raise not_a_map(value, budget)
                try:
                    value = value[k1]
                except KeyError:
                    raise CelError(KeyError) from None
                if type(value) is not dict:
                    raise not_a_map(value, budget)
                try:
                    value = value[k2]
                except KeyError:
                    raise CelError(KeyError) from None
                kind = type(value)
                if (
                    (kind is str and len(value) < 64)
                    or kind is bool
                    or kind is float
                    or value is None
                    or (kind is int and _INT64_MIN <= value <= _INT64_MAX)
                ):
                    return value
                return leaf(value, budget)

            return path2
        k1, k2, k3 = keys

        def path3(act: Mapping[str, Any], budget: list[int]) -> Any:
            try:
                value = act[name]
            except KeyError:
                raise CelError(KeyError) from None
            if type(value) is not dict:
                raise not_a_map(value, budget)
            try:
                value = value[k1]
            except KeyError:
                raise CelError(KeyError) from None
            if type(value) is not dict:
                raise not_a_map(value, budget)
            try:
                value = value[k2]
            except KeyError:
                raise CelError(KeyError) from None
            if type(value) is not dict:
                raise not_a_map(value, budget)
            try:
                value = value[k3]
            except KeyError:
                raise CelError(KeyError) from None
            kind = type(value)
            if (
                (kind is str and len(value) < 64)
                or kind is bool
                or kind is float
                or value is None
                or (kind is int and _INT64_MIN <= value <= _INT64_MAX)
            ):
                return value
            return leaf(value, budget)

        return path3

    def long_path(
        self,
        name: str,
        keys: tuple[str, ...],
        whole_from: int,
        leaf: Callable[[Any, list[int]], Any],
    ) -> Program:
        not_a_map = self.not_a_map()
        charge = self.charge()

        def path(act: Mapping[str, Any], budget: list[int]) -> Any:
            try:
                value = act[name]
            except KeyError:
                raise CelError(KeyError) from None
            for position, key in enumerate(keys):
                if type(value) is not dict:
                    raise not_a_map(value, budget)
                if position >= whole_from and len(value) >= 64:
                    charge(value, budget)
                try:
                    value = value[key]
                except KeyError:
                    raise CelError(KeyError) from None
            return leaf(value, budget)

        return path

    def leaf(self) -> Callable[[Any, list[int]], Any]:
        """Check (and charge) a value read whole from the activation; returns it."""
        charge = self.charge()

        def leaf(value: Any, budget: list[int]) -> Any:
            if not _plain(value, 0):
                raise Fallback  # cel-python converts it differently, or fails to
            if type(value) in _SIZED and len(value) >= 64:
                charge(value, budget)
            return value

        return leaf

    def not_a_map(self) -> Callable[[Any, list[int]], CelError]:
        """The error for ``value.key`` where ``value`` is not a map (cel-python converted such
        a value whole, and charged it)."""
        leaf = self.leaf()

        def not_a_map(value: Any, budget: list[int]) -> CelError:
            if isinstance(value, Mapping):
                raise Fallback  # cel-python converts only the keys read
            leaf(value, budget)
            return CelError(TypeError)

        return not_a_map

    def node_member_index(self, tree: lark.Tree[Any]) -> _Node:
        member_tree, index_tree = tree.children
        delegate = self.delegate

        def index(container: Any, key: Any) -> Any:
            tc = type(container)
            if tc is dict and type(key) is str:
                try:
                    return container[key]
                except KeyError:
                    raise CelError(KeyError) from None
            if tc is list and type(key) is int:
                try:
                    return container[key]
                except IndexError:
                    raise CelError(IndexError) from None
            return delegate("_[_]", _INDEX, container, key)

        member = _program(self.compile(member_tree))
        key_node = self.compile(index_tree)
        key = _program(key_node)

        def item(act: Mapping[str, Any], budget: list[int]) -> Any:
            try:
                x = member(act, budget)
            except CelError as error:
                x = error
            try:
                y = key(act, budget)
            except CelError as error:
                y = error
            return index(x, y)

        return self.sized(item)

    def arguments(self, exprlist: Any) -> list[Program]:
        if exprlist is None:
            return []
        return [_program(self.compile(child)) for child in _subtrees(exprlist)]

    def node_member_dot_arg(self, tree: lark.Tree[Any]) -> _Node:
        method = str(tree.children[1])
        exprlist = tree.children[2] if len(tree.children) > 2 else None
        arguments = self.arguments(exprlist)
        receiver = _program(self.compile(tree.children[0]))
        delegate = self.delegate
        if method == "size" and not arguments:

            def size_method(act: Mapping[str, Any], budget: list[int]) -> Any:
                return _size(receiver(act, budget))

            return size_method
        if method not in ("startsWith", "endsWith", "contains", "matches") or len(
            arguments
        ) != 1:
            raise _Unsupported(method)
        (argument,) = arguments
        pattern: Any = None
        if method == "matches":
            assert exprlist is not None
            constant = self.compile(_subtrees(exprlist)[0])
            if isinstance(constant, _Const) and type(constant.value) is str:
                try:
                    pattern = re2.compile(constant.value)
                except re2.error:
                    pattern = None  # the error comes from cel-python, at evaluation
        operate: Callable[[str, str], bool] = {
            "startsWith": str.startswith,
            "endsWith": str.endswith,
            "contains": lambda text, part: part in text,
            "matches": lambda text, regex: re2.search(regex, text) is not None,
        }[method]

        def call(act: Mapping[str, Any], budget: list[int]) -> Any:
            # cel-python evaluates the receiver and the arguments, then reports the
            # receiver's error first, then the first argument error.
            try:
                text = receiver(act, budget)
            except CelError as error:
                text = error
            try:
                value = argument(act, budget)
            except CelError as error:
                value = error
            if type(text) is CelError:
                raise text
            if type(value) is CelError:
                raise value
            if type(text) is str and type(value) is str:
                if pattern is not None:
                    return pattern.search(text) is not None
                return operate(text, value)
            return delegate(method, _CALL, text, value)

        return call

    # -- primaries

    def primary(self, tree: lark.Tree[Any]) -> _Node:
        data = tree.data
        if data == "literal":
            return _Const(_literal(tree.children[0]))
        if data == "paren_expr":
            return self.compile(tree.children[0])
        if data == "ident":
            return self.path_program((str(tree.children[0]),))
        if data == "list_lit":
            return self.list_literal(tree)
        if data == "map_lit":
            return self.map_literal(tree)
        if data == "ident_arg":
            return self.function(tree)
        raise _Unsupported(data)

    def function(self, tree: lark.Tree[Any]) -> _Node:
        name = str(tree.children[0])
        arguments = self.arguments(tree.children[1] if len(tree.children) > 1 else None)
        if len(arguments) != 1 or name not in ("has", "dyn", "size"):
            raise _Unsupported(name)
        (argument,) = arguments
        if name == "has":

            def has(act: Mapping[str, Any], budget: list[int]) -> Any:
                try:
                    argument(act, budget)
                except CelError:
                    return False
                return True

            return has
        if name == "dyn":
            return argument

        def size(act: Mapping[str, Any], budget: list[int]) -> Any:
            return _size(argument(act, budget))

        return size

    def list_literal(self, tree: lark.Tree[Any]) -> _Node:
        items = self.arguments(tree.children[0] if tree.children else None)

        def make_list(act: Mapping[str, Any], budget: list[int]) -> Any:
            values = []
            first: CelError | None = None
            for item in items:
                try:
                    values.append(item(act, budget))
                except CelError as error:
                    if first is None:
                        first = error
            if first is not None:
                raise first
            return values

        return self.sized(make_list)

    def map_literal(self, tree: lark.Tree[Any]) -> _Node:
        if not tree.children:
            return self.sized(lambda act, budget: {})
        parts = _subtrees(tree.children[0])
        keys: list[str] = []
        for key_tree in parts[0::2]:
            key = self.compile(key_tree)
            if not isinstance(key, _Const) or type(key.value) is not str or key.value in keys:
                raise _Unsupported("map key")
            keys.append(key.value)
        values = [_program(self.compile(value)) for value in parts[1::2]]
        pairs = list(zip(keys, values, strict=True))

        def make_map(act: Mapping[str, Any], budget: list[int]) -> Any:
            result = {}
            for key, value in pairs:
                try:
                    result[key] = value(act, budget)
                except CelError:
                    raise Fallback from None  # cel-python keeps the error inside the map
            return result

        return self.sized(make_map)


def _equal_constant(
    negate: bool,
) -> Callable[[Program, Any, Callable[[Any, Any], Any]], Program]:
    """``x == constant``: the same-typed case inline (the common trigger filter)."""

    def build(left: Program, constant: Any, equality: Callable[[Any, Any], Any]) -> Program:
        kind = type(constant)
        if kind not in (str, int, float, bool):
            return _generic_constant(left, constant, equality)

        def equal_constant(act: Mapping[str, Any], budget: list[int]) -> Any:
            try:
                x = left(act, budget)
            except CelError as error:
                x = error
            if type(x) is kind:
                return (x == constant) is not negate
            return equality(x, constant)

        return equal_constant

    return build


def _compare_constant(
    compare: Callable[[Any, Any], bool],
) -> Callable[[Program, Any, Callable[[Any, Any], Any]], Program]:
    """``x < constant``: numbers (or strings) inline."""

    def build(left: Program, constant: Any, ordering: Callable[[Any, Any], Any]) -> Program:
        kind = type(constant)
        if kind is str:

            def string_constant(act: Mapping[str, Any], budget: list[int]) -> Any:
                try:
                    x = left(act, budget)
                except CelError as error:
                    x = error
                if type(x) is str:
                    return compare(x, constant)
                return ordering(x, constant)

            return string_constant
        if kind not in _NUMBERS:
            return _generic_constant(left, constant, ordering)

        def number_constant(act: Mapping[str, Any], budget: list[int]) -> Any:
            try:
                x = left(act, budget)
            except CelError as error:
                x = error
            if type(x) is int or type(x) is float:
                return compare(x, constant)
            return ordering(x, constant)

        return number_constant

    return build


def _generic_constant(
    left: Program, constant: Any, operate: Callable[[Any, Any], Any]
) -> Program:
    def with_constant(act: Mapping[str, Any], budget: list[int]) -> Any:
        try:
            x = left(act, budget)
        except CelError as error:
            x = error
        return operate(x, constant)

    return with_constant


def _size(value: Any) -> Any:
    if value is None:
        return 0
    kind = type(value)
    if kind in _SIZED:
        return len(value)
    if kind is CelError:
        raise value
    raise CelError(TypeError)


def _literal(token: Any) -> Any:
    kind = token.type
    if kind == "INT_LIT":
        try:
            return int(celtypes.IntType(token.value))
        except ValueError:
            raise _Unsupported("integer literal out of range") from None
    if kind == "FLOAT_LIT":
        return float(celtypes.DoubleType(token.value))
    if kind in ("STRING_LIT", "MLSTRING_LIT"):
        return str(celstr(token))
    if kind == "BOOL_LIT":
        return token.value.lower() == "true"
    if kind == "NULL_LIT":
        return None
    raise _Unsupported(kind)  # uint and bytes literals


# --- what the activation must hold ------------------------------------------------------------


def _plain(value: Any, depth: int) -> bool:
    """Whether cel-python converts ``value`` to celtypes the way the compiled program reads it."""
    kind = type(value)
    if kind is str or kind is float or kind is bool or value is None:
        return True
    if kind is int:
        return bool(_INT64_MIN <= value <= _INT64_MAX)
    if depth > _MAX_CHECK_DEPTH:
        return False
    if kind is list:
        return all(_plain(item, depth + 1) for item in value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _plain(item, depth + 1):
                return False
        return True
    return False


def _checker(need: Any) -> Callable[[Any], bool]:
    if need is None:
        return lambda value: _plain(value, 0)
    parts = [(key, _checker(sub)) for key, sub in need.items()]

    def narrowed(value: Any) -> bool:
        if type(value) is dict:
            return all(not (key in value and not check(value[key])) for key, check in parts)
        if isinstance(value, Mapping):
            return False
        return _plain(value, 0)

    return narrowed


class FastProgram:
    """A compiled expression: :meth:`run` evaluates it on plain JSON values."""

    __slots__ = ("_allowance", "_checks", "_program")

    def __init__(
        self, program: Program, needs: Mapping[str, Any], allowance: int, check_first: bool
    ) -> None:
        self._program = program
        # Every path the expression reads is read, and checked, on every evaluation, except
        # in the branch of a ``?:`` not taken: then the activation is checked first.
        self._checks = (
            [(name, _checker(need)) for name, need in needs.items()] if check_first else None
        )
        self._allowance = allowance

    def run(self, activation: Mapping[str, Any]) -> Any:
        """The result (compiled form, see :func:`to_plain`); raises :class:`CelError` for an
        evaluation error, :class:`Fallback` when this call must run on cel-python."""
        if self._checks is not None:
            for name, check in self._checks:
                if name in activation and not check(activation[name]):
                    raise Fallback
        try:
            return self._program(activation, [self._allowance])
        except (CelError, Fallback):
            raise
        except Exception:  # RecursionError, or anything unforeseen: cel-python decides
            raise Fallback from None


def compile_fast(
    tree: lark.Tree[Any],
    variables: tuple[str, ...],
    needs: Mapping[str, Any],
    functions: Mapping[str, Callable[..., Any]],
    budget: int,
) -> FastProgram | None:
    """Compile cel-python's parse tree, or None if it is outside the compiled subset.

    ``needs`` is what the expression reads from each variable (``_cel``'s analysis),
    ``functions`` the functions cel-python's program runs with, ``budget`` its cost budget.
    """
    count, height = _tree_size(tree)
    allowance = budget - count
    if allowance <= 0:
        return None
    compiler = _Compiler(frozenset(variables), needs, _Delegate(functions), height)
    try:
        program = _program(compiler.compile(tree))
    except (_Unsupported, RecursionError):
        return None
    ternary = any(
        node.data == "expr" and len(node.children) == 3 for node in tree.iter_subtrees()
    )
    return FastProgram(program, needs, allowance, check_first=ternary)
