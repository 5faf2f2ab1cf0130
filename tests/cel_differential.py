"""Run one CEL expression on both paths: the compiled closures and cel-python (the reference).

Used by tests/test_cel_corpus.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from celpy.evaluation import CELEvalError

from durable_core.base import _cel
from durable_core.base._cel import MAX_EVALUATION_COST, Expression
from durable_core.base._cel_compile import CelError, Fallback, to_plain
from durable_core.base._errors import InvalidExpressionError

Outcome = tuple[Any, ...]


def reference(expression: Expression, activation: Mapping[str, Any]) -> Outcome:
    """What cel-python gives: ("value", v), ("error", kind), ("invalid",) for an activation
    that cannot be converted, ("over budget",), or ("raised", exception class)."""
    compiled = expression._compiled
    try:
        context = expression._context(activation)
    except InvalidExpressionError:
        return ("invalid",)
    try:
        result = compiled.evaluate(context, MAX_EVALUATION_COST)
        value = _cel._from_cel(result)  # raises an error kept inside a map
    except _cel._OverBudget:
        return ("over budget",)
    except CELEvalError as error:
        return ("error", error.args[1] if len(error.args) > 1 else None)
    except Exception as error:
        return ("raised", type(error))
    return ("value", value)


def compiled(expression: Expression, activation: Mapping[str, Any]) -> Outcome:
    """What the compiled program gives: ("value", v), ("error", kind), ("fallback",) when
    this call is handed to cel-python, or ("not compiled",)."""
    fast = expression._compiled.fast
    if fast is None:
        return ("not compiled",)
    try:
        return ("value", to_plain(fast.run(activation)))
    except CelError as error:
        return ("error", error.kind)
    except Fallback:
        return ("fallback",)


def same(left: Any, right: Any) -> bool:
    """Equal values of the same types, all the way down (NaN equals NaN)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, float):
        return left == right or (math.isnan(left) and math.isnan(right))
    if isinstance(left, list):
        return len(left) == len(right) and all(map(same, left, right))
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same(left[k], right[k]) for k in left)
    return bool(left == right)


def agree(left: Outcome, right: Outcome) -> bool:
    """Whether two outcomes are the same (values compared with :func:`same`). An error of
    the compiled program (``left``) agrees with cel-python *crashing* (``right`` is
    ``("raised", ...)``): cel-python has bugs of its own (``0 && !{}``, where both sides are
    errors, raises IndexError inside it), and callers see InvalidExpressionError either
    way; the compiled program gives the error CEL specifies (the one ``!{}`` alone gives)."""
    if left[0] == "error" and right[0] == "raised":
        return True
    if left[0] != right[0]:
        return False
    if left[0] == "value":
        return same(left[1], right[1])
    return left == right
