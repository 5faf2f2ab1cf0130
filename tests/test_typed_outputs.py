"""Typed outputs: a step body, a function or an invoked child annotated ``-> T`` gives a ``T``
when it runs and when it is replayed from the journal (rebuilt through the app's cattrs
converter); an unannotated value that would change type on the JSON round trip is refused
with a SerializationError naming the step, the type and the fix.

The replays here are real: a fresh engine, on the store reopened, claims the sleeping run and
rebuilds it from its journal. The Hypothesis round trip runs on every store (memory, SQLite,
PostgreSQL)."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import functools
import pathlib
import typing
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durable_core import (
    App,
    Client,
    Context,
    Event,
    InvalidEventError,
    SerializationError,
    make_converter,
    on_event,
)
from durable_core.base import _serde
from durable_core.store import Store
from durable_core.testing import TestEngine
from stores import MemoryStore, PostgresStore, SQLiteStore

T = TypeVar("T")
UTC = dt.UTC


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Size(enum.IntEnum):
    S = 1
    M = 2


class Mood(enum.StrEnum):
    HAPPY = "happy"


@attrs.define
class Order:
    id: str
    placed: dt.datetime
    total: decimal.Decimal
    tags: frozenset[str]


@dataclasses.dataclass
class Line:
    sku: str
    qty: int
    colors: list[Color]


@attrs.frozen
class Wrap(Generic[T]):
    value: T


@attrs.define(eq=False)
class Opaque:
    """No value equality (compared by identity): stored by its hooks, trusted."""

    n: int


def _body(value: Any, hint: Any = None) -> Callable[[], Any]:
    """A step body returning ``value``, annotated ``-> hint`` (unannotated for None)."""

    def body() -> Any:
        return value

    body.__annotations__ = {} if hint is None else {"return": hint}
    return body


# --------------------------------------------------------------------------- harness


class Harness:
    """One function whose step ``v`` runs the current body, then sleeps: the first engine
    runs the body (the live value), a second engine, on the store reopened, wakes the run
    and replays it from the journal (the replayed value)."""

    def __init__(self, open_store: Callable[[], Store], app_id: str = "typed") -> None:
        self.open_store = open_store
        self.app = App(app_id)
        self.body: Callable[[], Any] = _body(None)
        self.seen: list[Any] = []

        @self.app.function(id="f", trigger=on_event("typed/go"))
        async def f(ctx: Context) -> None:
            value = await ctx.step.run("v", self.body)
            self.seen.append(value)
            await ctx.step.sleep("nap", "1h")

    def round_trip(self, body: Callable[[], Any]) -> tuple[Any, Any]:
        """(the value the code saw live, the value it saw replayed by a fresh engine)."""
        self.body, self.seen = body, []
        first_store = self.open_store()
        first = TestEngine(self.app, store=first_store)
        [run] = first.send(Event("typed/go")).runs
        assert run.status == "sleeping", run.error
        close(first_store)
        again = self.open_store()
        second = TestEngine(self.app, store=again, start=first.now)
        second.advance("1h")
        status = second.run(run.id).status
        close(again)
        assert status == "completed"
        assert len(self.seen) == 2, self.seen
        return self.seen[0], self.seen[1]

    def failure(self, body: Callable[[], Any]) -> str:
        """The error message of the step that ``body`` fails."""
        self.body, self.seen = body, []
        store = self.open_store()
        engine = TestEngine(self.app, store=store)
        [run] = engine.send(Event("typed/go")).runs
        error = run.error
        [step] = run.steps
        close(store)
        assert error is not None and error.type == "StepError", error
        assert step.status == "failed" and step.attempts == 1  # refused at once, no retry
        assert self.seen == []
        return error.message


def close(store: Store) -> None:
    closer = getattr(store, "close", None)
    if closer is not None and not isinstance(store, MemoryStore):
        closer()


@pytest.fixture
def memory() -> Harness:
    store = MemoryStore()
    return Harness(lambda: store)


# --------------------------------------------------------------------------- per type

ORDER = Order("o-1", dt.datetime(2026, 3, 1, 9, 30, tzinfo=UTC), decimal.Decimal("19.90"),
              frozenset({"gift", "rush"}))
CASES: list[tuple[str, Any, Any]] = [
    ("attrs", ORDER, Order),
    ("dataclass", Line("sku-1", 2, [Color.RED, Color.BLUE]), Line),
    ("datetime", dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), dt.datetime),
    ("datetime-offset",
     dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
     dt.datetime),
    ("date", dt.date(2026, 2, 28), dt.date),
    ("time", dt.time(23, 59, 58, 1), dt.time),
    ("timedelta", dt.timedelta(days=3, seconds=7, microseconds=11), dt.timedelta),
    ("decimal", decimal.Decimal("1234567890.123456789012345678901234567890"), decimal.Decimal),
    ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678"), uuid.UUID),
    ("bytes", b"\x00\x01\xff binary", bytes),
    ("set", {3, 1, 2}, set[int]),
    ("frozenset", frozenset({"a", "b"}), frozenset[str]),
    ("enum", Color.BLUE, Color),
    ("intenum", Size.M, Size),
    ("strenum", Mood.HAPPY, Mood),
    ("tuple", (1, "a", 2.5), tuple[int, str, float]),
    ("tuple-var", (1, 2, 3), tuple[int, ...]),
    ("optional-some", Line("x", 1, []), Line | None),
    ("optional-none", None, Line | None),
    ("union-int", 7, int | str),
    ("union-str", "seven", int | str),
    ("typing-optional", dt.date(2026, 1, 1), typing.Optional[dt.date]),  # noqa: UP045
    ("float-from-int", 3, float),
    ("nested", {"a": [{1, 2}], "b": []}, dict[str, list[set[int]]]),
    ("list-of-attrs", [ORDER, ORDER], list[Order]),
    ("dict-of-dataclasses", {"x": Line("x", 1, [Color.RED])}, dict[str, Line]),
    ("generic-attrs", Wrap(dt.date(2026, 5, 1)), Wrap[dt.date]),
    ("plain-dict", {"k": [1, "two", None, True, 1.5]}, dict[str, Any]),
    ("str-to-strenum", "happy", Mood),
    ("int-to-intenum", 2, Size),
    ("int-to-decimal", 5, decimal.Decimal),
    ("int-optional", 4, int | None),
]


@pytest.mark.parametrize(("value", "hint"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_an_annotated_body_gives_its_type_live_and_on_replay(
    memory: Harness, value: Any, hint: Any
) -> None:
    live, replayed = memory.round_trip(_body(value, hint))
    assert live == value and replayed == value
    # A plain class annotation gives that class (a str as `-> Mood` is a Mood, 5 as
    # `-> Decimal` a Decimal), else the value's; under a JSON scalar annotation an int, str,
    # bool or None is recorded as it is (3 as `-> float` stays 3, live and on replay).
    plain = typing.get_origin(hint) is None and isinstance(hint, type)
    as_is = hint in (int, float, str, bool) and type(value) in (int, str, bool)
    expected = hint if plain and not as_is else type(value)
    assert type(live) is expected and type(replayed) is expected


def test_an_annotation_of_a_base_type_rebuilds_the_base_type(memory: Harness) -> None:
    value = collections.defaultdict(list, {"a": [1]})
    live, replayed = memory.round_trip(_body(value, dict[str, list[int]]))
    assert live == replayed == {"a": [1]} and type(live) is dict and type(replayed) is dict


def test_a_pydantic_model_round_trips() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Address(pydantic.BaseModel):  # type: ignore[misc,name-defined]
        street: str
        moved_in: dt.date
        codes: set[int]

    value = Address(street="Main", moved_in=dt.date(2020, 1, 1), codes={1, 2})
    harness = Harness(lambda: MemoryStore())
    store = MemoryStore()
    harness.open_store = lambda: store
    live, replayed = harness.round_trip(_body(value, Address))
    assert type(live) is Address and type(replayed) is Address
    assert live == value == replayed


def test_a_class_without_equality_is_stored_by_its_hooks(memory: Harness) -> None:
    live, replayed = memory.round_trip(_body(Opaque(5), Opaque))
    assert type(live) is Opaque and type(replayed) is Opaque
    assert live.n == replayed.n == 5


class Ambiguous:
    """Like an array: its ``==`` raises instead of answering."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        raise ValueError("the truth value is ambiguous")

    __hash__ = None  # type: ignore[assignment]


