"""CEL conditions: the compiled closures against cel-python, per expression.

For each expression, ``Expression.matches`` on the compiled path (what trigger filters and
wait matches run) and the same evaluation through cel-python (the activation converted as
``_cel`` did before, then cel-python's bounded interpreter), timed in several rounds of CPU
time (``time.process_time``: on a shared machine, time spent descheduled is not counted); the
table shows the median per call of each and the ratio::

    python benchmarks/cel.py [--rounds 7] [--seconds 0.2]

The event carries a realistic payload (a few dozen keys, a nested customer, a list of items),
plus 500 unrelated keys with ``--big``, which costs cel-python nothing extra (it converts
only what the expression reads) but shows that the compiled path does not touch them either.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from durable_core.base._cel import MAX_EVALUATION_COST, compile_expression

EXPRESSIONS = [
    "event.data.k == 'x'",
    "async.data.k == event.data.k",
    "event.data.amount > 100 && event.data.kind == 'a'",
    "event.name == 'shop/order.created' && event.data.customer.tier in ['gold', 'platinum']",
    "has(event.data.coupon) || event.data.amount * 2 > 250.0",
    "event.data.customer.email.endsWith('@example.com') && size(event.data.items) > 1",
    "event.data.items[0].sku == 'a' && !event.data.paid",
    "event.data.customer.email.matches('^[a-z]+@')",
    "event.data.items.exists(i, i.qty > 1)",  # a macro: stays on cel-python
]


def _event(big: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "k": "x",
        "amount": 150,
        "kind": "a",
        "orderId": "o-1",
        "paid": False,
        "customer": {"email": "ada@example.com", "tier": "gold", "id": 42},
        "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}],
        "tags": ["new", "vip"],
        **{f"field{i}": i for i in range(30)},
    }
    if big:
        data.update({f"k{i}": {"a": [1, 2, 3, {"b": "c"}], "s": "x" * 50} for i in range(500)})
    return {"name": "shop/order.created", "id": "01HX", "ts": 1714564800000, "data": data}


def _per_call(call: Callable[[], Any], rounds: int, seconds: float) -> float:
    """Median over ``rounds`` of the time per call (seconds), each round ~``seconds`` long."""
    count = 1
    while True:  # calibrate
        started = time.process_time()
        for _ in range(count):
            call()
        if time.process_time() - started > seconds / 4:
            break
        count *= 2
    count = max(1, int(count * seconds / max(time.process_time() - started, 1e-9)))
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(count):
            call()
        samples.append((time.process_time() - started) / count)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.2, help="length of one round")
    parser.add_argument("--big", action="store_true", help="500 extra keys in event.data")
    args = parser.parse_args()
    activation = {"event": _event(args.big), "async": {"data": {"k": "x"}}}
    print(f"{'expression':88} {'compiled':>10} {'cel-python':>11} {'ratio':>7}")
    for source in EXPRESSIONS:
        expression = compile_expression(source, field="bench", variables=("event", "async"))
        compiled = expression._compiled

        def reference(expression: Any = expression, compiled: Any = compiled) -> Any:
            return compiled.evaluate(expression._context(activation), MAX_EVALUATION_COST)

        assert expression.matches(activation) == bool(reference()), source
        def matches(expression: Any = expression) -> bool:
            return bool(expression.matches(activation))

        fast = _per_call(matches, args.rounds, args.seconds)
        slow = _per_call(reference, args.rounds, args.seconds)
        note = "" if compiled.fast is not None else "  (not compiled: a macro)"
        print(f"{source:88} {fast * 1e6:8.2f}us {slow * 1e6:9.1f}us {slow / fast:6.0f}x{note}")


if __name__ == "__main__":
    main()
