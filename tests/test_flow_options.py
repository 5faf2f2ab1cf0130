"""The flow-control options of ``@app.function`` are checked when the function is defined:
each bad value raises a typed error naming the field, and the combinations Inngest rejects
are rejected with the reason. What each option does is tested in its own file."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from durable_core import (
    App,
    Batch,
    CancelOn,
    Concurrency,
    Debounce,
    FunctionConfigError,
    InvalidExpressionError,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    on_event,
)


def define(**options: Any) -> Any:
    app = App("flow-options")

    @app.function(id="f", trigger=on_event("e"), **options)
    async def f(ctx: Any) -> None:
        return None

    return f


@pytest.mark.parametrize(("options", "field", "words"), [
    ({"concurrency": 0}, "concurrency[0].limit", "[1, 100000]"),
    ({"concurrency": "5"}, "concurrency", "expected an int"),
    ({"concurrency": [Concurrency(1), Concurrency(2, key="event.data.k"),
                      Concurrency(3, key="event.data.j")]}, "concurrency", "limit of 2"),
    ({"concurrency": [Concurrency(1), Concurrency(2)]}, "concurrency", "same scope and key"),
    ({"concurrency": Concurrency(2, scope="env")}, "concurrency[0].scope", "'fn' or 'app'"),
    ({"concurrency": Concurrency(2, scope="app")}, "concurrency[0].key", "needs a key"),
    ({"concurrency": [5]}, "concurrency[0]", "expected Concurrency"),
    ({"throttle": Throttle(0, "1s")}, "throttle.limit", "[1, 10000]"),
    ({"throttle": Throttle(1, "500ms")}, "throttle.period", "under the minimum of 1s"),
    ({"throttle": Throttle(1, "8d")}, "throttle.period", "longer than"),
    ({"throttle": Throttle(1, "1s", burst=0)}, "throttle.burst", "[1, 10000]"),
    ({"throttle": 5}, "throttle", "expected Throttle"),
    ({"rate_limit": RateLimit(1, "25h")}, "rate_limit.period", "longer than"),
    ({"rate_limit": RateLimit(True, "1h")}, "rate_limit.limit", "must be an int"),
    ({"debounce": Debounce("0s")}, "debounce.period", "under the minimum"),
    ({"debounce": Debounce("10s", timeout="5s")}, "debounce.timeout", "shorter than"),
    ({"batch_events": Batch(0, "5s")}, "batch_events.max_size", "[1, 100]"),
    ({"batch_events": Batch(101, "5s")}, "batch_events.max_size", "[1, 100]"),
    ({"batch_events": Batch(10, "61s")}, "batch_events.timeout", "longer than"),
    ({"priority": Priority(run="")}, "priority.run", "CEL expression"),
    ({"singleton": Singleton(mode="queue")}, "singleton.mode", "'skip' or 'cancel'"),
])
def test_bad_values_name_the_field(options: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(FunctionConfigError) as info:
        define(**options)
    assert info.value.field == field
    assert "'f'" in str(info.value) and words in str(info.value)


@pytest.mark.parametrize("options", [
    {"concurrency": Concurrency(2, key="event.data.")},
    {"throttle": Throttle(1, "1s", key="event.data ==")},
    {"singleton": Singleton(key="nope(")},
])
def test_keys_must_compile(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidExpressionError) as info:
        define(**options)
    assert info.value.field is not None and info.value.field.endswith(".key")


@pytest.mark.parametrize(("other", "name"), [
    ({"debounce": Debounce("10s")}, "debounce"),
    ({"idempotency": "event.data.k"}, "idempotency"),
    ({"rate_limit": RateLimit(1, "1m")}, "rate_limit"),
    ({"cancel_on": CancelOn("stop")}, "cancel_on"),
    ({"priority": Priority(run="10")}, "priority"),
    ({"singleton": Singleton()}, "singleton"),
])
def test_batching_conflicts_are_rejected(other: dict[str, Any], name: str) -> None:
    with pytest.raises(FunctionConfigError) as info:
        define(batch_events=Batch(10, "5s"), **other)
    assert info.value.field == "batch_events"
    assert f"cannot be combined with {name}" in str(info.value)


def test_valid_options_are_bound_and_described() -> None:
    f = define(
        concurrency=[Concurrency(2, key="event.data.customer"),
                     Concurrency(10, key="event.data.region", scope="app")],
        throttle=Throttle(3, dt.timedelta(minutes=1), burst=2, key="event.data.customer"),
        rate_limit=RateLimit(100, "1h"),
        debounce=Debounce("30s", key="event.data.customer", timeout="5m"),
        priority=Priority(run="event.data.vip ? 120 : 0"),
        singleton=Singleton(key="event.data.customer", mode="cancel"),
    )
    assert f.flow.throttle.period_ms == 60_000 and f.flow.debounce.timeout_ms == 300_000
    assert [c.limit for c in f.flow.concurrency] == [2, 10]
    options = f.describe()["options"]
    assert options["concurrency"] == [
        {"limit": 2, "key": "event.data.customer", "scope": "fn"},
        {"limit": 10, "key": "event.data.region", "scope": "app"}]
    assert options["throttle"] == {"limit": 3, "period": "1m", "burst": 2,
                                   "key": "event.data.customer"}
    assert options["rate_limit"] == {"limit": 100, "period": "1h", "key": None}
    assert options["debounce"] == {"period": "30s", "key": "event.data.customer",
                                   "timeout": "5m"}
    assert options["priority"] == {"run": "event.data.vip ? 120 : 0"}
    assert options["singleton"] == {"key": "event.data.customer", "mode": "cancel"}
    assert define(concurrency=5).flow.concurrency[0].limit == 5
    plain = define().describe()["options"]
    assert not ({"concurrency", "throttle", "batch_events"} & set(plain))
    assert define(batch_events=Batch(5, "10s")).describe()["options"]["batch_events"] == {
        "max_size": 5, "timeout": "10s", "key": None, "if": None}