def test_a_value_whose_equality_raises_is_trusted_to_its_hooks(memory: Harness) -> None:
    memory.app.converter.register_unstructure_hook(Ambiguous, lambda a: a.n)
    memory.app.converter.register_structure_hook(Ambiguous, lambda raw, _t: Ambiguous(raw))
    live, replayed = memory.round_trip(_body(Ambiguous(3), Ambiguous))
    assert type(live) is Ambiguous and type(replayed) is Ambiguous
    assert live.n == replayed.n == 3


def happy_text():  # type: ignore[no-untyped-def]
    return "happy"


def happy_mood() -> Mood:
    return "happy"  # type: ignore[return-value]  # the annotation rebuilds it


def test_alternating_bodies_each_get_their_own_annotation() -> None:
    """One step object serves step after step (the hot path recycles it, caching the last
    body's annotation): each body's own annotation applies, live and on replay."""
    app = App("typed-alternate")
    seen: list[list[Any]] = []

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> None:
        got = []
        for body in (happy_text, happy_mood, happy_mood, happy_text, happy_text, happy_mood):
            got.append(await ctx.step.run("s", body))
        seen.append(got)
        await ctx.step.sleep("nap", "1h")

    store = MemoryStore()
    first = TestEngine(app, store=store)
    first.send(Event("go"))
    TestEngine(app, store=store, start=first.now).advance("1h")
    for got in seen:
        assert [type(v) for v in got] == [str, Mood, Mood, str, str, Mood]
    assert len(seen) == 2


