"""Tests for durable_core.base._cel: compiling, validating and evaluating CEL expressions."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durable_core.base import _cel
from durable_core.base._cel import Expression, compile_expression
from durable_core.base._errors import InvalidExpressionError, ValidationError

EVENT = {
    "name": "shop/order.created",
    "data": {
        "amount": 150.5,
        "count": 150,
        "orderId": "o-1",
        "customer": {"email": "ada@example.com", "tier": "gold"},
        "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}],
        "tags": ["new", "vip"],
        "note": None,
        "paid": True,
    },
    "ts": 1714564800000,
}
ASYNC = {"name": "shop/order.paid", "data": {"orderId": "o-1", "amount": 150}}
ACTIVATION = {"event": EVENT, "async": ASYNC}


def ev(source: str, activation: dict[str, Any] | None = None) -> Any:
    return compile_expression(source, field="f").evaluate(
        ACTIVATION if activation is None else activation
    )


def match(source: str, activation: dict[str, Any] | None = None) -> bool:
    return compile_expression(source, field="f").matches(
        ACTIVATION if activation is None else activation
    )


# --- evaluation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("event.data.amount > 100", True),
        ("event.data.amount > 200", False),
        ("async.data.orderId == event.data.orderId", True),
        ("async.data.orderId != event.data.orderId", False),
        ("has(event.data.orderId)", True),
        ("has(event.data.x)", False),
        ("has(event.data.customer.email)", True),
        ("event.name == 'shop/order.created'", True),
        ("event.name == 'a/b'", False),
        ("event.name.startsWith('shop/')", True),
        ("event.name.endsWith('.created')", True),
        ("event.data.customer.email.contains('@example.')", True),
        ("event.data.customer.email.matches('^[a-z]+@')", True),
        ("size(event.data.items) == 2", True),
        ("event.data.items.exists(i, i.sku == 'b' && i.qty == 1)", True),
        ("event.data.items.all(i, i.qty > 0)", True),
        ("event.data.items.exists_one(i, i.qty > 1)", True),
        ("'vip' in event.data.tags", True),
        ("event.data.customer.tier in ['gold', 'platinum']", True),
        ("event.data.paid && !(event.data.note != null)", True),
        ("event.data.note == null", True),
        ("event.data.amount > 100 && async.data.orderId == event.data.orderId", True),
        ("event.data.amount > 1000 || event.data.customer.tier == 'gold'", True),
        ("event.data.count > 100 ? true : false", True),
        ("type(event.data.count) == int", True),
        ("type(event.data.amount) == double", True),
        ("event.data['orderId'] == 'o-1'", True),
        ("event.data.items[0].qty == 2", True),
        ("event.ts > 1700000000000", True),
    ],
)
def test_matches_realistic_expressions(source: str, expected: bool) -> None:
    assert match(source) is expected
    assert ev(source) is expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # int field vs double literal and double field vs int literal, in both orders
        ("event.data.count > 100.5", True),
        ("event.data.count < 100.5", False),
        ("100.5 < event.data.count", True),
        ("event.data.amount > 100", True),
        ("100 < event.data.amount", True),
        ("event.data.amount >= 150", True),
        ("event.data.amount <= 150", False),
        ("event.data.count == 150.0", True),
        ("150.0 == event.data.count", True),
        ("event.data.count != 150.0", False),
        ("event.data.amount == 150", False),
        ("async.data.amount == 150.0", True),
        ("async.data.amount < event.data.amount", True),
        ("event.data.amount > async.data.amount", True),
        ("1u < 2.5", True),
        ("2.5 > 1u", True),
        ("event.data.count == 150", True),  # same types keep working
        ("event.data.amount == 150.5", True),
    ],
)
def test_mixed_int_and_double_comparisons(source: str, expected: bool) -> None:
    assert ev(source) is expected


def test_mixed_comparisons_are_exact_for_large_integers() -> None:
    big = {"event": {"data": {"n": 2**53 + 1}}}
    assert ev("event.data.n > 9007199254740992.0", big) is True  # 2**53 as a double
    assert ev("event.data.n == 9007199254740992.0", big) is False


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("event.data.count + 0.5", 150.5),
        ("0.5 + event.data.count", 150.5),
        ("event.data.amount - 0.5", 150.0),
        ("event.data.amount * 2", 301.0),
        ("2 * event.data.amount", 301.0),
        ("event.data.count / 4.0", 37.5),
        ("event.data.count / 4", 37),  # int / int stays integer division, as in CEL
        ("event.data.count % 7", 3),
    ],
)
def test_mixed_arithmetic_computes_in_double(source: str, expected: float) -> None:
    result = ev(source)
    assert result == expected
    assert type(result) is type(expected)


def test_heterogeneous_equality_is_false_not_an_error() -> None:
    assert ev("event.data.orderId == 1") is False
    assert ev("event.data.orderId != 1") is True
    assert ev("event.data.tags == 'vip'") is False


@pytest.mark.parametrize(
    "source",
    [
        "event.data.missing > 1",
        "event.data.missing == 'x'",
        "event.nope.deeper == 1",
        "async.data.amount > 1",  # 'async' absent from the activation below
        "event.data.customer.tier > 1",  # string vs int ordering: no overload
        "event.data.tags[5] == 'x'",
        "1 / 0 == 1",
        "event.data.customer.email.startsWith(1)",
    ],
)
def test_evaluation_errors_never_match(source: str) -> None:
    activation = {"event": EVENT}
    assert match(source, activation) is False
    with pytest.raises(InvalidExpressionError) as info:
        ev(source, activation)
    assert info.value.field == "f"
    assert str(info.value).startswith("f: evaluating CEL expression ")
    assert "has(" in str(info.value)  # suggests guarding with has()


def test_error_messages_name_the_field() -> None:
    expression = compile_expression("event.data.x > 1", field="wait[orderPaid].if_")
    with pytest.raises(InvalidExpressionError) as info:
        expression.evaluate({"event": {"data": {}}})
    assert str(info.value).startswith("wait[orderPaid].if_: ")
    assert "no such member" in str(info.value)
    assert "'x'" in str(info.value)


def test_has_guards_a_missing_key() -> None:
    source = "has(event.data.x) && event.data.x > 1"
    assert match(source, {"event": {"data": {}}}) is False
    assert match(source, {"event": {"data": {"x": 2}}}) is True
    assert ev(source, {"event": {"data": {}}}) is False


@pytest.mark.parametrize(
    "source",
    ["event.data.amount", "'yes'", "1", "event.data.tags", "null", "event.data"],
)
def test_non_boolean_results_do_not_match(source: str) -> None:
    assert match(source) is False


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("event.data.count", 150),
        ("event.data.amount", 150.5),
        ("event.name", "shop/order.created"),
        ("event.data.note", None),
        ("event.data.paid", True),
        ("event.data.tags", ["new", "vip"]),
        ("event.data.customer", {"email": "ada@example.com", "tier": "gold"}),
        ("event.data.items.map(i, i.qty * 10)", [20, 10]),
        ("{'total': event.data.count + 1, 'ok': true}", {"total": 151, "ok": True}),
        ("b'ab'", b"ab"),
        ("event.data.items.filter(i, i.qty > 1)", [{"sku": "a", "qty": 2}]),
    ],
)
def test_results_are_plain_python(source: str, expected: Any) -> None:
    result = ev(source)
    assert result == expected
    assert _only_plain_types(result)


def _only_plain_types(value: Any) -> bool:
    if value is None or type(value) in (bool, int, float, str, bytes):
        return True
    if type(value) is list:
        return all(_only_plain_types(item) for item in value)
    if type(value) is dict:
        return all(_only_plain_types(k) and _only_plain_types(v) for k, v in value.items())
    return False


def test_tuples_and_huge_ints_are_accepted() -> None:
    activation = {"event": {"data": {"pair": (1, "x"), "huge": 2**70}}}
    assert ev("event.data.pair[1] == 'x'", activation) is True
    assert ev("event.data.huge > 1000", activation) is True  # passed as a double
    assert ev("event.data.huge", activation) == float(2**70)


def test_values_that_are_not_json_like_are_rejected_even_by_matches() -> None:
    expression = compile_expression("event.data.x == 1", field="trigger[0].if_")
    activation = {"event": {"data": {"x": object()}}}
    with pytest.raises(
        InvalidExpressionError, match=r"^trigger\[0\]\.if_: cannot pass a value of type object"
    ):
        expression.evaluate(activation)
    with pytest.raises(InvalidExpressionError, match="JSON-like"):
        expression.matches(activation)


def test_map_keys_must_be_strings_or_ints() -> None:
    expression = compile_expression("size(event.data) == 1", field="f")
    assert expression.matches({"event": {"data": {1: "x"}}}) is True
    with pytest.raises(InvalidExpressionError, match="a map key of type tuple"):
        expression.evaluate({"event": {"data": {(1, 2): "x"}}})


def test_cel_types_and_times_come_back_as_python_values() -> None:
    assert ev("type(event.data.count)") == "int"
    assert ev("type(event.name)") == "string"
    assert ev("type(null)") == "null_type"
    stamp = ev("timestamp('2024-05-01T14:00:00+02:00')")
    assert stamp == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert type(stamp) is datetime and stamp.tzinfo is UTC
    span = ev("duration('90s')")
    assert span == timedelta(seconds=90) and type(span) is timedelta


def test_activation_is_not_mutated() -> None:
    event = {"data": {"amount": 5, "other": [1, 2]}}
    snapshot = repr(event)
    assert match("event.data.amount == 5 && size(event.data.other) == 2", {"event": event})
    assert repr(event) == snapshot


def test_unused_variables_need_no_value() -> None:
    # A trigger filter evaluated without 'async' or 'vars' in the activation.
    assert match("event.data.amount > 100", {"event": EVENT}) is True


# --- compilation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    ["event.data.amount >", "event.data.amount > 100)", "'unterminated", "a +* b", "", "  "],
)
def test_syntax_errors_are_rejected(source: str) -> None:
    with pytest.raises(InvalidExpressionError) as info:
        compile_expression(source, field="trigger[0].if_")
    message = str(info.value)
    assert message.startswith(f"trigger[0].if_: invalid CEL expression {source!r} (syntax error")
    assert "fix the expression" in message
    assert "https://github.com/google/cel-spec" in message
    assert info.value.field == "trigger[0].if_"
    assert isinstance(info.value, ValidationError)


def test_syntax_error_message_points_at_the_problem() -> None:
    with pytest.raises(InvalidExpressionError) as info:
        compile_expression("event.data.amount > 1 ) ", field="f")
    assert "column 23" in str(info.value)
    assert "near ')'" in str(info.value)


@pytest.mark.parametrize(
    ("source", "variables", "unknown"),
    [
        ("async.data.orderId == event.data.orderId", ("event",), "async"),
        ("vars.limit > 1", ("event", "async"), "vars"),
        ("foo.bar == 1", ("event", "async", "vars"), "foo"),
        ("evnt.data.x == 1", ("event",), "evnt"),
        ("event.data.items.exists(i, j > 1)", ("event",), "j"),
        ("[1, 2].map(x, x + y)", ("event",), "y"),
        # a macro variable is only bound inside the macro
        ("event.data.items.exists(i, i.qty > 1) && i.qty > 1", ("event",), "i"),
        ("size(data) > 0", ("event",), "data"),
        ("{'a': amount}", ("event",), "amount"),
    ],
)
def test_unknown_variables_are_rejected(
    source: str, variables: tuple[str, ...], unknown: str
) -> None:
    with pytest.raises(InvalidExpressionError) as info:
        compile_expression(source, field="trigger[0].if_", variables=variables)
    message = str(info.value)
    assert message.startswith("trigger[0].if_: invalid CEL expression")
    assert f"unknown variable(s) {unknown};" in message
    assert f"may only use: {', '.join(variables)}" in message


@pytest.mark.parametrize(
    ("source", "variables"),
    [
        ("event.data.amount > 100", ("event",)),
        ("async.data.orderId == event.data.orderId", ("event", "async")),
        ("event.data.items.exists(i, i.qty > 1)", ("event",)),
        ("event.data.items.map(event, event.qty).exists(q, q == 2)", ("event",)),
        ("[1, 2].all(x, [3].exists(y, x < y))", ()),
        ("type(event.data.count) == int && type(event.name) == string", ("event",)),
        ("dyn(event.data.count) == 150", ("event",)),
        ("int(event.data.amount) == 150 && double(event.data.count) == 150.0", ("event",)),
        ("string(event.data.count) == '150'", ("event",)),
        ("'name' in event && event.data.tags.size() == 2", ("event",)),
        ("{'key': 1}.key == 1", ()),
        ("true && !false && null == null", ()),
        ("(event).data.count == 150", ("event",)),
        ("timestamp('2024-01-01T00:00:00Z') < timestamp('2025-01-01T00:00:00Z')", ()),
        ("duration('1h') > duration('30m')", ()),
    ],
)
def test_allowed_expressions_compile_and_evaluate(source: str, variables: tuple[str, ...]) -> None:
    expression = compile_expression(source, field="f", variables=variables)
    assert expression.source == source
    assert expression.matches({"event": EVENT, "async": ASYNC}) is True


@pytest.mark.parametrize(
    "source",
    ["lowerAscii(event.name) == 'x'", "event.name.lowerAscii() == 'x'", "now() > 1"],
)
def test_unknown_functions_are_rejected(source: str) -> None:
    with pytest.raises(InvalidExpressionError, match=r"unknown function\(s\)"):
        compile_expression(source, field="f")


def test_non_string_sources_are_rejected() -> None:
    with pytest.raises(InvalidExpressionError, match="must be a string"):
        compile_expression(42, field="f")  # type: ignore[arg-type]


def test_compiled_once_and_cached() -> None:
    source = "event.data.amount > 123.25 && event.name != 'cache-test'"
    before = _cel._compile.cache_info()
    first = compile_expression(source, field="a")
    second = compile_expression(source, field="b")
    after = _cel._compile.cache_info()
    assert first._compiled is second._compiled
    assert after.misses == before.misses + 1
    assert after.hits == before.hits + 1
    # The field is per call, even though the compiled program is shared.
    assert (first.field, second.field) == ("a", "b")
    # Another variable set is another cache entry (and may be rejected differently).
    third = compile_expression(source, field="c", variables=("event",))
    assert third._compiled is not first._compiled


def test_failed_compilations_report_the_current_field() -> None:
    for field in ("one", "two"):
        with pytest.raises(InvalidExpressionError, match=f"^{field}: "):
            compile_expression("event.data.amount >", field=field)


def test_environment_does_not_lower_the_recursion_limit() -> None:
    previous = sys.getrecursionlimit()
    _cel._environment.cache_clear()
    try:
        sys.setrecursionlimit(6000)
        _cel._environment()
        assert sys.getrecursionlimit() == 6000
    finally:
        sys.setrecursionlimit(previous)
    assert isinstance(compile_expression("1 < 2", field="f"), Expression)


def test_deeply_nested_expressions_are_rejected_or_work_but_never_crash() -> None:
    source = "(" * 400 + "1" + ")" * 400 + " == 1"
    try:
        expression = compile_expression(source, field="f", variables=())
    except InvalidExpressionError as error:
        assert "f: invalid CEL expression" in str(error)
    else:
        assert expression.matches({}) in (True, False)


# --- the activation is converted only as far as the expression reads it -----------------------


def test_only_the_paths_read_are_converted() -> None:
    compiled = compile_expression(
        "event.data.amount > 1 && async.data.orderId == event.data.orderId", field="f"
    )._compiled
    assert compiled.needs == {
        "event": {"data": {"amount": None, "orderId": None}},
        "async": {"data": {"orderId": None}},
    }
    whole = compile_expression("size(event.data) > 1 && event.data.amount > 1", field="f")
    assert whole._compiled.needs == {"event": {"data": None}}
    indexed = compile_expression("event.data['amount'] > 1", field="f")
    assert indexed._compiled.needs == {"event": {"data": None}}
    shadowed = compile_expression("event.data.items.exists(event, event.qty > 1)", field="f")
    assert shadowed._compiled.needs == {"event": {"data": {"items": None}}}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "a", "gold", "o-1", "x/y"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["a", "b", "x", "amount", "data", "tier"]), children, max_size=4
        )
    ),
    max_leaves=12,
)
PROPERTY_EXPRESSIONS = [
    "event.data.amount > 100",
    "event.data.a == event.data.b",
    "has(event.data.x) && event.data.x.a == 'gold'",
    "size(event.data) > 1 || event.data.amount == 1",
    "event.data.a.b.x != null",
    "event.data.x",
    "event.data",
    "event.data.a.exists(i, i == 1)",
    "'a' in event.data && event.data.tier == 'gold'",
    "async.data.x == event.data.x",
    "event.data.amount + 1 > 2.5",
]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(PROPERTY_EXPRESSIONS),
    st.fixed_dictionaries({"data": json_values}),
    st.fixed_dictionaries({"data": json_values}),
)
def test_partial_conversion_gives_the_same_result_as_full_conversion(
    source: str, event: dict[str, Any], async_: dict[str, Any]
) -> None:
    expression = compile_expression(source, field="f")
    activation = {"event": event, "async": async_}
    full_context = {name: _cel._to_cel(value) for name, value in activation.items()}
    try:
        full: Any = _cel._from_cel(expression._compiled.program.evaluate(full_context))
    except Exception:
        full = "error"
    try:
        partial: Any = expression.evaluate(activation)
    except InvalidExpressionError:
        partial = "error"
    assert partial == full or (_is_nan(partial) and _is_nan(full))
    assert expression.matches(activation) is (full is True)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def test_evaluation_speed() -> None:
    big_event = {
        "name": "shop/order.created",
        "data": {
            **{f"k{i}": {"a": [1, 2, 3, {"b": "c"}], "s": "x" * 50} for i in range(500)},
            "amount": 150.5,
            "orderId": "o-1",
        },
    }
    expression = compile_expression(
        "event.data.amount > 100 && async.data.orderId == event.data.orderId", field="f"
    )
    activation = {"event": big_event, "async": ASYNC}
    count = 500
    started = time.perf_counter()
    for _ in range(count):
        assert expression.matches(activation)
    per_call = (time.perf_counter() - started) / count
    whole = compile_expression("size(event.data) > 1", field="f")
    started = time.perf_counter()
    for _ in range(20):
        assert whole.matches({"event": big_event})
    whole_per_call = (time.perf_counter() - started) / 20
    started = time.perf_counter()
    for _ in range(count):
        compile_expression("event.data.amount > 100", field="f")
    cached_compile = (time.perf_counter() - started) / count
    print(
        f"\nCEL matches (paths only, 500-key event): {per_call * 1e6:.0f} us; "
        f"(whole event converted): {whole_per_call * 1e6:.0f} us; "
        f"cached compile: {cached_compile * 1e6:.2f} us"
    )
