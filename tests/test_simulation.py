"""The engine under deterministic simulation: generated workflow programs, random fault plans.

Each example draws a workflow program (every step kind: run, flaky run, failing run caught
with try/except, sleep, wait that times out, wait answered by another function (its match
key a literal, or a value of the run's own event), invoke,
send_event, gather) and a fault plan (crashes before/after commits, failed and unknown-outcome
writes, duplicated results, events, timers and signals, clock jumps, failing and hanging
bodies). The simulation checks the invariants after every commit; at the end the outcome must
equal the fault-free execution of the same program.

Profiles: ``ci`` (default, bounded for the whole suite) and ``thorough`` (``nox -s crash``,
or ``DURABLE_SIM_PROFILE=thorough``).
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durable_core import App, Context, Event, NonRetriableError, StepError, on_event
from durable_core.testing import InvariantViolation, crash_test
from durable_core.testing._simulation import FaultPlan, Simulation, fault_plans

PROFILE = os.environ.get("DURABLE_SIM_PROFILE", "ci")
EXAMPLES = {"ci": 200, "thorough": 3000}[PROFILE]
EXPLORED: Counter[str] = Counter()


# --------------------------------------------------------------------------- the programs


def build_app() -> App:
    """One function interprets any program given in its event; a responder answers pings."""
    app = App("sim")

    @app.function(id="double")
    async def double(ctx: Context) -> int:
        return int(ctx.event.data["n"]) * 2

    @app.function(id="responder", trigger=on_event("sim/ping"))
    async def responder(ctx: Context) -> str:
        key = ctx.event.data["key"]
        i = ctx.event.data.get("i")
        await ctx.step.send_event("pong", Event("sim/pong", {"key": key, "i": i}))
        return "pong"  # not the key: run ids differ between executions

    def value_of(v: Any) -> Any:
        return v

    def flaky(v: Any) -> Any:
        if ctx_attempt() == 0:
            raise RuntimeError("first attempt fails")
        return v

    def broken(v: Any) -> Any:
        raise NonRetriableError(f"broken {v}")

    @app.function(id="program", trigger=on_event("sim/run"), retries=3)
    async def program(ctx: Context) -> list[Any]:
        out: list[Any] = []
        for i, (op, arg) in enumerate(ctx.event.data["ops"]):
            sid = f"{op}{i}"
            if op == "run":
                out.append(await ctx.step.run(sid, value_of, arg))
            elif op == "flaky":
                out.append(await ctx.step.run(sid, flaky, arg))
            elif op == "fail":
                try:
                    await ctx.step.run(sid, broken, arg)
                except StepError as err:
                    out.append(await ctx.step.run(f"fallback{i}", value_of, err.error_type))
            elif op == "sleep":
                await ctx.step.sleep(sid, arg)
                out.append("slept")
            elif op == "wait_timeout":
                got = await ctx.step.wait_for_event(sid, event="sim/never", timeout=arg)
                out.append(got)
            elif op == "ping":
                key = f"{ctx.run_id}-{i}"
                pong, _ = await ctx.gather(
                    ctx.step.wait_for_event(sid, event="sim/pong", timeout="1d",
                                            if_=f"async.data.key == '{key}'"),
                    ctx.step.send_event(f"ping{i}", Event("sim/ping", {"key": key})),
                )
                out.append(pong is not None)
            elif op == "ping_known":
                # A wait keyed by a value of the run's own event (match keys resolved at
                # registration), registered and resumed under the plan's faults.
                pong, _ = await ctx.gather(
                    ctx.step.wait_for_event(
                        sid, event="sim/pong", timeout="1d",
                        if_=f"async.data.key == event.id && async.data.i == {i}"),
                    ctx.step.send_event(f"ping{i}",
                                        Event("sim/ping", {"key": ctx.event.id, "i": i})),
                )
                out.append(pong is not None)
            elif op == "invoke":
                out.append(await ctx.step.invoke(sid, function="double", data={"n": arg}))
            elif op == "send":
                out.append(len(await ctx.step.send_event(sid, Event("sim/noise", {"i": arg}))))
            elif op == "gather":
                results = await ctx.gather(*[ctx.step.run(f"{sid}-{j}", value_of, v)
                                             for j, v in enumerate(arg)])
                out.append(list(results))
        return out

    return app


def ctx_attempt() -> int:
    from durable_core.core._context import current_attempt

    cur = current_attempt.get()
    return 0 if cur is None else cur[1]


OPS = st.one_of(
    st.tuples(st.just("run"), st.integers(0, 100)),
    st.tuples(st.just("flaky"), st.integers(0, 100)),
    st.tuples(st.just("fail"), st.integers(0, 100)),
    st.tuples(st.just("sleep"), st.sampled_from(["1s", "90s", "2h"])),
    st.tuples(st.just("wait_timeout"), st.sampled_from(["30s", "1h"])),
    st.tuples(st.just("ping"), st.just(0)),
    st.tuples(st.just("ping_known"), st.just(0)),
    st.tuples(st.just("invoke"), st.integers(0, 100)),
    st.tuples(st.just("send"), st.integers(0, 100)),
    st.tuples(st.just("gather"), st.lists(st.integers(0, 9), min_size=2, max_size=3)),
)
PROGRAMS = st.lists(OPS, min_size=1, max_size=6).map(lambda ops: [list(op) for op in ops])


def simulate(app: App, program: list[Any], plan: FaultPlan | None,
             store: Any = None) -> Simulation:
    sim = Simulation(app, faults=plan, store=store)
    sim.send([Event("sim/run", {"ops": program}), Event("sim/run", {"ops": program[::-1]})])
    sim.run("30d")
    return sim


APP = build_app()


# --------------------------------------------------------------------------- store factories


def _memory() -> Any:
    return None


@pytest.fixture
def sqlite_factory(tmp_path: Any) -> Callable[[], Any]:
    import stores

    counter = iter(range(10**9))
    return lambda: stores.open(f"sqlite:///{tmp_path / f'sim-{next(counter)}.db'}")


@pytest.fixture
def postgres_factory() -> Iterator[Callable[[], Any]]:
    psycopg = pytest.importorskip("psycopg")
    base = "postgresql://postgres@127.0.0.1:5432/test"
    try:
        psycopg.connect(base, connect_timeout=3).close()
    except Exception:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is down; CI must run the Postgres tests")
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable: start it with "
                    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`")
    import stores

    schemas: list[str] = []
    opened: list[Any] = []

    def make() -> Any:
        schemas.append(f"sim_{uuid.uuid4().hex[:10]}")
        store = stores.open(f"{base}?schema={schemas[-1]}")
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
    with psycopg.connect(base, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# --------------------------------------------------------------------------- the tests


def _explore(program: list[Any], plan: FaultPlan, factory: Callable[[], Any]) -> None:
    expected = simulate(APP, program, None, factory())
    try:
        expected.check()
        sim = simulate(APP, program, plan, factory())
        try:
            sim.check(expected.outcomes())
        finally:
            sim.inner.close()  # one example's connections must not outlive it
    finally:
        expected.inner.close()
    EXPLORED["examples"] += 1
    for key in ("crashes", "failed_writes", "unknown_writes", "duplicate_results",
                "step_errors", "hung_steps", "duplicate_events", "duplicate_timers",
                "duplicate_signals", "clock_jumps"):
        EXPLORED[key] += sim.stats[key]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(program=PROGRAMS, plan=fault_plans(60, 30))
def test_generated_programs_survive_random_faults_memory(program: list[Any],
                                                        plan: FaultPlan) -> None:
    _explore(program, plan, _memory)


@settings(max_examples=max(EXAMPLES // 12, 5), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(program=PROGRAMS, plan=fault_plans(60, 30))
def test_generated_programs_survive_random_faults_sqlite(
    sqlite_factory: Callable[[], Any], program: list[Any], plan: FaultPlan
) -> None:
    _explore(program, plan, sqlite_factory)


@pytest.mark.postgres
@settings(max_examples=max(EXAMPLES // 20, 3), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(program=PROGRAMS, plan=fault_plans(60, 30))
def test_generated_programs_survive_random_faults_postgres(
    postgres_factory: Callable[[], Any], program: list[Any], plan: FaultPlan
) -> None:
    _explore(program, plan, postgres_factory)


def test_every_step_kind_under_a_fixed_heavy_plan() -> None:
    program = [["run", 1], ["flaky", 2], ["fail", 3], ["sleep", "90s"], ["ping", 0],
               ["wait_timeout", "30s"], ["invoke", 4], ["send", 5], ["gather", [6, 7, 8]]]
    expected = simulate(APP, program, None)
    outputs = [o[2] for o in expected.outcomes() if o[0] == "program"]
    assert sorted(outputs, key=repr) == [
        [1, 2, "NonRetriableError", "slept", True, None, 8, 1, [6, 7, 8]],
        [[6, 7, 8], 1, 8, None, True, "slept", "NonRetriableError", 2, 1],
    ]
    plan = FaultPlan(
        seed=7, crash_before_commit=frozenset({4, 17}), crash_after_commit=frozenset({9, 30}),
        failed_writes=frozenset({12}), unknown_writes=frozenset({21}),
        duplicate_results=frozenset({0, 3, 5}), step_errors=frozenset({2}),
        hung_steps=frozenset({6}), duplicate_events=True, duplicate_timers=True,
        duplicate_signals=True, clock_jumps=((10, 3_600_000),),
    )
    sim = simulate(APP, program, plan)
    sim.check(expected.outcomes())
    assert sim.stats["crashes"] >= 3 and sim.stats["unknown_writes"] == 1


@pytest.mark.parametrize("at", range(0, 12, 2))  # the fault-free run commits 14 times
def test_keyed_waits_under_crashes_and_unknown_outcomes(at: int) -> None:
    """Waits stored under match keys (a literal, and a value of the run's own event) are
    registered and resumed through crashes before and after commits and writes whose
    outcome is unknown, at every point of the program."""
    from durable_core.base._match import condition_keys

    assert condition_keys("async.data.key == event.id && async.data.i == 0", incoming="async",
                          known="event", known_value={"id": "e_1"}) == ('data.key="e_1"',)
    program = [["ping_known", 0], ["ping", 0], ["ping_known", 0]]
    expected = simulate(APP, program, None)
    assert [o[2] for o in expected.outcomes() if o[0] == "program"] == [[True] * 3] * 2
    plan = FaultPlan(seed=at, crash_before_commit=frozenset({at}),
                     crash_after_commit=frozenset({at + 1}), unknown_writes=frozenset({at + 2}),
                     duplicate_events=True, duplicate_signals=True)
    sim = simulate(APP, program, plan)
    sim.check(expected.outcomes())
    assert sim.stats["crashes"] == 2 and sim.stats["unknown_writes"] == 1


def test_a_planted_bug_is_caught_within_the_ci_budget() -> None:
    """A store that acknowledges writes it then loses on a crash (a write-back cache without
    fsync) must be caught by the simulator, with a plan that reproduces it."""
    program = [["run", 1], ["sleep", "90s"], ["gather", [2, 3]], ["invoke", 4]]
    found: list[InvariantViolation] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(plan=fault_plans(40, 20))
    def explore(plan: FaultPlan) -> None:
        expected = simulate(APP, program, None).outcomes()
        sim = Simulation(APP, faults=plan, planted_bug="lose_acknowledged_writes")
        sim.send(Event("sim/run", {"ops": program}))
        sim.run("30d")
        try:
            sim.check(expected)
        except InvariantViolation as exc:
            found.append(exc)
            raise

    with pytest.raises(InvariantViolation) as info:
        explore()
    assert "reproduce with: Simulation(app, faults=FaultPlan(" in str(info.value)
    assert found


def test_the_same_plan_reproduces_the_same_history() -> None:
    program = [["gather", [1, 2, 3]], ["flaky", 4], ["sleep", "1s"], ["invoke", 5]]
    plan = FaultPlan(seed=42, crash_after_commit=frozenset({5}), duplicate_results=frozenset({1}))
    a = simulate(APP, program, plan)
    b = simulate(APP, program, plan)
    assert a.stats == b.stats
    assert a.outcomes() == b.outcomes()
    assert [e.data for r in a.inner.list_runs() for e in a.inner.load_journal(r.id)] == \
        [e.data for r in b.inner.list_runs() for e in b.inner.load_journal(r.id)]


def test_crash_test_for_a_users_function(capsys: pytest.CaptureFixture[str]) -> None:
    app = App("user")
    charges: list[int] = []

    def charge(amount: int) -> str:
        charges.append(amount)
        return f"ch-{amount}"

    @app.function(id="checkout", trigger=on_event("cart/checkout"))
    async def checkout(ctx: Context) -> dict[str, Any]:
        charge_id = await ctx.step.run("charge", charge, ctx.event.data["amount"])
        await ctx.step.sleep("settle", "1h")
        receipt = await ctx.step.run("receipt", lambda: f"receipt for {charge_id}")
        return {"charge": charge_id, "receipt": receipt}

    report = crash_test(checkout, Event("cart/checkout", {"amount": 30}),
                        max_examples=min(EXAMPLES, 40))
    assert report.examples >= 10
    assert report.outcomes == [("checkout", "completed",
                                {"charge": "ch-30", "receipt": "receipt for ch-30"})]
    assert report.faults_injected["crashes"] > 0
    assert "crash_test:" in capsys.readouterr().out


def test_crash_test_reports_a_non_deterministic_function() -> None:
    app = App("nondet")
    flips = iter(range(10**6))

    @app.function(id="flaky-code", trigger=on_event("go"))
    async def flaky_code(ctx: Context) -> int:
        # Orchestration code that takes another path when re-entered: a real bug.
        if next(flips) % 2:
            await ctx.step.run("odd", lambda: 1)
        await ctx.step.sleep("nap", "1m")
        return await ctx.step.run("end", lambda: 2)

    with pytest.raises(InvariantViolation):
        crash_test(flaky_code, Event("go", {}), max_examples=50, verbose=False)


def test_summary_counts(capsys: pytest.CaptureFixture[str]) -> None:
    # Runs last in this module: print what the generated-program tests explored.
    with capsys.disabled():
        faults = ", ".join(f"{k}={v}" for k, v in sorted(EXPLORED.items()) if k != "examples")
        print(f"\nsimulation ({PROFILE} profile): {EXPLORED['examples']} examples explored; "
              f"faults injected: {faults}")
    assert EXPLORED["examples"] > 0


# --------------------------------------------------------------------------- the lifecycle


def build_lifecycle_app() -> App:
    """An idempotency key shared by several events, a function that fails for good with a
    failure handler, and a listener of every ``durable/function.finished``."""
    app = App("sim-lifecycle")

    @app.function(id="keyed", trigger=on_event("life/keyed"), idempotency="event.data.key")
    async def keyed(ctx: Context) -> Any:
        value = await ctx.step.run("charge", lambda: ctx.event.data["key"])
        await ctx.step.sleep("settle", "1m")
        return value

    async def handler(ctx: Context) -> Any:
        data = ctx.event.data
        return await ctx.step.run(
            "refund", lambda: [data["function_id"], data["event"]["data"]["n"],
                               data["error"]["type"]])

    @app.function(id="doomed", trigger=on_event("life/doomed"), retries=1, on_failure=handler)
    async def doomed(ctx: Context) -> None:
        await ctx.step.run("try", lambda: ctx.event.data["n"])
        raise NonRetriableError("declined")

    @app.function(id="listener", trigger=on_event("durable/function.finished"))
    async def listener(ctx: Context) -> Any:
        return [ctx.event.data["function_id"], ctx.event.data["status"]]

    return app


LIFECYCLE_APP = build_lifecycle_app()
LIFECYCLE_EVENTS = [
    Event("life/keyed", {"key": "k1"}, id="k-a"),
    Event("life/keyed", {"key": "k1"}, id="k-b"),
    Event("life/doomed", {"n": 1}, id="d-1"),
    Event("life/keyed", {"key": "k1"}, id="k-c"),
    Event("life/doomed", {"n": 2}, id="d-2"),
]
LIFECYCLE_OUTCOMES = sorted([
    ("keyed", "completed", "k1"),
    ("doomed", "failed", "NonRetriableError"),
    ("doomed", "failed", "NonRetriableError"),
    ("doomed-failure", "completed", ["doomed", 1, "NonRetriableError"]),
    ("doomed-failure", "completed", ["doomed", 2, "NonRetriableError"]),
    ("listener", "completed", ["keyed", "completed"]),
    ("listener", "completed", ["doomed", "failed"]),
    ("listener", "completed", ["doomed", "failed"]),
], key=lambda t: json.dumps(t, sort_keys=True, default=str))


def test_lifecycle_under_a_fixed_heavy_plan() -> None:
    """Crashes around the commits that end runs (and so emit their system events), unknown
    outcomes, duplicated events, results and signals: one run per key, a failure handler
    once per failed run, each system event once (Simulation.check)."""
    baseline = Simulation(LIFECYCLE_APP)
    baseline.send(LIFECYCLE_EVENTS)
    baseline.run("7d")
    baseline.check()
    assert baseline.outcomes() == LIFECYCLE_OUTCOMES
    [skip_b, skip_c] = sorted(baseline.inner.skipped_triggers(), key=lambda s: s.event_id or "")
    assert (skip_b.event_id, skip_c.event_id) == ("k-b", "k-c")
    for seed in range(12):
        commits = frozenset(range(seed % 4, 40, 5))
        plan = FaultPlan(seed=seed, crash_before_commit=frozenset(c for c in commits if c % 2),
                         crash_after_commit=frozenset(c for c in commits if not c % 2),
                         unknown_writes=frozenset({seed + 3}),
                         duplicate_results=frozenset({0, 2, 4}), duplicate_events=True,
                         duplicate_signals=True, duplicate_timers=True)
        sim = Simulation(LIFECYCLE_APP, faults=plan)
        sim.send(LIFECYCLE_EVENTS)
        sim.run("7d")
        sim.check(LIFECYCLE_OUTCOMES)
        assert sim.stats["crashes"] > 0


def test_crash_test_explores_the_lifecycle() -> None:
    report = crash_test(LIFECYCLE_APP, LIFECYCLE_EVENTS, max_examples=min(EXAMPLES, 60),
                        until="7d", verbose=False)
    assert report.outcomes == LIFECYCLE_OUTCOMES
    assert report.faults_injected["crashes"] > 0
    assert report.faults_injected["unknown_writes"] > 0


def test_the_simulator_catches_a_doubled_failure_handler() -> None:
    """The lifecycle invariants bite: a store that lets a system event start its handler
    twice is reported."""
    from stores import MemoryStore

    class DoubleRouting(MemoryStore):
        def commit(self, batch: Any) -> set[str]:
            runs = tuple(
                attrs.evolve(n, id=n.id + "-again") if n.function_id == "doomed-failure"
                else n for n in batch.runs)
            if runs != batch.runs:
                batch = batch._replace(runs=batch.runs + runs)
            return super().commit(batch)

    sim = Simulation(LIFECYCLE_APP, store=DoubleRouting())
    sim.send(LIFECYCLE_EVENTS)
    sim.run("7d")
    with pytest.raises(InvariantViolation, match="started 2 runs of 'doomed-failure'"):
        sim.check()