def test_plain_json_without_an_annotation_round_trips(memory: Harness) -> None:
    value = {"name": "x", "items": [1, 2.5, None, True, {"deep": ["é", -0.0]}]}
    live, replayed = memory.round_trip(_body(value))
    assert live == value == replayed
    assert live is not value  # the code sees what a replay sees: the value read back


# --------------------------------------------------------------------------- refusals

REFUSED: list[tuple[str, Any, list[str]]] = [
    ("bytes", b"\x00\x01", ["a bytes", "-> bytes"]),
    ("set", {1, 2}, ["a set", "-> set[...]"]),
    ("tuple", (1, 2), ["a tuple ((1, 2)) would come back as a list ([1, 2])", "-> tuple[...]"]),
    ("datetime", dt.datetime(2026, 1, 1, tzinfo=UTC), ["a datetime.datetime",
                                                       "-> datetime.datetime"]),
    ("decimal", decimal.Decimal("1.5"), ["a decimal.Decimal", "-> decimal.Decimal"]),
    ("uuid", uuid.UUID(int=1), ["a uuid.UUID"]),
    ("attrs", ORDER, ["an Order", "-> Order"]),
    ("dataclass", Line("a", 1, []), ["a Line", "-> Line"]),
    ("enum", Color.RED, ["a Color", "-> Color"]),
    ("strenum", Mood.HAPPY, ["a Mood", "would come back as a str"]),
    ("int-key", {1: "a"}, ["the key 1 (int) would come back as the key '1' (str)"]),
    ("nested-tuple", {"a": [(1, 2)]}, ["at ['a'][0]", "a tuple"]),
    ("nested-datetime", [{"at": dt.date(2026, 1, 1)}], ["a datetime.date value inside the list"]),
    ("custom", Opaque(1), ["an Opaque", "register hooks"]),
    ("defaultdict", collections.defaultdict(int, {"a": 1}),
     ["a defaultdict (defaultdict(<class 'int'>, {'a': 1})) would come back as a dict",
      "-> defaultdict"]),
]


