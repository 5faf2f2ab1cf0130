"""The compiled CEL path against cel-python, the reference: one corpus, identical outcomes.

Every expression runs on both paths over every activation below: the compiled closures
(``durable_core.base._cel_compile``) must give the same value, of the same types, or an error
of the same kind (the exception class cel-python records), or hand the call to cel-python
(a *fallback*, which cannot differ). The corpus holds the cel-spec conformance cases that
apply to JSON values (tests/data/cel_spec_simple.json), our mixed int/double rules, and
conditions over JSON events; a Hypothesis test generates more.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cel_differential import agree, compiled, reference
from durable_core.base._cel import MAX_EVALUATION_COST, compile_expression
from durable_core.base._errors import InvalidExpressionError

VARIABLES = ("event", "async")

EVENT = {
    "name": "shop/order.created",
    "id": "01HX",
    "ts": 1714564800000,
    "data": {
        "amount": 150.5,
        "count": 150,
        "zero": 0,
        "fzero": 0.0,
        "neg": -7,
        "big": 2**62,
        "min": -(2**63),
        "orderId": "o-1",
        "kind": "a",
        "email": "Ada@Example.com",
        "customer": {"email": "ada@example.com", "tier": "gold", "vip": True},
        "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}],
        "tags": ["new", "vip"],
        "nums": [1, 2, 3],
        "floats": [1.0, 2.5],
        "mixed": [1, "a", None, True, 2.5, [1], {"a": 1}],
        "bools": [True, False],
        "note": None,
        "paid": True,
        "empty": "",
        "emptyList": [],
        "emptyMap": {},
        "k": "x",
        "long": "y" * 100,
        "many": list(range(100)),
        "unicode": "héllo wörld ☃",
    },
}
ASYNC = {"name": "shop/order.paid", "data": {"orderId": "o-1", "amount": 150, "k": "x"}}

ACTIVATIONS: dict[str, dict[str, Any]] = {
    "order": {"event": EVENT, "async": ASYNC},
    "swapped types": {
        "event": {
            "name": 7,
            "data": {
                "amount": 150,
                "count": 150.0,
                "orderId": 1,
                "kind": None,
                "k": ["x"],
                "tags": "vip",
                "nums": [1.0, 2, "3"],
                "customer": ["gold"],
                "items": {"sku": "a"},
                "paid": "yes",
                "note": 0,
                "email": True,
            },
        },
        "async": {"data": {"orderId": "1", "amount": 150.0, "k": "x"}},
    },
    "missing": {"event": {"name": "a/b", "data": {}}, "async": {"data": {}}},
    "no data": {"event": {"name": "a/b", "data": None}},
    "data is a list": {"event": {"name": "a/b", "data": [1, 2]}, "async": {"data": "x"}},
    "empty": {},
    "not json": {
        "event": {"data": {"amount": (1, 2), "count": 2**70, "k": object(), "tags": [2**64]}},
        "async": {"data": {(1, 2): "x"}},
    },
}

# Conditions over JSON events: the shapes used as trigger filters and wait matches, plus every
# operator of the compiled subset over fields of every type (the activations above put
# unexpected types in the same fields).
EXPRESSIONS = [
    # paths, equality, the hot-path shapes
    "event.data.k == 'x'",
    "async.data.k == event.data.k",
    "async.data.orderId == event.data.orderId",
    "event.data.amount > 100 && event.data.kind == 'a'",
    "event.name == 'shop/order.created'",
    "event.data.customer.tier == 'gold'",
    "event.data.customer.vip",
    "event.data.customer.vip == true",
    "event.data.note == null",
    "event.data.note != null",
    "null == event.data.note",
    "event.data.paid",
    "!event.data.paid",
    "event.data",
    "event.data.k",
    "event.data.nope",
    "event.nope.deeper == 1",
    "event.data.items[0].qty == 2",
    "event.data.items[5].qty == 2",
    "event.data.items[-1].sku",
    "event.data['orderId'] == 'o-1'",
    "event.data['nope']",
    "event.data[1]",
    "event.data.nums[1.0]",
    "event.data.nums[true]",
    "event['data']['k']",
    "event.data.tags[0]",
    "(event.data).k",
    "event.data.k.x",
    "event.data.customer['tier']",
    "event.data.emptyMap.x",
    # comparisons, our mixed int/double rules
    "event.data.count > 100.5",
    "event.data.count == 150.0",
    "150.0 == event.data.count",
    "event.data.count != 150.0",
    "event.data.amount == 150",
    "async.data.amount == 150.0",
    "async.data.amount < event.data.amount",
    "event.data.amount >= 150",
    "event.data.amount <= 150",
    "100 < event.data.amount",
    "event.data.big > 4611686018427387903.0",
    "event.data.count == event.data.amount",
    "event.data.orderId == 1",
    "event.data.orderId != 1",
    "event.data.tags == 'vip'",
    "event.data.tags == ['new', 'vip']",
    "event.data.tags != ['new', 'vip']",
    "event.data.floats == [1, 2.5]",
    "event.data.nums == [1, 2, 3]",
    "event.data.items == [{'sku': 'a', 'qty': 2}, {'sku': 'b', 'qty': 1}]",
    "event.data.customer == {'email': 'ada@example.com', 'tier': 'gold', 'vip': true}",
    "event.data.customer != {'tier': 'gold'}",
    "event.data.emptyMap == {}",
    "event.data.emptyList == []",
    "event.data.paid == 1",
    "1 == event.data.paid",
    "event.data.paid < 2",
    "2 > event.data.paid",
    "event.data.paid > 0.5",
    "event.data.paid == event.data.customer.vip",
    "event.data.customer.tier > 'f'",
    "event.data.customer.tier > 1",
    "event.data.note < 1",
    "event.data.tags < event.data.tags",
    "event.data.unicode > 'hello'",
    "event.data.k == event.data.note",
    "event.data.k != event.data.note",
    "event.data.empty == ''",
    # logic: error absorption, non-boolean operands
    "event.data.nope > 1 || true",
    "true || event.data.nope > 1",
    "event.data.nope > 1 && false",
    "false && event.data.nope > 1",
    "event.data.nope > 1 && true",
    "event.data.nope > 1 || false",
    "event.data.nope > 1 || event.data.other > 1",
    "event.data.nope > 1 && event.data.other > 1",
    "event.data.count && true",
    "true && event.data.count",
    "event.data.count || false",
    "event.data.k || event.data.count",
    "!event.data.count",
    "!event.data.nope",
    "has(event.data.k) && event.data.k == 'x'",
    "has(event.data.nope) || event.data.k == 'x'",
    "has(event.data.customer.email)",
    "has(event.data.k.x)",
    "has(event.nope.x)",
    "has(event.data)",
    "has(event.data.items[0])",
    "event.data.paid ? 'paid' : 'unpaid'",
    "event.data.count > 100 ? event.data.k : event.data.nope",
    "event.data.nope ? 1 : 2",
    "event.data.count ? 1 : 2",
    "event.data.zero ? 1 : 2",
    "event.data.paid ? event.data.nope : 2",
    "event.data.k == 'x' ? event.data.count + 1 : 0",
    # arithmetic
    "event.data.count + 1",
    "event.data.count - 200",
    "event.data.count * 2",
    "event.data.count / 4",
    "event.data.count % 7",
    "event.data.neg / 2",
    "event.data.neg % 4",
    "event.data.count / event.data.zero",
    "event.data.count % event.data.zero",
    "event.data.amount / event.data.fzero",
    "event.data.count / event.data.fzero",
    "event.data.fzero / event.data.fzero",
    "event.data.count / 4.0",
    "event.data.count + 0.5",
    "0.5 + event.data.count",
    "event.data.amount - 0.5",
    "event.data.amount * 2",
    "2 * event.data.amount",
    "event.data.amount % 2",
    "event.data.amount + 1 > 151",
    "3 == event.data.amount - 147.5",
    "event.data.amount - 147.5 == 3",
    "event.data.amount * 2 > 300",
    "300 < event.data.amount * 2",
    "event.data.big * 2",
    "event.data.big + event.data.big",
    "event.data.min - 1",
    "-event.data.min",
    "event.data.min / -1",
    "-event.data.count",
    "-event.data.amount",
    "-event.data.paid",
    "-event.data.k",
    "event.data.k + 'y'",
    "event.data.k + 'y' == 'xy'",
    "(event.data.k + 'y').contains('y')",
    "event.data.tags + ['x']",
    "size(event.data.tags + ['x'])",
    "event.data.k + 1",
    "event.data.paid + 1",
    "event.data.note + 1",
    "event.data.nope + 1",
    "1 + event.data.nope",
    "1.0 + event.data.nope",
    "event.data.k * 2",
    # in, size
    "'vip' in event.data.tags",
    "'old' in event.data.tags",
    "event.data.k in ['x', 'y']",
    "event.data.customer.tier in ['gold', 'platinum']",
    "event.data.count in [150, 151]",
    "event.data.count in [150.0]",
    "event.data.amount in [150.5]",
    "1 in event.data.mixed",
    "'a' in event.data.mixed",
    "'zz' in event.data.mixed",
    "2 in event.data.mixed",
    "true in event.data.bools",
    "null in event.data.mixed",
    "[1] in event.data.mixed",
    "'k' in event.data",
    "'nope' in event.data",
    "1 in event.data",
    "'x' in event.data.k",
    "1 in event.data.count",
    "event.data.count in event.data.nums",
    "event.data.nope in event.data.tags",
    "size(event.data.tags) == 2",
    "size(event.data)",
    "size(event.data.k)",
    "size(event.data.count)",
    "size(event.data.note)",
    "size(event.data.unicode)",
    "event.data.tags.size()",
    "event.data.k.size() == 1",
    "event.data.paid.size()",
    "size(event.data.nope)",
    # strings
    "event.name.startsWith('shop/')",
    "event.name.endsWith('.created')",
    "event.data.customer.email.contains('@example.')",
    "event.data.customer.email.matches('^[a-z]+@')",
    "event.data.email.matches('(?i)^ada@')",
    "event.data.customer.email.matches(event.data.k)",
    "event.data.customer.email.matches('[')",
    "event.data.k.startsWith(1)",
    "event.data.count.startsWith('1')",
    "event.data.nope.startsWith('x')",
    "event.data.k.startsWith(event.data.nope)",
    "event.data.tags.contains('vip')",
    "event.data.unicode.contains('☃')",
    "event.data.long.startsWith('yyy')",
    "event.data.long == event.data.long",
    "size(event.data.long) > 64",
    "event.data.many[99] == 99",
    "size(event.data.many)",
    "99 in event.data.many",
    # literals and plumbing
    "[event.data.k, event.data.count]",
    "[event.data.k, event.data.nope]",
    "{'k': event.data.k, 'n': event.data.count}",
    "{'k': event.data.nope}",
    "{'k': event.data.nope}.x",
    "{'a': 1}.a == 1",
    "dyn(event.data.count) == 150",
    "dyn(event.data.nope)",
    "event",
    "async",
    "async.data.k == 'x' && event.data.k == 'x'",
    "event.data.count > 100 && event.data.count < 200 && event.data.kind == 'a'",
    "!(event.data.count > 100) || event.data.k != 'x'",
    "-1 < event.data.neg",
    "- 1 < event.data.neg",
    "0x10 == 16",
    "1e3 == 1000.0",
]

# cel-python keeps an error inside a map literal as a value; the compiled path hands such
# calls to cel-python.
ERROR_IN_MAP = {"{'k': event.data.nope}", "{'k': event.data.nope}.x"}

# A few that must stay on cel-python (outside the compiled subset).
NOT_COMPILED = [
    "event.data.items.exists(i, i.qty > 1)",
    "event.data.tags.all(t, size(t) > 0)",
    "int(event.data.amount) == 150",
    "type(event.data.count) == int",
    "event.data.count == 150u",
    "b'ab' == b'ab'",
    "string(event.data.count) == '150'",
    "{1: 'a'}[1] == 'a'",
    "{event.data.k: 1}",
    "timestamp('2024-01-01T00:00:00Z') < timestamp('2025-01-01T00:00:00Z')",
]

SPEC = json.loads(
    (pathlib.Path(__file__).parent / "data" / "cel_spec_simple.json").read_text("utf-8")
)


def _check(source: str, activation: dict[str, Any]) -> tuple[Any, ...]:
    expression = compile_expression(source, field="f", variables=VARIABLES)
    expected = reference(expression, activation)
    got = compiled(expression, activation)
    if got[0] not in ("fallback", "not compiled"):
        assert agree(got, expected), f"{source!r}: compiled {got}, cel-python {expected}"
    # And what callers see: Expression.evaluate and .matches, whichever path they took.
    if expected[0] == "value":
        assert agree(("value", expression.evaluate(activation)), expected)
    elif expected[0] in ("error", "invalid", "over budget", "raised"):
        with pytest.raises(InvalidExpressionError):
            expression.evaluate(activation)
    if expected[0] == "invalid":
        with pytest.raises(InvalidExpressionError):
            expression.matches(activation)
    else:
        assert expression.matches(activation) is (expected[0] == "value" and expected[1] is True)
    return got


@pytest.mark.parametrize("source", EXPRESSIONS)
def test_corpus_gives_identical_outcomes_on_both_paths(source: str) -> None:
    expression = compile_expression(source, field="f", variables=VARIABLES)
    assert expression._compiled.fast is not None, f"{source!r} is not compiled"
    outcomes = [_check(source, activation) for activation in ACTIVATIONS.values()]
    # The activations that are plain JSON never need cel-python (apart from the few
    # operations whose operands are not plain JSON values, see below).
    json_outcomes = [
        outcome for name, outcome in zip(ACTIVATIONS, outcomes, strict=True) if name != "not json"
    ]
    if source not in ERROR_IN_MAP:
        assert any(outcome[0] != "fallback" for outcome in json_outcomes)


def test_most_of_the_corpus_runs_compiled() -> None:
    runs = fallbacks = 0
    for source in EXPRESSIONS:
        expression = compile_expression(source, field="f", variables=VARIABLES)
        for name, activation in ACTIVATIONS.items():
            if name == "not json":
                continue
            runs += 1
            fallbacks += compiled(expression, activation)[0] == "fallback"
    assert fallbacks < runs * 0.05, f"{fallbacks} of {runs} runs fell back to cel-python"


@pytest.mark.parametrize("source", NOT_COMPILED)
def test_outside_the_subset_stays_on_cel_python(source: str) -> None:
    expression = compile_expression(source, field="f", variables=VARIABLES)
    assert expression._compiled.fast is None
    for activation in ACTIVATIONS.values():
        _check(source, activation)


@pytest.mark.parametrize(
    "case", SPEC["cases"], ids=[f"{c['file']}.{c['name']}" for c in SPEC["cases"]]
)
def test_cel_spec_cases_give_identical_outcomes(case: dict[str, str]) -> None:
    try:
        expression = compile_expression(case["expr"], field="f", variables=())
    except InvalidExpressionError:
        return  # unknown functions or names: rejected before either path runs
    expected = reference(expression, {})
    got = compiled(expression, {})
    if got[0] not in ("fallback", "not compiled"):
        assert agree(got, expected), f"{case['expr']!r}: compiled {got}, cel-python {expected}"


def test_most_cel_spec_cases_in_the_subset_compile() -> None:
    compiled_count = 0
    for case in SPEC["cases"]:
        try:
            expression = compile_expression(case["expr"], field="f", variables=())
        except InvalidExpressionError:
            continue
        compiled_count += expression._compiled.fast is not None
    assert compiled_count >= 400


# --- the cost budget ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "size(event.data.s) > 0",
        "event.data.s.startsWith('y')",
        "event.data.s + event.data.s + event.data.s + event.data.s == ''",
        "event.data.xs == event.data.xs",
        "size(event.data.xs + event.data.xs + event.data.xs + event.data.xs) > 0",
        "event.data.s == 'x' || true",
    ],
)
@pytest.mark.parametrize(
    ("string", "items"), [(10_000, 10_000), (400_000, 200_000), (3_000_000, 0)]
)
def test_cost_budget_holds_on_the_compiled_path(
    source: str, string: int, items: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Large values: the compiled path keeps an upper bound of cel-python's cost and hands
    # the call over before that bound passes the budget, so the outcome is cel-python's,
    # over budget included. (Long lists are slow to convert for cel-python: kept shorter.)
    activation = {"event": {"data": {"s": "y" * string, "xs": [0] * items}}}
    expression = compile_expression(source, field="f", variables=VARIABLES)
    assert expression._compiled.fast is not None
    expected = reference(expression, activation)
    got = compiled(expression, activation)
    if got[0] != "fallback":
        assert agree(got, expected)
    if expected == ("over budget",):
        with pytest.raises(InvalidExpressionError, match=str(MAX_EVALUATION_COST)):
            expression.evaluate(activation)
        with caplog.at_level(logging.WARNING, logger="durable_core.cel"):
            assert expression.matches(activation) is False
        assert "cost budget" in caplog.text


def test_budget_cases_include_over_budget_ones() -> None:
    expression = compile_expression("size(event.data.s) > 0", field="f")
    activation = {"event": {"data": {"s": "y" * 3_000_000}}}
    assert reference(expression, activation) == ("over budget",)
    assert compiled(expression, activation) == ("fallback",)


def test_small_values_never_fall_back_for_cost() -> None:
    activation = {"event": {"data": {"s": "y" * 5000, "xs": [0] * 5000}}}
    expression = compile_expression(
        "size(event.data.s + event.data.s) > 0 && size(event.data.xs) > 0", field="f"
    )
    assert compiled(expression, activation) == ("value", True)


def test_a_ternary_checks_the_activation_first() -> None:
    # cel-python converts what both branches read before it evaluates; the compiled path
    # reads only the branch taken, so it checks the activation first.
    expression = compile_expression("event.data.n > 0 ? 1 : event.data.x", field="f")
    activation = {"event": {"data": {"n": 1, "x": object()}}}
    assert reference(expression, activation) == ("invalid",)
    assert compiled(expression, activation) == ("fallback",)
    with pytest.raises(InvalidExpressionError, match="JSON-like"):
        expression.matches(activation)
    assert compiled(expression, {"event": {"data": {"n": 1, "x": [2]}}}) == ("value", 1)


# --- Hypothesis: generated expressions over generated JSON events ----------------------------

KEYS = ["a", "b", "k", "n"]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.integers(min_value=-3, max_value=3)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, 1.0, 2.5, -1.5])
    | st.sampled_from(["", "a", "b", "ab", "x", "A", "é"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(KEYS), children, max_size=3),
    max_leaves=8,
)
events = st.fixed_dictionaries(
    {"data": st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4)}
)

literals = st.sampled_from(
    ["0", "1", "-1", "2", "9223372036854775807", "0.0", "1.0", "2.5", "-0.5", "1e300",
     "'a'", "'b'", "''", "'ab'", "true", "false", "null", "[]", "[1, 'a']", "['a', 'b']",
     "[1, 2]", "{}", "{'a': 1}", "{'k': 'a'}"]
)
paths = st.builds(
    lambda root, keys: root + "".join(keys),
    st.sampled_from(["event.data", "async.data"]),
    st.lists(st.sampled_from([".a", ".b", ".k", ".n", "[0]", "['a']", "[1]"]), max_size=2),
)


def _expressions(leaf: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        binary = st.sampled_from(
            ["==", "!=", "<", "<=", ">", ">=", "in", "&&", "||", "+", "-", "*", "/", "%"]
        )
        return (
            st.builds(lambda x, op, y: f"({x} {op} {y})", inner, binary, inner)
            | st.builds(lambda x: f"!{x}", inner)
            | st.builds(lambda x: f"-({x})", inner)
            | st.builds(lambda c, x, y: f"({c} ? {x} : {y})", inner, inner, inner)
            | st.builds(lambda x: f"size({x})", inner)
            | st.builds(lambda x: f"has({x})", paths)
            | st.builds(
                lambda x, method, y: f"{x}.{method}({y})",
                inner,
                st.sampled_from(["startsWith", "endsWith", "contains", "matches"]),
                inner,
            )
            | st.builds(lambda x, y: f"[{x}, {y}]", inner, inner)
            | st.builds(lambda x: f"{{'k': {x}}}", inner)
            | st.builds(lambda x, y: f"{x}[{y}]", inner, inner)
        )

    return st.recursive(leaf, extend, max_leaves=5)


def test_an_expression_cel_python_crashes_on_fails_the_same_way_for_callers() -> None:
    """Found by the test below: cel-python raises IndexError inside itself on ``&&`` of two
    errors; the compiled program reports the no-overload error CEL specifies, and a caller
    sees InvalidExpressionError either way."""
    for source in ("(0 && !{})", "!{} && 0"):
        expression = compile_expression(source, field="f", variables=VARIABLES)
        activation = {"event": {}, "async": {}}
        assert reference(expression, activation)[0] == "raised"
        assert compiled(expression, activation) == ("error", TypeError)
        _check(source, activation)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_expressions(literals | paths), events, events)
def test_generated_expressions_agree(source: str, event: dict[str, Any], async_: Any) -> None:
    try:
        expression = compile_expression(source, field="f", variables=VARIABLES)
    except InvalidExpressionError:
        return
    activation = {"event": event, "async": async_}
    expected = reference(expression, activation)
    got = compiled(expression, activation)
    if got[0] not in ("fallback", "not compiled"):
        assert agree(got, expected), f"{source!r}: compiled {got}, cel-python {expected}"


# --- the callers use the compiled path -------------------------------------------------------


def test_trigger_filters_and_wait_matches_run_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    from durable_core import App, Context, Event, on_event
    from durable_core.base import _cel
    from durable_core.testing import TestEngine

    interpreted: list[str] = []
    reference_evaluate = _cel._Compiled.evaluate

    def counting(self: Any, context: dict[str, Any], budget: int) -> Any:
        interpreted.append(str(self.program.ast))
        return reference_evaluate(self, context, budget)

    monkeypatch.setattr(_cel._Compiled, "evaluate", counting)
    app = App("shop")

    @app.function(id="paid", trigger=on_event("order/created", if_="event.data.amount > 100"))
    async def paid(ctx: Context) -> Any:
        payment = await ctx.step.wait_for_event(
            "payment", event="order/paid", timeout="1h",
            if_="async.data.orderId == event.data.orderId",
        )
        return None if payment is None else payment.data["orderId"]

    engine = TestEngine(app)
    assert engine.send(Event("order/created", {"amount": 5, "orderId": "o-0"})).runs == []
    run = engine.send(Event("order/created", {"amount": 150, "orderId": "o-1"})).runs[0]
    engine.send(Event("order/paid", {"orderId": "o-2"}))
    engine.send(Event("order/paid", {"orderId": "o-1"}))
    assert run.output == "o-1"
    assert interpreted == []  # every condition above ran as compiled Python