@pytest.mark.parametrize(("value", "expect"), [c[1:] for c in REFUSED],
                         ids=[c[0] for c in REFUSED])
def test_an_unannotated_value_that_would_change_type_is_refused(
    memory: Harness, value: Any, expect: list[str]
) -> None:
    message = memory.failure(_body(value))
    assert "SerializationError" in message and "step 'v' output" in message
    assert "annotate the step body's return type" in message
    for part in expect:
        assert part in message, (part, message)


def test_any_is_no_annotation(memory: Harness) -> None:
    message = memory.failure(_body((1, 2), Any))
    assert "a tuple ((1, 2)) would come back as a list" in message


def test_an_annotated_value_that_would_change_is_refused(memory: Harness) -> None:
    message = memory.failure(_body({"at": dt.date(2026, 1, 1)}, dict[str, Any]))
    assert ("a datetime.date (datetime.date(2026, 1, 1)) at ['at'] would come back as a str "
            "('2026-01-01')") in message
    assert "annotate the part that changes with its real type" in message
    message = memory.failure(_body(3.7, int))
    assert "a float (3.7) would come back as an int (3)" in message


def test_a_value_of_the_wrong_type_for_its_annotation_is_refused(memory: Harness) -> None:
    message = memory.failure(_body({"a": 1}, Order))
    assert "step 'v' output" in message and "Order" in message
    # A str under `-> date` is refused when it is recorded, not when a replay structures it.
    message = memory.failure(_body("2026-04-01", dt.date))
    assert "step 'v' output: cannot store a str as the return type datetime.date" in message


def test_a_partial_of_an_annotated_body_is_typed(memory: Harness) -> None:
    def stamp(year: int, month: int) -> dt.date:
        return dt.date(year, month, 1)

    live, replayed = memory.round_trip(functools.partial(stamp, 2026, 3))
    assert type(live) is dt.date and live == replayed == dt.date(2026, 3, 1)


def test_an_annotation_that_does_not_resolve_is_refused_not_ignored(memory: Harness) -> None:
    body = _body(Opaque(1))
    body.__annotations__ = {"return": "NotDefinedHere"}  # as `from __future__` leaves it
    message = memory.failure(body)
    assert ("step 'v' output: the value is not plain JSON and the return annotation "
            "'NotDefinedHere' that would rebuild it does not resolve") in message
    assert "NameError" in message and "define the type at module level" in message
    # Plain JSON needs no type: it is recorded as without an annotation.
    plain = _body({"a": [1]})
    plain.__annotations__ = {"return": "NotDefinedHere"}
    assert memory.round_trip(plain) == ({"a": [1]}, {"a": [1]})


def test_only_the_return_annotation_is_resolved(memory: Harness) -> None:
    """A parameter annotation that names nothing (an import inside a function, under
    ``from __future__ import annotations``) does not stop the return type from working;
    a class local to the function resolves through the body's closure."""

    @dataclasses.dataclass
    class Local:
        when: dt.date

    def body(ctx: NotImported = None) -> Local:  # type: ignore[name-defined]  # noqa: F821
        return Local(dt.date(2026, 1, 1))

    live, replayed = memory.round_trip(body)
    assert type(live) is Local and type(replayed) is Local and live == replayed


def test_an_unknown_type_names_the_hooks_to_register(memory: Harness) -> None:
    class Money:
        def __init__(self, cents: int) -> None:
            self.cents = cents

    message = memory.failure(_body(Money(5), Money))
    assert "step 'v' output" in message and "Money" in message
    assert "register hooks for the type on the app's converter" in message


def test_an_unannotated_function_output_that_would_change_fails_the_run() -> None:
    app = App("typed-run")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        return {"when": ctx.now()}

    [run] = TestEngine(app).send(Event("go")).runs
    assert run.status == "failed" and run.error is not None
    assert run.error.type == "SerializationError"
    assert "output: without a return annotation" in run.error.message
    assert "annotate the function's return type (-> dict[...])" in run.error.message


# --------------------------------------------------------------------------- invoke, results


@dataclasses.dataclass
class Quote:
    cents: decimal.Decimal
    valid_until: dt.datetime


def test_invoke_gives_the_childs_annotated_type_live_and_on_replay() -> None:
    store = MemoryStore()
    app = App("typed-invoke")
    seen: list[Any] = []

    @app.function(id="quote")
    async def quote(ctx: Context) -> Quote:
        return Quote(decimal.Decimal(ctx.event.data["cents"]), ctx.now())

    @app.function(id="buy", trigger=on_event("buy"))
    async def buy(ctx: Context) -> Quote:
        q = await ctx.step.invoke("q", function=quote, data={"cents": "12.50"})
        seen.append(q)
        await ctx.step.sleep("nap", "1h")
        return q

    first = TestEngine(app, store=store)
    [run] = first.send(Event("buy")).runs
    assert run.status == "sleeping"
    TestEngine(app, store=store, start=first.now).advance("1h")
    live, replayed = seen
    assert type(live) is Quote and type(replayed) is Quote and live == replayed
    assert live.cents == decimal.Decimal("12.50") and live.valid_until.tzinfo is not None
    # A handle from Client.run rebuilds the run's output into its function's annotation
    # (a handle from an id alone does not know the function: it gives the JSON).
    handle = Client(store, app=app).run(buy, id="typed-buy")
    TestEngine(app, store=store, start=first.now).advance("2h")
    out = handle.result(timeout=0)
    assert type(out) is Quote and out.cents == decimal.Decimal("12.50")
    assert Client(store).handle(run.id).result(timeout=0) == {
        "cents": "12.50", "valid_until": live.valid_until.isoformat()}


def test_converters_are_per_app_and_hooks_stay_in_their_app() -> None:
    class Money:
        def __init__(self, cents: int) -> None:
            self.cents = cents

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Money) and other.cents == self.cents

        __hash__ = None  # type: ignore[assignment]

    with_hooks = App("typed-hooks")
    with_hooks.converter.register_unstructure_hook(Money, lambda m: m.cents)
    with_hooks.converter.register_structure_hook(Money, lambda raw, _t: Money(raw))
    without = App("typed-nohooks")
    assert with_hooks.converter is not without.converter
    seen: list[Any] = []
    for app, ok in ((with_hooks, True), (without, False)):
        seen.clear()

        @app.function(id="m", trigger=on_event("m"))
        async def m(ctx: Context) -> int:
            money = await ctx.step.run("money", _body(Money(250), Money))
            seen.append(money)
            return int(money.cents)

        [run] = TestEngine(app).send(Event("m")).runs
        if ok:
            assert run.output == 250 and seen == [Money(250)]
        else:
            assert run.status == "failed" and run.error is not None
            assert "register hooks for the type on the app's converter" in run.error.message


def test_an_app_takes_a_converter_and_refuses_anything_else() -> None:
    from durable_core import FunctionConfigError

    conv = make_converter(forbid_extra_keys=True)
    assert App("typed-conv", converter=conv).converter is conv
    with pytest.raises(FunctionConfigError, match=r"converter=.*must be a cattrs Converter"):
        App("typed-bad", converter=object())  # type: ignore[arg-type]


def test_hooks_on_the_shared_converter_still_apply() -> None:
    """``durable_core.converter`` was the one converter of the process: hooks registered on
    it keep working for apps whose own converter has none for the type."""

    class Legacy:
        def __init__(self, s: str) -> None:
            self.s = s

    _serde.converter.register_unstructure_hook(Legacy, lambda v: v.s)
    _serde.converter.register_structure_hook(Legacy, lambda raw, _t: Legacy(raw))
    store = MemoryStore()
    live, replayed = Harness(lambda: store, "typed-legacy").round_trip(
        _body(Legacy("x"), Legacy)
    )
    assert type(live) is Legacy and type(replayed) is Legacy and replayed.s == "x"


def test_a_memo_that_no_longer_fits_the_annotation_raises_at_the_await() -> None:
    store = MemoryStore()
    harness = Harness(lambda: store, "typed-changed")
    harness.body = _body({"a": 1})
    first = TestEngine(harness.app, store=store)
    [run] = first.send(Event("typed/go")).runs
    assert run.status == "sleeping"
    harness.body = _body(None, Order)  # the code changed: the body now says -> Order
    TestEngine(harness.app, store=store, start=first.now).advance("1h")
    record = store.get_run(run.id)
    assert record.status == "failed" and record.error is not None
    assert record.error.type == "SerializationError"
    assert "step 'v': cannot rebuild a Order from stored JSON" in record.error.message


# --------------------------------------------------------------------------- Hypothesis


Typed = tuple[Any, Any, Any]
"""(annotation, value the body returns, value the code must see, type for type)."""


def _leaf() -> st.SearchStrategy[Typed]:
    text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                   max_size=8)

    def same(hint: Any) -> Callable[[Any], Typed]:
        return lambda v: (hint, v, v)

    return st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63).map(same(int)),
        text.map(same(str)),
        st.floats(allow_nan=False, allow_infinity=False).map(same(float)),
        st.booleans().map(same(bool)),
        st.binary(max_size=8).map(same(bytes)),
        st.datetimes(timezones=st.sampled_from([UTC, dt.timezone(dt.timedelta(hours=-7))]))
        .map(same(dt.datetime)),
        st.dates().map(same(dt.date)),
        st.decimals(allow_nan=False, allow_infinity=False).map(same(decimal.Decimal)),
        st.uuids().map(same(uuid.UUID)),
        st.sampled_from(Color).map(same(Color)),
        st.sampled_from(Size).map(same(Size)),
        st.sampled_from(Mood).map(same(Mood)),
        st.sampled_from(Mood).map(lambda v: (Mood, v.value, v)),  # a str under `-> Mood`
        st.sampled_from(Size).map(lambda v: (Size, int(v), v)),  # an int under `-> Size`
        st.timedeltas(min_value=dt.timedelta(days=-36500), max_value=dt.timedelta(days=36500))
        .map(same(dt.timedelta)),
    )


_HASHABLE = (int, str, bytes, dt.date, uuid.UUID, Color, Size, Mood)


def _extend(inner: st.SearchStrategy[Typed]) -> st.SearchStrategy[Typed]:
    def lists(leaf: Typed) -> st.SearchStrategy[Typed]:
        hint, value, want = leaf
        return st.integers(0, 3).map(lambda n: (list[hint], [value] * n, [want] * n))

    def of_one(leaf: Typed) -> st.SearchStrategy[Typed]:
        hint, value, want = leaf
        options: list[Typed] = [
            (tuple[hint, int], (value, 1), (want, 1)),
            (tuple[hint, ...], (value,), (want,)),
            (dict[str, hint], {"k": value}, {"k": want}),
            (hint | None, value, want),
            (hint | None, None, None),
            (Wrap[hint], Wrap(value), Wrap(want)),
        ]
        if hint in _HASHABLE:
            options += [(set[hint], {value}, {want}), (frozenset[hint], frozenset(), frozenset())]
        return st.sampled_from(options)

    return st.one_of(inner.flatmap(of_one), inner.flatmap(lists))


TYPED = st.recursive(_leaf(), _extend, max_leaves=4)


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Wrap):
        return _same(a.value, b.value)
    if isinstance(a, set | frozenset):
        return a == b and {type(x) for x in a} == {type(x) for x in b}
    return bool(a == b)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_opener(request: pytest.FixtureRequest,
                 tmp_path: pathlib.Path) -> Iterator[Callable[[], Store]]:
    """How to open the store under test again (the same data each time)."""
    if request.param == "memory":
        memory = MemoryStore()
        yield lambda: memory
    elif request.param == "sqlite":
        path = tmp_path / "typed.db"
        yield lambda: SQLiteStore(path)
    else:
        url = request.getfixturevalue("pg_url")
        schema = request.getfixturevalue("pg_schema")
        yield lambda: PostgresStore(url, schema=schema, pool_max=2)


def test_typed_outputs_round_trip_through_replay_on_every_store(
    store_opener: Callable[[], Store],
) -> None:
    harness = Harness(store_opener, "typed-property")

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(TYPED)
    def check(case: Typed) -> None:
        hint, value, want = case
        live, replayed = harness.round_trip(_body(value, hint))
        assert _same(live, want), (hint, value, live)
        assert _same(replayed, want), (hint, value, replayed)

    check()


# --------------------------------------------------------------------------- event data models


@attrs.frozen
class OrderPlaced:
    order_id: uuid.UUID
    amount: decimal.Decimal
    at: dt.datetime
    tags: frozenset[str] = frozenset()


@dataclasses.dataclass
class Refund:
    order_id: str
    cents: int


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_event_data_models_are_sent_as_json_and_read_back_typed(
    kind: str, tmp_path: pathlib.Path
) -> None:
    """An attrs (or dataclass, or pydantic) instance as ``Event.data`` is stored as its JSON
    object; ``ctx.event_data(T)`` gives a ``T`` in the function, live and after a replay on
    a reopened store; CEL filters see the JSON."""
    app = App("typed-events")
    seen: list[Any] = []

    @app.function(id="ship", trigger=on_event("order/placed", if_="event.data.amount == '12.50'"))
    async def ship(ctx: Any) -> str:
        order = ctx.event_data(OrderPlaced)
        seen.append(order)
        await ctx.step.sleep("wait", "1h")
        return f"{order.order_id} {order.amount + 1}"

    placed = OrderPlaced(uuid.UUID(int=7), decimal.Decimal("12.50"),
                         dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC), frozenset({"gift"}))
    event = Event("order/placed", placed)
    assert event.data == {"order_id": str(uuid.UUID(int=7)), "amount": "12.50",
                          "at": "2026-01-01T12:00:00+00:00", "tags": ["gift"]}
    assert event.data_as(OrderPlaced) == placed
    store: Store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "t.db")
    first = TestEngine(app, start="2026-01-01T00:00:00Z", store=store)
    [run] = first.send(event).runs
    assert seen == [placed] and run.status == "sleeping"
    if kind == "sqlite":
        store.close()
        store = SQLiteStore(tmp_path / "t.db")
    later = TestEngine(app, start="2026-01-01T02:00:00Z", store=store)  # replays the run
    later.advance("1h")
    assert seen == [placed, placed]  # rebuilt typed on replay too
    assert later.store.get_run(run.id).output == f'"{uuid.UUID(int=7)} 13.50"'
    store.close()


def test_event_data_of_a_dataclass_and_what_does_not_fit() -> None:
    assert Event("refund", Refund("o1", 250)).data == {"order_id": "o1", "cents": 250}
    assert Event("refund", {"order_id": "o1", "cents": 250}).data_as(Refund) == Refund("o1", 250)
    with pytest.raises(SerializationError) as info:
        Event("refund", {"order_id": "o1"}).data_as(Refund)
    assert info.value.field == "event.data" and "does not fit Refund" in str(info.value)
    with pytest.raises(InvalidEventError):
        Event("refund", ["not", "an", "object"])  # type: ignore[arg-type]


def test_a_pydantic_event_model() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Signup(pydantic.BaseModel):  # type: ignore[misc,name-defined]
        email: str
        plan: str = "free"

    event = Event("user/signed-up", Signup(email="a@example.com"))
    assert event.data == {"email": "a@example.com", "plan": "free"}
    assert event.data_as(Signup) == Signup(email="a@example.com")
