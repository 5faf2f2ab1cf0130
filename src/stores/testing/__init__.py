"""The store conformance suite: the tests every store must pass, for pytest.

Subclass :class:`StoreConformance` in a test module and give it a :meth:`~StoreConformance.
make_store` hook that returns a fresh, empty store; pytest then collects every ``test_*``
method for your store (name the subclass ``Test...``)::

    from stores.testing import StoreConformance

    class TestMyStore(StoreConformance):
        def make_store(self):
            return MyStore()

A store that needs a directory can capture pytest's ``tmp_path`` with an autouse fixture::

    class TestMyFileStore(StoreConformance):
        @pytest.fixture(autouse=True)
        def _dir(self, tmp_path):
            self.dir = tmp_path

        def make_store(self):
            return MyFileStore(self.dir / f"{uuid.uuid4().hex}.db")

``make_store`` is called once per test, and once per example of the property-based tests,
so it must return a new, empty store every time. Known deviations can be declared in
``expected_failures`` (test name -> reason): those tests are then strict ``xfail``.

Besides the example-based tests, :func:`make_state_machine` builds a Hypothesis
``RuleBasedStateMachine`` that drives random operations against your store and the reference
:class:`~stores.MemoryStore` and compares everything observable; ``test_stateful_...`` runs it
with :attr:`StoreConformance.stateful_settings`.

Every rule the suite checks is stated in the contract's docstrings and decided by one of its
functions (:mod:`durable_core.store`); the rule-case tests (``test_claims_follow_the_due_at_rule``,
``test_fencing_and_applying_follow_the_rules``, ``test_renewal_follows_the_lease_held_rule``)
drive a store through a table of states and compare what it does with those functions. Two
hooks enable checks that need the backend's help: :meth:`StoreConformance.reopen` and
:meth:`StoreConformance.fail_commits_half_way` (skipped, saying why, when not defined). All
times are passed in; nothing here sleeps. A failing Hypothesis test prints how to reproduce
it (``print_blob=True``).

For readable failures, have pytest rewrite the suite's asserts before importing it:
``pytest.register_assert_rewrite("stores.testing")`` (in a ``conftest.py`` or at the top of
the test module).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from durable_core.base._errors import RunNotFoundError
from durable_core.core._model import TERMINAL_STATUSES, ErrorInfo, JournalEntry, Signal
from durable_core.store import (
    ALL_SIGNALS,
    DEDUPE_WINDOW_MS,
    Claim,
    CommitBatch,
    NewRun,
    RunRecord,
    RunWrite,
    SkippedTrigger,
    Store,
    StoredEvent,
    WaitRecord,
    apply_change,
    due_at,
    fold_writes,
    lease_held,
    notifies,
    routing_only,
    wait_found,
    write_accepted,
)
from stores._memory import MemoryStore
from stores.testing._flow_buffers import FlowBufferConformance
from stores.testing._flow_starts import StartLimitsConformance

__all__ = [
    "DAY",
    "LEASE",
    "NASTY_STRINGS",
    "T0",
    "StoreConformance",
    "StoreStateMachine",
    "check_processes_never_share_runs",
    "claim",
    "create",
    "entries",
    "entry",
    "event_json",
    "make_state_machine",
    "new_run",
    "run_gated",
    "run_threads",
    "where",
    "write",
]


T0 = 1_700_000_000_000
"""The suite's "now" (ms since the epoch)."""
LEASE = 30_000
"""The suite's default lease (ms)."""
DAY = DEDUPE_WINDOW_MS
"""One event-dedupe window (24 h, in ms)."""

NASTY_STRINGS: tuple[str, ...] = (
    "'; DROP TABLE runs; --",
    "Robert'); DELETE FROM events WHERE ('1'='1",
    'O\'Reilly said "hi" `backtick`',
    "%_ LIKE wildcards * ? [a-z] \\ back\\slash",
    "naïve café Ünïcödé ß",
    "日本語のテキスト 中文 한국어",
    "emoji 🎉🚀 family 👩‍👩‍👧 flag 🇫🇷",
    "tab\tnewline\ncarriage\r\nreturn",
    "  leading and trailing spaces  ",
    "\U0001d518\U0001d52b\U0001d526 \u211d\u2211\u221e \u202eright-to-left override",
    "json {\"a\": [1, 2]} and \\u0000 as text",
    "",
)
"""User-controlled strings every store must keep byte for byte (no NUL: Postgres refuses
it in text)."""

_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),  # no surrogates, NUL
    max_size=24,
)


# --------------------------------------------------------------------------- helpers


def event_json(
    event_id: str, name: str = "order/created", ts: int = T0, data: Any = None
) -> str:
    """An event as the engine stores it: JSON text with ``name``, ``data``, ``id``, ``ts``."""
    return json.dumps(
        {"name": name, "data": {} if data is None else data, "id": event_id, "ts": ts},
        ensure_ascii=False,
    )


def new_run(
    run_id: str,
    *,
    function_id: str = "fn",
    created_at: int = T0,
    key: str | None = None,
    event_ids: tuple[str, ...] = ("e0",),
    parent_run_id: str | None = None,
) -> NewRun:
    """A :class:`NewRun` with one triggering event per id."""
    return NewRun(
        id=run_id, function_id=function_id,
        events=tuple(event_json(e) for e in event_ids), event_ids=event_ids,
        created_at=created_at, idempotency_key=key, parent_run_id=parent_run_id,
    )


def entry(seq: int, *, ts: int = T0, position: int | None = None) -> JournalEntry:
    """A ``completed`` memo of a ``run`` step at journal index ``seq``."""
    pos = seq if position is None else position
    return JournalEntry(
        seq=seq, op="completed", position=pos, step_id=f"step-{pos}", kind="run", ts=ts,
        data=json.dumps({"output": seq}),
    )


def entries(start: int, stop: int, *, ts: int = T0) -> tuple[JournalEntry, ...]:
    """Dense entries ``start .. stop - 1``."""
    return tuple(entry(i, ts=ts) for i in range(start, stop))


def create(store: Store, *runs: NewRun, now: int = T0) -> None:
    """Create runs in one commit."""
    assert store.commit(CommitBatch(now=now, runs=runs)) == set()


def claim(
    store: Store, run_id: str, *, owner: str = "w1", now: int = T0, lease_ms: int = LEASE
) -> Claim:
    """Claim ``run_id``, which must be the oldest claimable run (``claim_runs`` with limit 1)."""
    got = store.claim_runs(owner, now, lease_ms, 1)
    assert got, f"could not claim {run_id!r}: nothing is claimable"
    assert got[0].run.id == run_id, f"claimed {got[0].run.id!r} instead of {run_id!r}"
    return got[0]


def write(store: Store, *writes: RunWrite, now: int = T0, **batch: Any) -> set[str]:
    """Commit writes (and any other batch fields); returns the fenced run ids."""
    return store.commit(CommitBatch(now=now, writes=writes, **batch))


def where(wait: WaitRecord) -> tuple[str, int, str]:
    """A wait's identity: ``(run_id, position, event)``."""
    return (wait.run_id, wait.position, wait.event)


def _round_trip(store: Store, s: str, i: int) -> None:
    """Put ``s`` in every user-controlled string field and read each back unchanged."""
    eid, name, fn, rid = f"{s}#e{i}", f"{s}#n{i}", f"{s}#f{i}", f"{s}#r{i}"
    text = event_json(eid, name, data={"v": s, s: [s]})
    [ev] = store.append_events([text], T0)
    assert (ev.id, ev.name, ev.data, ev.duplicate) == (eid, name, text, False)
    assert store.get_event(eid) == ev
    assert ev in store.unrouted_events(10_000)

    run = NewRun(
        id=rid, function_id=fn, events=(text,), event_ids=(eid, s), created_at=T0,
        idempotency_key=s, parent_run_id=f"{s}#p",
    )
    other = attrs.evolve(run, id=f"{rid}#2", idempotency_key=None)
    create(store, run, other)
    rec = store.get_run(rid)
    assert (rec.id, rec.function_id, rec.events, rec.event_ids) == (rid, fn, (text,), (eid, s))
    assert (rec.idempotency_key, rec.parent_run_id) == (s, f"{s}#p")
    assert store.list_runs(function_id=fn) == [store.get_run(other.id), rec]
    assert store.list_runs(event_id=eid) == [store.get_run(other.id), rec]
    assert rec in store.list_runs(event_id=s, limit=10_000)

    sig = Signal(kind=s, key=s, payload=json.dumps({"v": s}, ensure_ascii=False), position=i)
    assert store.commit(CommitBatch(now=T0, signals=((rid, sig),))) == set()
    owner = f"{s}#w"
    got = claim(store, rid, owner=owner)
    assert got.run.lease_owner == owner
    assert [x for _, x in got.signals] == [sig]

    journal = (
        JournalEntry(
            seq=0, op=s, position=i, step_id=s, kind=s, ts=T0,
            data=json.dumps({"output": s}, ensure_ascii=False),
        ),
    )
    wait = WaitRecord(rid, i, name, s, text, T0 + 1000)
    cron_key = f"{s}#c{i}"
    assert write(
        store, RunWrite(rid, got.run.epoch, journal, consumed_signals=got.signals[-1][0]),
        waits_add=(wait,), cron=((cron_key, T0),),
    ) == set()
    assert store.load_journal(rid) == list(journal)
    assert store.find_waits(name, T0) == [attrs.evolve(wait, after_seq=ev.seq)]
    assert store.cron_cursors()[cron_key] == T0
    assert store.renew(owner, [rid], T0, LEASE) == set()
    output = json.dumps({"out": s}, ensure_ascii=False)
    assert write(store, RunWrite(rid, got.run.epoch, status="completed", output=output)) == set()
    assert store.get_run(rid).output == output

    got2 = claim(store, other.id, owner=owner)
    error = ErrorInfo(type=s, message=s)
    assert write(store, RunWrite(other.id, got2.run.epoch, status="failed", error=error)) == set()
    assert store.get_run(other.id).error == error
    assert store.list_runs(function_id=fn, status="failed") == [store.get_run(other.id)]


def _populate(store: Store) -> dict[str, int]:
    """A bit of everything (events, a duplicate, runs with a key, journals, statuses, a
    wait, a signal, a routed event, a cron cursor); returns the claimed runs' epochs."""
    store.append_events([event_json("e1"), event_json("e2"), event_json("e1")], T0)
    [first, *_] = store.unrouted_events(10)
    create(store, new_run("r1", key="k", event_ids=("e1",)), new_run("r2"), new_run("r3"))
    epochs = {c.run.id: c.run.epoch for c in store.claim_runs("w1", T0, LEASE, 10)}
    sig = Signal("event", "e2", event_json("e2"), 0)
    assert write(
        store,
        RunWrite("r1", epochs["r1"], entries(0, 2), status="waiting", release=True),
        RunWrite("r2", epochs["r2"], entries(0, 1), status="sleeping", wake_at=T0 + 500),
        RunWrite("r3", epochs["r3"], entries(0, 3), status="failed",
                 error=ErrorInfo("E", "boom")),
        now=T0 + 1,
        waits_add=(WaitRecord("r1", 1, "paid", "true", event_json("e1"), T0 + 10_000),
                   WaitRecord("r1", 2, "paid", "async.data.k == 1", event_json("e1"),
                              T0 + 10_000, keys=("data.k=1",)),
                   WaitRecord("r1", 3, "paid", "async.data.k in [1, 'a']", event_json("e1"),
                              T0 + 10_000, keys=("data.k=1", 'data.k="a"'))),
        signals=(("r1", sig),),
        routed_events=(first.seq,),
        cron=(("f|* * * * *", T0),),
    ) == set()
    return epochs


def _snapshot(store: Store) -> dict[str, Any]:
    """Everything observable without changing anything."""
    runs = store.list_runs(limit=10_000)
    return {
        "runs": runs,
        "journals": {r.id: store.load_journal(r.id) for r in runs},
        "unrouted": store.unrouted_events(10_000),
        "events": {i: store.get_event(i) for i in ("e1", "e2", "e3", "e9")},
        "waits": sorted(store.find_waits("paid", T0), key=where),
        "keyed": [sorted(store.find_waits("paid", T0, keys), key=where)
                  for keys in ([], ["data.k=1"], ['data.k="a"'], ["data.k=2"])],
        "paths": store.wait_key_paths("paid"),
        "cron": store.cron_cursors(),
        "wake": store.next_wake_at(),
        "cancel": store.cancel_requested([r.id for r in runs]),
    }


# --------------------------------------------------------------------------- the suite


from stores.testing._flow_concurrency import ConcurrencyConformance  # noqa: E402


class StoreConformance(FlowBufferConformance, StartLimitsConformance, ConcurrencyConformance):
    """The conformance tests; subclass it and implement :meth:`make_store`.

    Class attributes to override: :attr:`hypothesis_settings` (property-based tests),
    :attr:`stateful_settings` (the state machine) and :attr:`expected_failures`.
    """

    __test__: ClassVar[bool] = False

    hypothesis_settings: ClassVar[settings] = settings(
        max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )
    """Settings of the property-based round-trip test. ``print_blob=True``: a failure prints
    the ``@reproduce_failure`` line that replays it, besides the falsifying example."""

    stateful_settings: ClassVar[settings] = settings(
        max_examples=30, stateful_step_count=20, deadline=None,
        suppress_health_check=[HealthCheck.too_slow], print_blob=True,
    )
    """Settings of the state-machine test. Longer runs (``stateful_step_count=80``) and more
    examples find deeper bugs; the defaults keep the suite fast. A failure prints the steps
    that reproduce it and the ``@reproduce_failure`` line that replays them."""

    expected_failures: ClassVar[Mapping[str, str]] = {}
    """Test name -> reason, for known deviations (run as strict xfail)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__test__" not in cls.__dict__:
            cls.__test__ = True

    def make_store(self) -> Store:
        """Return a new, empty store. Override this."""
        raise NotImplementedError("subclasses of StoreConformance must define make_store()")

    def reopen(self, store: Store) -> Store:
        """Close ``store`` and open the same store again (same file, database or schema).
        Override it for a persistent store: the reopen check then verifies that whatever
        was committed is still there. By default the check is skipped, naming this hook."""
        pytest.skip(f"{type(self).__name__} defines no reopen(store): the reopen check needs it")

    def fail_commits_half_way(self, store: Store) -> None:
        """Arrange for every later commit of ``store`` that moves the cron cursor named
        ``"boom"`` to fail *after* writing the rest of the batch (cron cursors are written
        last), e.g. with a trigger on the cron table that raises. The check then verifies
        that the failed commit left nothing half-applied. By default it is skipped."""
        pytest.skip(
            f"{type(self).__name__} defines no fail_commits_half_way(store): the half-way "
            "failure check needs it"
        )

    @pytest.fixture
    def store(self) -> Iterator[Store]:
        """A fresh store for one test, closed afterwards."""
        s = self.make_store()
        try:
            yield s
        finally:
            s.close()

    @pytest.fixture(autouse=True)
    def _conformance_expected_failure(self, request: pytest.FixtureRequest) -> None:
        name = getattr(request.node, "originalname", request.node.name)
        reason = self.expected_failures.get(name)
        if reason is not None:
            request.node.add_marker(pytest.mark.xfail(reason=reason, strict=True))

    # ------------------------------------------------------------------ shape

    def test_implements_the_store_protocol(self, store: Store) -> None:
        """The store satisfies the runtime-checkable ``Store`` protocol."""
        assert isinstance(store, Store)
        assert isinstance(store.blocking, bool)

    # ------------------------------------------------------------------ events

    def test_append_events_returns_them_as_stored_in_order(self, store: Store) -> None:
        """Appended events come back in order, with growing seqs and the exact text."""
        texts = [
            event_json("e1", "a", T0 - 5),
            event_json("e2", "b", T0 - 4, {"x": [1, 2]}),
            event_json("e3", "a", T0 - 3),
        ]
        out = store.append_events(texts, T0)
        assert [e.id for e in out] == ["e1", "e2", "e3"]
        assert [e.name for e in out] == ["a", "b", "a"]
        assert [e.data for e in out] == texts
        assert [e.ts for e in out] == [T0 - 5, T0 - 4, T0 - 3]
        assert not any(e.duplicate for e in out)
        assert out[0].seq < out[1].seq < out[2].seq
        [later] = store.append_events([event_json("e4")], T0)
        assert later.seq > out[2].seq
        assert store.append_events([], T0) == []
        assert store.get_event("e2") == out[1]
        assert store.unrouted_events(10) == [*out, later]

    def test_duplicate_event_within_24h_is_kept_but_flagged(self, store: Store) -> None:
        """An id seen within 24 h is stored as a duplicate and never routed."""
        [first] = store.append_events([event_json("e1", "a", T0)], T0)
        again = event_json("e1", "b", T0 + DAY - 1)
        [dup] = store.append_events([again], T0 + DAY - 1)
        assert dup.duplicate
        assert (dup.id, dup.name, dup.data) == ("e1", "b", again)
        assert dup.seq > first.seq
        assert store.unrouted_events(10) == [first]
        assert store.get_event("e1") == first

    def test_duplicates_within_one_append(self, store: Store) -> None:
        """Duplicates are detected inside one ``append_events`` call too."""
        out = store.append_events(
            [event_json("e1"), event_json("e1"), event_json("e2")], T0
        )
        assert [e.duplicate for e in out] == [False, True, False]
        assert [e.id for e in store.unrouted_events(10)] == ["e1", "e2"]

    def test_event_id_is_new_again_after_24h(self, store: Store) -> None:
        """After 24 h an id is new again, and the window restarts from it."""
        [first] = store.append_events([event_json("e1", ts=T0)], T0)
        [second] = store.append_events([event_json("e1", ts=T0 + DAY)], T0 + DAY)
        assert not second.duplicate
        assert store.unrouted_events(10) == [first, second]
        assert store.get_event("e1") == second
        # The window now runs from the second event.
        [third] = store.append_events([event_json("e1", ts=T0 + DAY + 5)], T0 + DAY + 5)
        assert third.duplicate
        assert store.get_event("e1") == second

    def test_unrouted_events_order_limit_and_routing(self, store: Store) -> None:
        """Unrouted events: log order, ``limit``, and marking routed."""
        evs = store.append_events([event_json(f"e{i}") for i in range(5)], T0)
        assert store.unrouted_events(3) == evs[:3]
        assert store.unrouted_events(100) == evs
        never = max(e.seq for e in evs) + 1000
        batch = CommitBatch(now=T0, routed_events=(evs[1].seq, evs[3].seq, never))
        assert store.commit(batch) == set()
        assert store.unrouted_events(10) == [evs[0], evs[2], evs[4]]
        assert store.commit(batch) == set()  # routing twice is harmless
        assert store.unrouted_events(1) == [evs[0]]
        batch = CommitBatch(now=T0, routed_events=tuple(e.seq for e in evs))
        assert store.commit(batch) == set()
        assert store.unrouted_events(10) == []
        assert store.get_event("e1") == evs[1]  # routed events stay readable

    def test_unrouted_events_limit_zero_returns_nothing(self, store: Store) -> None:
        """``unrouted_events(0)`` is empty."""
        store.append_events([event_json("e1"), event_json("e2")], T0)
        assert store.unrouted_events(0) == []

    def test_commit_appends_events_at_batch_time(self, store: Store) -> None:
        """A batch's events are appended (and deduplicated) at ``batch.now``."""
        t1, t2 = event_json("e1"), event_json("e2")
        assert store.commit(CommitBatch(now=T0, events=(t1, t1, t2))) == set()
        assert [(e.id, e.data) for e in store.unrouted_events(10)] == [("e1", t1), ("e2", t2)]
        [dup] = store.append_events([event_json("e2", ts=T0 + 10)], T0 + 10)
        assert dup.duplicate

    def test_get_event_unknown_is_none(self, store: Store) -> None:
        """An unknown event id gives None."""
        assert store.get_event("nope") is None

    # ------------------------------------------------------------------ run creation

    def test_commit_creates_a_queued_run(self, store: Store) -> None:
        """A new run is stored queued, with every field of the ``NewRun``."""
        new = new_run("r1", function_id="fn", created_at=T0 - 7, key="k", event_ids=("e1",),
                      parent_run_id="parent")
        assert store.commit(CommitBatch(now=T0, runs=(new,))) == set()
        assert store.get_run("r1") == RunRecord(
            id="r1", function_id="fn", status="queued", events=new.events,
            created_at=T0 - 7, updated_at=T0 - 7, parent_run_id="parent",
            idempotency_key="k", event_ids=("e1",),
        )
        assert store.load_journal("r1") == []
        assert store.load_journal("unknown") == []

    def test_existing_run_id_is_not_created_again(self, store: Store) -> None:
        """Creating an existing run id is skipped (in one batch too)."""
        create(store, new_run("r1", function_id="a"))
        create(store, new_run("r1", function_id="b"))
        assert store.get_run("r1").function_id == "a"
        create(store, new_run("r2", function_id="c"), new_run("r2", function_id="d"))
        assert store.get_run("r2").function_id == "c"
        assert [r.id for r in store.list_runs()] == ["r2", "r1"]

    def test_idempotency_key_dedupes_for_24h_per_function(self, store: Store) -> None:
        """Idempotency keys dedupe per function for 24 h from the run holding them."""
        create(store, new_run("r1", function_id="a", key="k", created_at=T0))
        create(store, new_run("r2", function_id="a", key="k", created_at=T0 + DAY - 1))
        create(store, new_run("r3", function_id="b", key="k", created_at=T0 + 1))
        create(store, new_run("r4", function_id="a"), new_run("r5", function_id="a"))
        create(store, new_run("r6", function_id="a", key="k", created_at=T0 + DAY))
        create(store, new_run("r7", function_id="a", key="k", created_at=T0 + DAY + 1))
        create(store, new_run("r8", function_id="c", key="j"),
               new_run("r9", function_id="c", key="j"))
        assert {r.id for r in store.list_runs()} == {"r1", "r3", "r4", "r5", "r6", "r8"}
        for missing in ("r2", "r7", "r9"):
            with pytest.raises(RunNotFoundError):
                store.get_run(missing)
        assert store.get_run("r6").idempotency_key == "k"

    def test_a_trigger_skipped_for_its_key_is_recorded_once(self, store: Store) -> None:
        """A run skipped because its function's idempotency key is held is recorded as a
        ``SkippedTrigger`` naming the holder (``new_runs_to_create``), once per id: the same
        run again (a second engine routing the same event) records nothing more and creates
        nothing, and its id counts as existing even once the key is free."""
        create(store, new_run("r1", function_id="a", key="k", event_ids=("e1",)))
        create(store, new_run("r2", function_id="a", key="k", event_ids=("e2",),
                              created_at=T0 + 5), now=T0 + 5)
        create(store, new_run("r2", function_id="a", key="k", event_ids=("e2",),
                              created_at=T0 + 6), now=T0 + 6)
        create(store, new_run("r3", function_id="b", key="k", event_ids=("e3",)),
               new_run("r4", function_id="b", key="k", event_ids=("e4",)))
        first = SkippedTrigger(id="r2", function_id="a", key="k", run_id="r1",
                               event_id="e2", at=T0 + 5)
        in_batch = SkippedTrigger(id="r4", function_id="b", key="k", run_id="r3",
                                  event_id="e4", at=T0)
        assert store.skipped_triggers() == [in_batch, first]
        assert store.skipped_triggers(event_id="e2") == [first]
        assert store.skipped_triggers(run_id="r3") == [in_batch]
        assert store.skipped_triggers(function_id="a", run_id="r1") == [first]
        assert store.skipped_triggers(function_id="a", run_id="r3") == []
        assert store.skipped_triggers(limit=1) == [in_batch]
        assert store.skipped_triggers(limit=0) == []
        create(store, new_run("r2", function_id="a", key="k", created_at=T0 + DAY),
               now=T0 + DAY)
        with pytest.raises(RunNotFoundError):
            store.get_run("r2")
        # Without a key too (a batch holding no keyed run): the id still counts as existing.
        create(store, new_run("r2", function_id="c", created_at=T0 + DAY), now=T0 + DAY)
        with pytest.raises(RunNotFoundError):
            store.get_run("r2")
        assert {r.id for r in store.list_runs()} == {"r1", "r3"}

    def test_idempotency_window_runs_from_the_holder_creation(self, store: Store) -> None:
        """The 24 h of a key run from the creation of the run holding it; a skipped trigger
        does not extend them, and the first run after them takes the key."""
        create(store, new_run("r1", key="k", created_at=T0))
        create(store, new_run("r2", key="k", created_at=T0 + DAY - 1), now=T0 + DAY - 1)
        create(store, new_run("r3", key="k", created_at=T0 + DAY), now=T0 + DAY)
        create(store, new_run("r4", key="k", created_at=T0 + DAY + 1), now=T0 + DAY + 1)
        assert [r.id for r in store.list_runs()] == ["r3", "r1"]
        assert [(s.id, s.run_id) for s in store.skipped_triggers()] == [
            ("r4", "r3"), ("r2", "r1")]

    def test_run_events_are_appended_only_with_an_accepted_write(self, store: Store) -> None:
        """``run_events`` are appended only for runs whose writes in the batch were
        accepted (``run_events_to_append``): a fenced end, or a run the batch does not
        write, emits nothing; an accepted end's events are in the log, deduplicated by id
        like any event, and routable."""
        create(store, new_run("r1"), new_run("r2"))
        c1 = claim(store, "r1")
        c2 = claim(store, "r2", now=T0 + 1)
        done = RunWrite("r1", c1.run.epoch, status="completed", output="1")
        stale = RunWrite("r2", c2.run.epoch - 1, status="failed",
                         error=ErrorInfo("E", "stale"))
        fenced = write(store, done, stale, now=T0 + 2, run_events=(
            ("r1", event_json("finished:r1", "durable/function.finished", ts=T0 + 2)),
            ("r2", event_json("finished:r2", "durable/function.finished", ts=T0 + 2)),
            ("r9", event_json("finished:r9", "durable/function.finished", ts=T0 + 2)),
        ))
        assert fenced == {"r2"}
        got = store.get_event("finished:r1")
        assert got is not None and got.received_at == T0 + 2 and not got.duplicate
        assert store.get_event("finished:r2") is None
        assert store.get_event("finished:r9") is None
        assert [e.id for e in store.unrouted_events(10)] == ["finished:r1"]
        # The same id again (a second finalizer whose write is accepted) is a duplicate.
        c2 = claim(store, "r2", owner="w2", now=T0 + 1 + LEASE)
        again = RunWrite("r2", c2.run.epoch, status="completed", output="2")
        assert write(store, again, now=T0 + 3 + LEASE, run_events=(
            ("r2", event_json("finished:r1", "durable/function.finished")),
        )) == set()
        assert [e.id for e in store.unrouted_events(10)] == ["finished:r1"]

    def test_get_run_unknown_raises_run_not_found(self, store: Store) -> None:
        """``get_run`` of an unknown id raises ``RunNotFoundError`` (a ``KeyError``)."""
        with pytest.raises(RunNotFoundError) as info:
            store.get_run("missing")
        assert isinstance(info.value, KeyError)

    # ------------------------------------------------------------------ writes

    def test_journal_appends_in_seq_order(self, store: Store) -> None:
        """Journal entries are appended in seq order and come back with claims."""
        create(store, new_run("r1"))
        c = claim(store, "r1")
        assert write(store, RunWrite("r1", c.run.epoch, entries(0, 3))) == set()
        assert write(store, RunWrite("r1", c.run.epoch, entries(3, 4, ts=T0 + 5))) == set()
        expected = [*entries(0, 3), *entries(3, 4, ts=T0 + 5)]
        assert store.load_journal("r1") == expected
        again = claim(store, "r1", owner="w2", now=T0 + LEASE)
        assert list(again.journal) == expected

    def test_stale_epoch_write_is_fenced_and_nothing_of_it_applied(self, store: Store) -> None:
        """A stale write is fenced and nothing of that run is applied; other runs are."""
        create(store, new_run("r1"), new_run("r2"))
        old = claim(store, "r1")
        c2 = claim(store, "r2")
        wait0 = WaitRecord("r1", 0, "old", None, "{}", T0 + DAY)
        sig = Signal("event", "k", "{}", 0)
        assert store.commit(
            CommitBatch(now=T0, waits_add=(wait0,), signals=(("r1", sig),))
        ) == set()
        new = claim(store, "r1", owner="w2", now=T0 + LEASE)
        assert new.run.epoch == old.run.epoch + 1
        [(seq, _)] = new.signals
        before = store.get_run("r1")
        w_r2 = WaitRecord("r2", 0, "evt", None, "{}", T0 + DAY)
        fenced = write(
            store,
            RunWrite("r1", old.run.epoch, entries(0, 1), status="sleeping", wake_at=T0 + 5,
                     consumed_signals=seq, release=True),
            RunWrite("r2", c2.run.epoch, entries(0, 1), status="running"),
            RunWrite("ghost", 1, entries(0, 1)),
            now=T0 + LEASE + 1,
            waits_add=(WaitRecord("r1", 1, "evt", None, "{}", T0 + DAY), w_r2),
            waits_remove=(("r1", 0),),
        )
        assert fenced == {"r1", "ghost"}
        assert store.get_run("r1") == before
        assert store.load_journal("r1") == []
        assert [where(w) for w in store.find_waits("old", T0 + LEASE)] == [where(wait0)]
        assert [where(w) for w in store.find_waits("evt", T0 + LEASE)] == [where(w_r2)]
        latest = claim(store, "r1", owner="w3", now=T0 + 3 * LEASE)
        assert latest.signals == ((seq, sig),)
        assert store.load_journal("r2") == list(entries(0, 1))
        assert store.get_run("r2").status == "running"
        with pytest.raises(RunNotFoundError):
            store.get_run("ghost")

    def test_future_epoch_write_is_fenced(self, store: Store) -> None:
        """A write with an epoch the run never had is fenced."""
        create(store, new_run("r1"))
        c = claim(store, "r1")
        assert write(store, RunWrite("r1", c.run.epoch + 1, entries(0, 1))) == {"r1"}
        assert store.load_journal("r1") == []

    def test_write_after_terminal_status_is_fenced(self, store: Store) -> None:
        """A finished run accepts no more writes and cannot be claimed."""
        create(store, new_run("r1"))
        c = claim(store, "r1")
        assert write(store, RunWrite("r1", c.run.epoch, status="completed", output="1")) == set()
        done = store.get_run("r1")
        assert write(
            store, RunWrite("r1", c.run.epoch, entries(0, 1), status="running"), now=T0 + 1
        ) == {"r1"}
        assert store.get_run("r1") == done
        assert store.load_journal("r1") == []
        assert store.claim_runs("w1", T0 + 2 * LEASE, LEASE, 10) == []

    def test_journal_seq_gap_or_overlap_is_fenced(self, store: Store) -> None:
        """Entries must continue the journal: a gap or an overlap is fenced."""
        create(store, new_run("r1"))
        c = claim(store, "r1")
        e = c.run.epoch
        assert write(store, RunWrite("r1", e, entries(0, 2))) == set()
        assert write(store, RunWrite("r1", e, entries(3, 4), status="sleeping")) == {"r1"}
        assert write(store, RunWrite("r1", e, entries(1, 3), status="sleeping")) == {"r1"}
        assert store.load_journal("r1") == list(entries(0, 2))
        assert store.get_run("r1").status == "queued"
        assert write(store, RunWrite("r1", e, entries(2, 3))) == set()
        assert store.load_journal("r1") == list(entries(0, 3))

    def test_non_dense_entries_within_one_write_are_fenced(self, store: Store) -> None:
        """Entries inside one write must be dense too."""
        create(store, new_run("r1"))
        c = claim(store, "r1")
        gap = (entry(0), entry(2))
        assert write(store, RunWrite("r1", c.run.epoch, gap)) == {"r1"}
        same = (entry(0), entry(0))
        assert write(store, RunWrite("r1", c.run.epoch, same)) == {"r1"}
        assert store.load_journal("r1") == []

    def test_several_writes_for_one_run_in_one_batch(self, store: Store) -> None:
        """A group commit may hold several writes for one run, checked in order."""
        create(store, new_run("r1"))
        e = claim(store, "r1").run.epoch
        assert write(
            store,
            RunWrite("r1", e, entries(0, 2), status="running"),
            RunWrite("r1", e, entries(2, 3), status="sleeping", wake_at=T0 + 100, release=True),
            now=T0 + 1,
        ) == set()
        run = store.get_run("r1")
        assert (run.status, run.wake_at, run.lease_owner, run.updated_at) == (
            "sleeping", T0 + 100, None, T0 + 1,
        )
        assert store.load_journal("r1") == list(entries(0, 3))
        e = claim(store, "r1", now=T0 + 100).run.epoch
        # Two writes continuing the same journal position: the second overlaps the first.
        overlap = (RunWrite("r1", e, entries(3, 4)), RunWrite("r1", e, entries(3, 4)))
        assert write(store, *overlap, now=T0 + 101) == {"r1"}
        # A good write followed by a stale one: nothing of the run is applied.
        mixed = (RunWrite("r1", e, entries(3, 4), status="running"), RunWrite("r1", e - 1))
        assert write(store, *mixed, now=T0 + 102) == {"r1"}
        assert store.load_journal("r1") == list(entries(0, 3))
        assert store.get_run("r1").status == "sleeping"

    def test_status_and_wake_at_updates(self, store: Store) -> None:
        """How status, wake_at, updated_at, output and error change with writes."""
        create(store, new_run("r1"))
        e = claim(store, "r1").run.epoch
        assert write(
            store, RunWrite("r1", e, status="sleeping", wake_at=T0 + 1000), now=T0 + 10
        ) == set()
        run = store.get_run("r1")
        assert (run.status, run.wake_at, run.updated_at) == ("sleeping", T0 + 1000, T0 + 10)
        assert (run.lease_owner, run.lease_expires) == ("w1", T0 + LEASE)  # still leased
        # A journal-only write (no status, release or consumed signals) leaves the record
        # as it is, updated_at included: it is the hot path.
        assert write(store, RunWrite("r1", e, entries(0, 1), wake_at=T0 + 5),
                     now=T0 + 20) == set()
        assert store.get_run("r1") == run
        # Without a status, status and wake_at stay, but the write is recorded.
        assert write(store, RunWrite("r1", e, wake_at=T0 + 5, consumed_signals=1),
                     now=T0 + 25) == set()
        run = store.get_run("r1")
        assert (run.status, run.wake_at, run.updated_at) == ("sleeping", T0 + 1000, T0 + 25)
        assert write(store, RunWrite("r1", e, status="waiting"), now=T0 + 30) == set()
        run = store.get_run("r1")
        assert (run.status, run.wake_at) == ("waiting", None)
        # output / error are only recorded with a terminal status.
        err = ErrorInfo("E", "m")
        assert write(store, RunWrite("r1", e, status="running", output="1", error=err)) == set()
        run = store.get_run("r1")
        assert (run.status, run.output, run.error, run.ended_at) == ("running", None, None, None)

    @pytest.mark.parametrize(
        ("status", "output", "error"),
        [
            ("completed", '{"ok": true}', None),
            ("failed", None, ErrorInfo("ValueError", "boom")),
            ("cancelled", None, ErrorInfo("Cancelled", "stop it")),
        ],
    )
    def test_terminal_write_records_outcome_and_releases(
        self, store: Store, status: str, output: str | None, error: ErrorInfo | None
    ) -> None:
        """A terminal status records the outcome, clears wake_at and releases."""
        create(store, new_run("r1"))
        c = claim(store, "r1")
        w = RunWrite("r1", c.run.epoch, entries(0, 1), status=status, wake_at=T0 + 99,
                     output=output, error=error)
        assert write(store, w, now=T0 + 50) == set()
        assert store.get_run("r1") == attrs.evolve(
            c.run, status=status, output=output, error=error, ended_at=T0 + 50, wake_at=None,
            updated_at=T0 + 50, lease_owner=None, lease_expires=None,
        )
        assert store.next_wake_at() is None
        assert store.claim_runs("w2", T0 + DAY, LEASE, 10) == []
        assert store.renew("w1", ["r1"], T0 + 60, LEASE) == {"r1"}

    def test_a_failed_run_keeps_its_errors_traceback(self, store: Store) -> None:
        """The error a run ended with keeps its traceback (up to ErrorInfo's bound), read
        back by get_run and list_runs; an error without one reads back without one."""
        tb = ("Traceback (most recent call last):\n  File \"app.py\", line 3, in f\n"
              "    raise ValueError('nope ✓')\n" * 200)[:16_000] + "ValueError: nope ✓\n"
        create(store, new_run("r1"), new_run("r2"))
        for rid, error in (("r1", ErrorInfo("ValueError", "nope ✓", tb)),
                           ("r2", ErrorInfo("Cancelled", "by request"))):
            c = claim(store, rid)
            assert write(store, RunWrite(rid, c.run.epoch, status="failed", error=error)) == set()
        got = store.get_run("r1").error
        assert got is not None and got.traceback == tb
        assert [r.error.traceback for r in store.list_runs(status="failed")
                if r.error is not None] == [None, tb]
        got2 = store.get_run("r2").error
        assert got2 is not None and got2.traceback is None

    def test_release_gives_the_lease_up(self, store: Store) -> None:
        """``release`` clears the lease and keeps the epoch."""
        create(store, new_run("r1"))
        e = claim(store, "r1").run.epoch
        assert write(store, RunWrite("r1", e, status="waiting", release=True)) == set()
        run = store.get_run("r1")
        assert (run.lease_owner, run.lease_expires, run.epoch) == (None, None, e)
        assert store.claim_runs("w2", T0 + 1, LEASE, 10) == []  # nothing to do
        sig = Signal("event", "k", "{}", 0)
        assert store.commit(CommitBatch(now=T0 + 1, signals=(("r1", sig),))) == set()
        c = claim(store, "r1", owner="w2", now=T0 + 1)
        assert (c.run.epoch, c.run.lease_owner) == (e + 1, "w2")
        assert write(store, RunWrite("r1", e, entries(0, 1))) == {"r1"}

    # ------------------------------------------------------------------ claims

    def test_claim_runs_leases_queued_runs_oldest_first(self, store: Store) -> None:
        """Queued runs are claimed oldest first, each with a new epoch and lease."""
        create(store, new_run("r3"), new_run("r1"))
        create(store, new_run("r2"))
        claims = store.claim_runs("w1", T0, LEASE, 10)
        assert [c.run.id for c in claims] == ["r3", "r1", "r2"]
        for c in claims:
            assert (c.run.epoch, c.run.lease_owner, c.run.lease_expires) == (1, "w1", T0 + LEASE)
            assert (c.run.status, c.journal, c.signals) == ("queued", (), ())
            assert store.get_run(c.run.id) == c.run
        assert store.claim_runs("w2", T0 + LEASE - 1, LEASE, 10) == []

    def test_claim_runs_respects_limit(self, store: Store) -> None:
        """``claim_runs`` leases at most ``limit`` runs."""
        create(store, *(new_run(f"r{i}") for i in range(5)))
        got = [[c.run.id for c in store.claim_runs("w1", T0, LEASE, 2)] for _ in range(4)]
        assert got == [["r0", "r1"], ["r2", "r3"], ["r4"], []]

    def test_claim_runs_limit_zero_claims_nothing(self, store: Store) -> None:
        """``claim_runs(limit=0)`` leases nothing."""
        create(store, new_run("r1"))
        assert store.claim_runs("w1", T0, LEASE, 0) == []
        assert store.get_run("r1").epoch == 0

    def test_expired_lease_can_be_claimed_again(self, store: Store) -> None:
        """An expired lease (even mid-work) lets another owner claim the run."""
        create(store, new_run("r1"), new_run("r2"))
        claim(store, "r1")
        e2 = claim(store, "r2").run.epoch
        # r2 is mid-work (running, no wake_at): only its expired lease makes it claimable.
        assert write(store, RunWrite("r2", e2, entries(0, 1), status="running")) == set()
        assert store.claim_runs("w2", T0 + LEASE - 1, LEASE, 10) == []
        claims = store.claim_runs("w2", T0 + LEASE, 1000, 10)
        assert [(c.run.id, c.run.epoch, c.run.lease_owner, c.run.lease_expires)
                for c in claims] == [
            ("r1", 2, "w2", T0 + LEASE + 1000), ("r2", 2, "w2", T0 + LEASE + 1000)
        ]
        assert claims[1].journal == entries(0, 1)

    def test_claim_runs_takes_due_sleepers(self, store: Store) -> None:
        """A released run is claimable once ``wake_at <= now``."""
        create(store, new_run("r1"))
        e = claim(store, "r1").run.epoch
        w = RunWrite("r1", e, status="sleeping", wake_at=T0 + 1000, release=True)
        assert write(store, w) == set()
        assert store.next_wake_at() == T0 + 1000
        assert store.claim_runs("w1", T0 + 999, LEASE, 10) == []
        [c] = store.claim_runs("w1", T0 + 1000, LEASE, 10)
        assert (c.run.id, c.run.epoch, c.run.status, c.run.wake_at) == (
            "r1", e + 1, "sleeping", T0 + 1000,
        )

    def test_claim_runs_takes_runs_with_signals(self, store: Store) -> None:
        """A released run with signals is claimable; the claim carries them."""
        create(store, new_run("r1"))
        e = claim(store, "r1").run.epoch
        assert write(store, RunWrite("r1", e, entries(0, 1), status="waiting",
                                     release=True)) == set()
        assert store.claim_runs("w1", T0 + 1, LEASE, 10) == []
        a = Signal("event", "e1", '{"a": 1}', 3)
        b = Signal("cancel", "c", '"stop"')
        assert store.commit(CommitBatch(now=T0 + 1, signals=(("r1", a), ("r1", b)))) == set()
        [c] = store.claim_runs("w1", T0 + 2, LEASE, 10)
        assert [s for _, s in c.signals] == [a, b]
        assert c.signals[0][0] < c.signals[1][0]
        assert c.journal == entries(0, 1)

    def test_claim_runs_skips_terminal_runs(self, store: Store) -> None:
        """Finished runs are never claimed, signals or not."""
        create(store, new_run("r1"), new_run("r2"))
        e = claim(store, "r1").run.epoch
        assert write(store, RunWrite("r1", e, status="completed", output="1")) == set()
        sig = Signal("event", "k", "{}", 0)
        assert store.commit(CommitBatch(now=T0, signals=(("r1", sig),))) == set()
        assert [c.run.id for c in store.claim_runs("w1", T0 + DAY, LEASE, 10)] == ["r2"]

    def test_renew_extends_held_leases_and_reports_lost_ones(self, store: Store) -> None:
        """``renew`` extends held leases and reports the lost ones."""
        create(store, *(new_run(f"r{i}") for i in range(1, 5)))
        claims = {c.run.id: c for c in store.claim_runs("w1", T0, LEASE, 10)}
        assert write(store, RunWrite("r3", claims["r3"].run.epoch, status="completed",
                                     output="1")) == set()
        assert write(store, RunWrite("r4", claims["r4"].run.epoch, status="waiting",
                                     release=True)) == set()
        lost = store.renew("w1", ["r1", "r2", "r3", "r4", "ghost"], T0 + 10, LEASE)
        assert lost == {"r3", "r4", "ghost"}
        run = store.get_run("r1")
        assert (run.lease_owner, run.lease_expires, run.epoch) == ("w1", T0 + 10 + LEASE, 1)
        taken = store.claim_runs("w2", T0 + 10 + LEASE, LEASE, 10)
        assert [c.run.id for c in taken] == ["r1", "r2"]
        assert store.renew("w1", ["r1", "r2"], T0 + 11 + LEASE, LEASE) == {"r1", "r2"}
        assert store.renew("w2", ["r1"], T0 + 11 + LEASE, LEASE) == set()
        assert store.renew("w1", [], T0, LEASE) == set()

    # ------------------------------------------------------------------ signals

    def test_signals_inbox_is_consumed_up_to_seq(self, store: Store) -> None:
        """A run's signals are kept until a write consumes them up to a seq."""
        create(store, new_run("r1"))
        e = claim(store, "r1").run.epoch
        a, b, c = (Signal("event", k, json.dumps({"k": k}), i) for i, k in enumerate("abc"))
        assert store.commit(
            CommitBatch(now=T0, signals=(("r1", a), ("ghost", a), ("r1", b)))
        ) == set()
        assert write(store, RunWrite("r1", e, status="waiting", release=True)) == set()
        [got] = store.claim_runs("w1", T0 + 1, LEASE, 10)
        assert [s for _, s in got.signals] == [a, b]
        (sa, _), (sb, _) = got.signals
        w = RunWrite("r1", got.run.epoch, status="waiting", consumed_signals=sa, release=True)
        assert write(store, w, signals=(("r1", c),)) == set()
        got = claim(store, "r1", now=T0 + 2)
        assert [s for _, s in got.signals] == [b, c]
        assert got.signals[0][0] == sb
        sc = got.signals[1][0]
        assert sc > sb
        w = RunWrite("r1", got.run.epoch, status="waiting", consumed_signals=sc, release=True)
        assert write(store, w) == set()
        assert store.claim_runs("w1", T0 + 3, LEASE, 10) == []  # no signals left
        # A signal to a run that did not exist yet was dropped.
        create(store, new_run("ghost"))
        assert claim(store, "ghost").signals == ()
        # A signal to a run created in the same batch is delivered.
        batch = CommitBatch(now=T0, runs=(new_run("child"),), signals=(("child", a),))
        assert store.commit(batch) == set()
        assert [s for _, s in claim(store, "child").signals] == [a]

    def test_signal_seqs_are_never_reused(self, store: Store) -> None:
        """Signal seqs keep growing even after all of a run's signals were consumed."""
        create(store, new_run("r1"))
        seen: list[int] = []
        for i in range(3):
            sig = Signal("event", f"k{i}", "{}", i)
            assert store.commit(CommitBatch(now=T0, signals=(("r1", sig),))) == set()
            c = claim(store, "r1", now=T0 + i)
            [(seq, got)] = c.signals
            assert got == sig
            seen.append(seq)
            w = RunWrite("r1", c.run.epoch, status="waiting", consumed_signals=seq,
                         release=True)
            assert write(store, w) == set()
        assert seen == sorted(set(seen))

    def test_signals_never_outlive_their_run(self, store: Store) -> None:
        """A run that ends drops its undelivered signals, and a signal to an ended run
        (sent later, or in the batch that ends it) is dropped: signals of ended runs never
        fill up."""
        create(store, new_run("r1"), new_run("r2"), new_run("r3"))
        stop = Signal("cancel", "c", "stop")
        c1, c2 = claim(store, "r1"), claim(store, "r2")
        assert store.commit(CommitBatch(now=T0, signals=(("r1", stop), ("r2", stop)))) == set()
        assert store.cancel_requested(["r1", "r2"]) == {"r1", "r2"}
        # r1 ends on its own: its pending cancel goes with it.
        assert write(store, RunWrite("r1", c1.run.epoch, entries(0, 1), status="completed",
                                     output="1")) == set()
        assert store.cancel_requested(["r1", "r2"]) == {"r2"}
        # r2 ends, and a signal for it arrives in the same batch.
        assert write(store, RunWrite("r2", c2.run.epoch, status="failed",
                                     error=ErrorInfo("E", "m")),
                     signals=(("r2", stop),)) == set()
        assert store.cancel_requested(["r2"]) == set()
        # Signals sent after the end are dropped; open runs still get theirs.
        batch = CommitBatch(now=T0 + 1, signals=(("r1", stop), ("r2", stop), ("r3", stop)))
        assert store.commit(batch) == set()
        assert store.cancel_requested(["r1", "r2", "r3"]) == {"r3"}
        assert [s for _, s in claim(store, "r3", now=T0 + 1).signals] == [stop]

    def test_cancel_requested_reports_runs_with_a_cancel_in_their_inbox(
        self, store: Store
    ) -> None:
        """Only runs with a pending cancel signal are reported; consuming it clears it."""
        create(store, new_run("r1"), new_run("r2"), new_run("r3"))
        batch = CommitBatch(now=T0, signals=(
            ("r1", Signal("cancel", "r1", "stop")),
            ("r2", Signal("event", "k", "{}", 0)),
        ))
        assert store.commit(batch) == set()
        assert store.cancel_requested(["r1", "r2", "r3", "unknown"]) == {"r1"}
        assert store.cancel_requested([]) == set()
        c = claim(store, "r1")
        [(seq, _sig)] = c.signals
        w = RunWrite("r1", c.run.epoch, status="waiting", consumed_signals=seq, release=True)
        assert write(store, w) == set()
        assert store.cancel_requested(["r1"]) == set()

    def test_no_wait_is_registered_for_a_run_the_batch_skipped(self, store: Store) -> None:
        """Two routers creating the same run: the second batch's run is skipped (its
        idempotency key is held, or its id exists), and so are the waits it registers for
        that run; waits of the runs it did create, and of existing runs, are registered."""
        first = new_run("r1", key="event:e1")
        wait = WaitRecord("r1", -1000, "stop", None, "{}", T0 + DAY)
        assert store.commit(CommitBatch(now=T0, runs=(first,), waits_add=(wait,))) == set()
        twin = new_run("r2", key="event:e1")  # the same key: skipped
        again = new_run("r1")  # an existing id: skipped (its wait is kept as registered)
        fresh = new_run("r3")
        waits = tuple(WaitRecord(r, -1000, "stop", None, "{}", T0 + DAY) for r in
                      ("r2", "r1", "r3"))
        batch = CommitBatch(now=T0, runs=(twin, again, fresh), waits_add=waits)
        assert store.commit(batch) == set()
        assert sorted(w.run_id for w in store.find_waits("stop", T0)) == ["r1", "r3"]
        with pytest.raises(RunNotFoundError):
            store.get_run("r2")

    def test_a_run_keeps_the_run_it_reruns(self, store: Store) -> None:
        """``NewRun.rerun_of`` is stored with the run and read back by ``get_run``,
        ``list_runs`` and claims; runs created without it have None."""
        create(store, new_run("r1"))
        rerun = attrs.evolve(new_run("r2"), rerun_of="r1")
        assert store.commit(CommitBatch(now=T0, runs=(rerun,))) == set()
        assert store.get_run("r2").rerun_of == "r1"
        assert store.get_run("r1").rerun_of is None
        assert {r.id: r.rerun_of for r in store.list_runs()} == {"r1": None, "r2": "r1"}
        claimed = {c.run.id: c.run.rerun_of for c in store.claim_runs("w", T0, 60_000, 10)}
        assert claimed == {"r1": None, "r2": "r1"}

    def test_cancel_reasons_give_each_run_its_first_cancel(self, store: Store) -> None:
        """``cancel_reasons``: the runs holding a cancel signal, each with the payload of its
        first (lowest seq) one; other signals, other runs and consumed cancels are not
        reported."""
        create(store, new_run("r1"), new_run("r2"), new_run("r3"))
        batch = CommitBatch(now=T0, signals=(
            ("r1", Signal("cancel", "r1", "first")),
            ("r2", Signal("event", "k", "{}", 0)),
            ("r1", Signal("cancel", "e", "second")),
            ("r3", Signal("cancel", "e", "timeouts.finish: late")),
        ))
        assert store.commit(batch) == set()
        assert store.cancel_reasons(["r1", "r2", "r3", "unknown"]) == {
            "r1": "first", "r3": "timeouts.finish: late"}
        assert store.cancel_reasons([]) == {}
        c = claim(store, "r1")
        seq = max(s for s, _ in c.signals)
        w = RunWrite("r1", c.run.epoch, status="waiting", consumed_signals=seq, release=True)
        assert write(store, w) == set()
        assert store.cancel_reasons(["r1", "r3"]) == {"r3": "timeouts.finish: late"}

    # ------------------------------------------------------------------ waits

    def test_waits_add_find_remove(self, store: Store) -> None:
        """Waits are found by event name until they expire, and can be removed."""
        create(store, new_run("r1"), new_run("r2"))
        [last] = store.append_events([event_json("e0")], T0)
        te = event_json("e0")
        p0 = WaitRecord("r1", 0, "paid", None, te, T0 + 100, after_seq=last.seq)
        p1 = WaitRecord("r1", 1, "paid", "event.data.id == async.data.id", te, T0 + 50,
                        after_seq=last.seq)
        s0 = WaitRecord("r2", 0, "shipped", None, te, T0 + 100, after_seq=last.seq)
        # after_seq 0 leaves it to the store (see the after_seq tests).
        given = [attrs.evolve(w, after_seq=0) for w in (p0, p1, s0)]
        assert store.commit(CommitBatch(now=T0, waits_add=tuple(given))) == set()

        def find(name: str, now: int) -> list[WaitRecord]:
            return sorted(store.find_waits(name, now), key=lambda w: (w.run_id, w.position))

        assert find("paid", T0) == [p0, p1]
        assert find("paid", T0 + 49) == [p0, p1]
        assert find("paid", T0 + 50) == [p0]  # expired at expires_at
        assert find("paid", T0 + 100) == []
        assert find("shipped", T0) == [s0]
        assert find("nope", T0) == []
        rm = CommitBatch(now=T0, waits_remove=(("r1", 0), ("r9", 9)))
        assert store.commit(rm) == set()
        assert find("paid", T0) == [p1]
        both = CommitBatch(now=T0, waits_add=(p0,), waits_remove=(("r1", 0),))
        assert store.commit(both) == set()
        assert find("paid", T0) == [p1]

    def test_wait_after_seq_is_the_last_event_at_registration(self, store: Store) -> None:
        """The store sets ``after_seq`` once, from the end of the event log."""
        create(store, new_run("r1"))

        def register(position: int, **batch: Any) -> WaitRecord:
            wait = WaitRecord("r1", position, "paid", None, "{}", T0 + DAY)
            assert store.commit(CommitBatch(now=T0, waits_add=(wait,), **batch)) == set()
            [got] = [w for w in store.find_waits("paid", T0) if w.position == position]
            assert got == attrs.evolve(wait, after_seq=got.after_seq)
            return got

        assert register(0).after_seq == 0  # an empty log
        first, dup = store.append_events([event_json("e1"), event_json("e1")], T0)
        assert dup.duplicate
        assert register(1).after_seq == dup.seq  # duplicates are in the log too
        # The batch's own events come first.
        w2 = register(2, events=(event_json("e2"),))
        assert w2.after_seq == store.unrouted_events(10)[-1].seq > dup.seq
        # Registering the same (run, position) again keeps the original after_seq.
        store.append_events([event_json("e3")], T0)
        assert register(1).after_seq == dup.seq
        assert register(0).after_seq == 0
        # Once removed, registering again starts from the end of the log.
        assert store.commit(CommitBatch(now=T0, waits_remove=(("r1", 1),))) == set()
        assert register(1).after_seq == store.unrouted_events(10)[-1].seq
        assert first.seq < dup.seq

    def test_wait_after_seq_given_by_the_registration_is_kept(self, store: Store) -> None:
        """A registration with ``after_seq > 0`` keeps it (a run's cancel-on listeners count
        from its triggering event, not from the end of the log); registering again keeps
        the first value, as for any wait."""
        create(store, new_run("r1"))
        first, second, third = store.append_events(
            [event_json("e1"), event_json("e2"), event_json("e3")], T0)
        wait = WaitRecord("r1", -1000, "stop", None, "{}", T0 + DAY, after_seq=first.seq)
        assert store.commit(CommitBatch(now=T0, waits_add=(wait,))) == set()
        assert store.find_waits("stop", T0) == [wait]
        again = attrs.evolve(wait, after_seq=second.seq)
        assert store.commit(CommitBatch(now=T0, waits_add=(again,),
                                        events=(event_json("e4"),))) == set()
        assert store.find_waits("stop", T0) == [wait]
        # With keys too, and in a batch that creates the run.
        keyed = WaitRecord("r2", -1000, "stop", "event.data.id == async.data.id", "{}",
                           T0 + DAY, after_seq=second.seq, keys=("data.id=7",))
        batch = CommitBatch(now=T0, runs=(new_run("r2"),), waits_add=(keyed,))
        assert store.commit(batch) == set()
        found = sorted(store.find_waits("stop", T0, ["data.id=7"]), key=lambda w: w.run_id)
        assert found == [wait, keyed]
        assert third.seq > second.seq

    def test_waits_are_found_by_match_key(self, store: Store) -> None:
        """With keys, ``find_waits`` returns exactly the waits :func:`wait_found` says: those
        without keys and those sharing a key, each once, with all their keys; expired and
        removed waits are never found, and ``wait_key_paths`` lists the keys' paths."""
        create(store, new_run("r1"), new_run("r2"), new_run("r3"))
        te = event_json("e0")
        none = WaitRecord("r1", 0, "paid", None, te, T0 + 100)
        one = WaitRecord("r1", 1, "paid", "async.data.k == 'a'", te, T0 + 100,
                         keys=('data.k="a"',))
        many = WaitRecord("r2", 0, "paid", "async.data.k in ['a', 'b']", te, T0 + 100,
                          keys=('data.k="a"', 'data.k="b"'))
        other = WaitRecord("r2", 1, "paid", "async.id == 'x'", te, T0 + 100, keys=('id="x"',))
        short = WaitRecord("r3", 0, "paid", "async.data.k == 'b'", te, T0 + 50,
                           keys=('data.k="b"',))
        elsewhere = WaitRecord("r3", 1, "shipped", "async.data.k == 'a'", te, T0 + 100,
                               keys=('data.k="a"',))
        waits: tuple[WaitRecord, ...] = (none, one, many, other, short, elsewhere)
        assert store.commit(CommitBatch(now=T0, waits_add=waits)) == set()

        def find(keys: Sequence[str] | None, name: str = "paid", now: int = T0
                 ) -> list[WaitRecord]:
            got = store.find_waits(name, now, keys)
            assert len({where(w) for w in got}) == len(got), "a wait was found twice"
            return sorted((attrs.evolve(w, after_seq=0) for w in got), key=where)

        def expected(keys: Sequence[str] | None, name: str = "paid", now: int = T0
                     ) -> list[WaitRecord]:
            return sorted((w for w in waits if w.event == name and w.expires_at > now
                           and wait_found(w.keys, keys)), key=where)

        cases: list[Sequence[str] | None] = [
            None, [], ['data.k="a"'], ['data.k="b"'], ['data.k="c"'], ['id="x"'],
            ['data.k="a"', 'data.k="b"'], ['data.k="b"', 'id="x"'], ["data.k=1"],
        ]
        for keys in cases:
            assert find(keys) == expected(keys), keys
            assert find(keys, now=T0 + 50) == expected(keys, now=T0 + 50), keys
            assert find(keys, "shipped") == expected(keys, "shipped"), keys
        assert find(['data.k="b"']) == [none, many, short]  # the rule, spelled out
        assert store.wait_key_paths("paid") == ["data.k", "id"]
        assert store.wait_key_paths("shipped") == ["data.k"]
        assert store.wait_key_paths("nope") == []
        # Registering again keeps the first record; removing takes every key with it.
        again = attrs.evolve(many, expires_at=T0 + 999)
        assert store.commit(CommitBatch(now=T0, waits_add=(again,))) == set()
        assert find(['data.k="b"']) == [none, many, short]
        rm = (("r2", 0), ("r2", 1), ("r1", 0))
        assert store.commit(CommitBatch(now=T0, waits_remove=rm)) == set()
        waits = (one, short, elsewhere)
        for keys in cases:
            assert find(keys) == expected(keys), keys
        assert store.wait_key_paths("paid") == ["data.k"]
        # Removed and expired alike once resumed, timed out or cancelled: cleared by the run.
        rm = (("r1", 1), ("r3", 0), ("r3", 1))
        assert store.commit(CommitBatch(now=T0, waits_remove=rm)) == set()
        assert find(None) == find(['data.k="a"', 'data.k="b"']) == []
        assert store.wait_key_paths("paid") == []

    def test_waits_of_a_fenced_run_are_not_indexed(self, store: Store) -> None:
        """A wait (with keys) of a run whose writes are rejected is not registered, so no
        key finds it."""
        create(store, new_run("r1"))
        c = claim(store, "r1")
        w = WaitRecord("r1", 0, "paid", "async.data.k == 1", "{}", T0 + DAY, keys=("data.k=1",))
        stale = RunWrite("r1", c.run.epoch - 1, entries(0, 1))
        assert write(store, stale, waits_add=(w,)) == {"r1"}
        assert store.find_waits("paid", T0, ["data.k=1"]) == []
        assert store.wait_key_paths("paid") == []

    # ------------------------------------------------------------------ timers, cron

    def test_next_wake_at(self, store: Store) -> None:
        """``next_wake_at`` is the earliest wake_at of unfinished runs."""
        assert store.next_wake_at() is None
        create(store, new_run("r1"), new_run("r2"), new_run("r3"))
        ep = {c.run.id: c.run.epoch for c in store.claim_runs("w1", T0, LEASE, 10)}
        assert store.next_wake_at() is None
        assert write(
            store,
            RunWrite("r1", ep["r1"], status="sleeping", wake_at=T0 + 500, release=True),
            RunWrite("r2", ep["r2"], status="sleeping", wake_at=T0 + 300, release=True),
            RunWrite("r3", ep["r3"], status="running"),
        ) == set()
        assert store.next_wake_at() == T0 + 300
        e = claim(store, "r2", now=T0 + 300).run.epoch
        assert write(store, RunWrite("r2", e, status="completed", output="1")) == set()
        assert store.next_wake_at() == T0 + 500

    def test_cron_cursors_only_move_forward(self, store: Store) -> None:
        """Cron cursors only move forward."""
        assert store.cron_cursors() == {}
        assert store.commit(CommitBatch(now=T0, cron=(("a", T0), ("b", T0 - 50)))) == set()
        assert store.cron_cursors() == {"a": T0, "b": T0 - 50}
        assert store.commit(CommitBatch(now=T0, cron=(("a", T0 - 10),))) == set()
        assert store.cron_cursors() == {"a": T0, "b": T0 - 50}
        assert store.commit(
            CommitBatch(now=T0, cron=(("a", T0 + 150), ("a", T0 + 120), ("b", T0)))
        ) == set()
        assert store.cron_cursors() == {"a": T0 + 150, "b": T0}

    # ------------------------------------------------------------------ listing

    def test_list_runs_filters_newest_first(self, store: Store) -> None:
        """``list_runs`` filters by function, status and event id, newest first."""
        create(store, new_run("r1", function_id="a", event_ids=("e1",)))
        create(store, new_run("r2", function_id="b", event_ids=("e1", "e2")))
        create(store, new_run("r3", function_id="a", event_ids=("e2",)))
        create(store, new_run("r4", function_id="a", event_ids=("e10", "%")))
        e = {c.run.id: c for c in store.claim_runs("w1", T0, LEASE, 10)}["r3"].run.epoch
        assert write(store, RunWrite("r3", e, status="completed", output="1")) == set()

        def ids(**kw: Any) -> list[str]:
            runs = store.list_runs(**kw)
            assert runs == [store.get_run(r.id) for r in runs]
            return [r.id for r in runs]

        assert ids() == ["r4", "r3", "r2", "r1"]
        assert ids(function_id="a") == ["r4", "r3", "r1"]
        assert ids(status="completed") == ["r3"]
        assert ids(status="queued") == ["r4", "r2", "r1"]
        assert ids(event_id="e1") == ["r2", "r1"]
        assert ids(event_id="e2") == ["r3", "r2"]
        assert ids(event_id="e") == []
        assert ids(event_id="%") == ["r4"]
        assert ids(function_id="a", event_id="e2") == ["r3"]
        assert ids(function_id="a", status="queued") == ["r4", "r1"]
        assert ids(function_id="a", status="queued", event_id="e1") == ["r1"]
        assert ids(limit=2) == ["r4", "r3"]
        assert ids(function_id="zzz") == []

    def test_list_runs_time_range_and_paging(self, store: Store) -> None:
        """``list_runs(since=, until=)`` keeps runs created in ``[since, until)``;
        ``before=<run id>`` pages: the runs created before that one, newest first (an
        unknown id: none). Filters combine, and paging through with ``limit`` visits each
        run once."""
        for i in range(1, 6):
            create(store, new_run(f"r{i}", function_id="a" if i % 2 else "b",
                                  created_at=T0 + i * 1000), now=T0 + i * 1000)

        def ids(**kw: Any) -> list[str]:
            return [r.id for r in store.list_runs(**kw)]

        assert ids(since=T0 + 2000) == ["r5", "r4", "r3", "r2"]
        assert ids(until=T0 + 2000) == ["r1"]
        assert ids(since=T0 + 2000, until=T0 + 4001) == ["r4", "r3", "r2"]
        assert ids(since=T0 + 2000, until=T0 + 4001, function_id="a") == ["r3"]
        assert ids(before="r4") == ["r3", "r2", "r1"]
        assert ids(before="r4", function_id="b") == ["r2"]
        assert ids(before="r1") == []
        assert ids(before="no-such-run") == []
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page = ids(limit=2, before=cursor)
            if not page:
                break
            seen += page
            cursor = page[-1]
        assert seen == ["r5", "r4", "r3", "r2", "r1"]

    def test_list_events_filters_pages_and_shows_duplicates(self, store: Store) -> None:
        """``list_events`` lists the log newest first, duplicates included (flagged), by
        ``name``, by receipt time in ``[since, until)`` and by page (``before=<seq>``);
        ``limit <= 0`` lists none."""
        store.append_events([event_json("e1", "a")], T0)
        store.append_events([event_json("e2", "b"), event_json("e3", "a")], T0 + 1000)
        store.append_events([event_json("e1", "a")], T0 + 2000)  # a duplicate
        evs = store.list_events()
        assert [(e.id, e.duplicate) for e in evs] == [
            ("e1", True), ("e3", False), ("e2", False), ("e1", False)]
        assert [e.seq for e in evs] == sorted((e.seq for e in evs), reverse=True)
        assert evs[1] == store.get_event("e3")
        assert [e.id for e in store.list_events(name="a")] == ["e1", "e3", "e1"]
        assert [e.id for e in store.list_events(since=T0 + 1000)] == ["e1", "e3", "e2"]
        assert [e.id for e in store.list_events(until=T0 + 1000)] == ["e1"]
        assert [e.id for e in store.list_events(since=T0 + 1000, until=T0 + 2000,
                                                name="b")] == ["e2"]
        assert [e.id for e in store.list_events(before=evs[1].seq)] == ["e2", "e1"]
        assert [e.id for e in store.list_events(limit=1)] == ["e1"]
        assert store.list_events(limit=0) == []
        assert store.list_events(name="zzz") == []

    def test_list_runs_limit_zero_returns_nothing(self, store: Store) -> None:
        """``list_runs(limit=0)`` is empty."""
        create(store, new_run("r1"))
        assert store.list_runs(limit=0) == []

    # ------------------------------------------------------------------ user strings

    def test_user_strings_round_trip_unchanged(self, store: Store) -> None:
        """SQL metacharacters, quotes and unicode in every string field round-trip."""
        for i, s in enumerate(NASTY_STRINGS):
            _round_trip(store, s, i)
        assert len(store.list_runs(limit=10_000)) == 2 * len(NASTY_STRINGS)

    def test_arbitrary_text_round_trips_unchanged(self) -> None:
        """Any NUL-free text round-trips through every string field."""
        @settings(self.hypothesis_settings)
        @given(text=_TEXT)
        def check(text: str) -> None:
            store = self.make_store()
            try:
                _round_trip(store, text, 0)
            finally:
                store.close()

        check()

    # ------------------------------------------------------------------ threads

    def test_concurrent_claims_from_threads_are_exclusive(self, store: Store) -> None:
        """Threads claiming from one store never share a run."""
        n_threads, n_runs = 4, 40
        create(store, *(new_run(f"r{i:02d}") for i in range(n_runs)))
        claimed: list[list[str]] = [[] for _ in range(n_threads)]

        def work(k: int) -> None:
            while claims := store.claim_runs(f"w{k}", T0, LEASE, 3):
                for c in claims:
                    claimed[k].append(c.run.id)
                    w = RunWrite(c.run.id, c.run.epoch, entries(0, 1), status="completed",
                                 output=json.dumps(k))
                    assert store.commit(CommitBatch(now=T0, writes=(w,))) == set()

        run_threads(n_threads, work)
        flat = [r for ids in claimed for r in ids]
        assert sorted(flat) == [f"r{i:02d}" for i in range(n_runs)]  # each exactly once
        for k, ids in enumerate(claimed):
            for run_id in ids:
                run = store.get_run(run_id)
                assert (run.status, run.output, run.epoch) == ("completed", json.dumps(k), 1)

    # ------------------------------------------------------------------ settled rules

    def test_an_expired_lease_cannot_be_renewed_even_by_its_owner(self, store: Store) -> None:
        """A lease that expired is lost, even if nobody claimed the run since: renewing it
        fails and changes nothing, and any worker may claim the run."""
        create(store, new_run("r1"))
        c = claim(store, "r1")
        assert store.renew("w1", ["r1"], T0 + LEASE - 1, LEASE) == set()  # still held
        expires = T0 + LEASE - 1 + LEASE
        assert store.get_run("r1").lease_expires == expires
        assert store.renew("w1", ["r1"], expires, LEASE) == {"r1"}  # expired at expires
        assert store.get_run("r1") == attrs.evolve(c.run, lease_expires=expires)
        [again] = store.claim_runs("w2", expires, LEASE, 10)
        assert (again.run.id, again.run.epoch) == ("r1", c.run.epoch + 1)

    def test_dedupe_window_runs_from_receipt_not_from_ts(self, store: Store) -> None:
        """The 24 h dedupe window is measured from when the store received the original,
        whatever the events' ``ts`` say: a back-dated event does not escape dedupe, and a
        future-dated one does not block its id for longer than 24 h."""
        [old] = store.append_events([event_json("old", ts=T0 - 3 * DAY)], T0)
        assert (old.ts, old.received_at, old.duplicate) == (T0 - 3 * DAY, T0, False)
        [again] = store.append_events([event_json("old", ts=T0 - 3 * DAY)], T0 + 1)
        assert (again.received_at, again.duplicate) == (T0 + 1, True)
        [future] = store.append_events([event_json("future", ts=T0 + 3 * DAY)], T0)
        assert not future.duplicate
        [dup] = store.append_events([event_json("future", ts=T0 + 3 * DAY)], T0 + DAY - 1)
        assert dup.duplicate
        [new] = store.append_events([event_json("future", ts=T0 + 3 * DAY)], T0 + DAY)
        assert not new.duplicate
        assert store.get_event("future") == new
        # A duplicate does not restart the window: it runs from the original's receipt.
        [later] = store.append_events([event_json("old", ts=T0)], T0 + DAY)
        assert not later.duplicate
        # In a commit, events are received at batch.now.
        assert store.commit(CommitBatch(now=T0 + 7, events=(event_json("c", ts=5),))) == set()
        got = store.get_event("c")
        assert got is not None and (got.ts, got.received_at) == (5, T0 + 7)

    # ------------------------------------------------------------------ rule cases
    # Each test drives the store into a table of states and checks what it does against the
    # contract's rule function: a store whose SQL states a rule is checked against it here.

    def test_claims_follow_the_due_at_rule(self, store: Store) -> None:
        """Which runs ``claim_runs`` takes is :func:`~durable_core.store.due_at` ``<= now``,
        on every kind of run state."""
        now = T0 + 10 * LEASE
        sig = Signal("event", "k", "{}", 0)
        cases = [  # (lease: None/"held"/"expired"/"released", status, wake_at, signal)
            (None, None, None, False), ("held", None, None, False),
            ("expired", None, None, False), ("held", "running", None, False),
            ("expired", "running", None, False), ("released", "sleeping", now, False),
            ("released", "sleeping", now + 1, False), ("held", "sleeping", now - 5, False),
            ("released", "waiting", None, False), ("released", "waiting", None, True),
            ("held", "waiting", None, True), ("expired", "waiting", now + 99, True),
            ("released", "waiting", now - 1, False), ("released", "completed", None, True),
            ("held", "failed", None, False), ("released", "running", None, False),
            ("released", "queued", None, False), ("expired", "sleeping", now + 50, False),
        ]
        signalled: set[str] = set()
        for i, (lease, status, wake, signal) in enumerate(cases):
            run_id, fn = f"r{i:02d}", f"f{i:02d}"
            create(store, new_run(run_id, function_id=fn))
            if lease is not None:
                at = now - LEASE if lease == "expired" else now - 1
                [c] = store.claim_runs("setup", at, LEASE, 1, [fn])
                if status is not None or lease == "released":
                    w = RunWrite(run_id, c.run.epoch, status=status, wake_at=wake,
                                 output="1" if status == "completed" else None,
                                 release=lease == "released")
                    assert write(store, w, now=at) == set()
            if signal:
                assert store.commit(CommitBatch(now=now, signals=((run_id, sig),))) == set()
                if store.get_run(run_id).status not in TERMINAL_STATUSES:
                    signalled.add(run_id)
        runs = sorted(store.list_runs(limit=1000), key=lambda r: r.id)
        expected = []
        for r in runs:
            due = due_at(r.status, r.lease_owner, r.lease_expires, r.wake_at, r.id in signalled)
            if due is not None and due <= now:
                expected.append(r.id)
        assert 3 < len(expected) < len(cases) - 3  # the table has both kinds
        got = store.claim_runs("checker", now, LEASE, 1000)
        assert [c.run.id for c in got] == expected

    def test_fencing_and_applying_follow_the_rules(self, store: Store) -> None:
        """What a commit rejects is :func:`~durable_core.store.write_accepted` of the folded
        writes (:func:`~durable_core.store.fold_writes`), and what it applies is
        :func:`~durable_core.store.apply_change`, on a table of writes (each shape goes its
        own way through a store's fast paths)."""
        err = ErrorInfo("E", "m")
        cases: list[tuple[int, tuple[RunWrite, ...]]] = []

        def add(ended: bool, *writes: RunWrite) -> None:
            cases.append((int(ended), writes))

        def w(epoch: int, first: int | None = 2, n: int = 1, **kw: Any) -> RunWrite:
            ents = () if first is None else entries(first, first + n)
            return RunWrite("?", epoch, ents, **kw)

        for end in (False, True):
            for shift in (0, -1, 1):
                for first in (None, 1, 2, 3):
                    add(end, w(shift, first))
                    add(end, w(shift, first, 2, status="sleeping", wake_at=T0 + 9))
                    add(end, w(shift, first, status="completed", output='"ok"'))
            add(end, w(0, 2, status="failed", error=err, release=True, consumed_signals=1))
            add(end, w(0, None, release=True), w(0, 2, 2, status="waiting"))
            add(end, w(0, 2), w(0, 3, status="running"), w(0, 4, consumed_signals=1))
            add(end, w(0, 2), w(0, 4))  # a gap between two writes
            add(end, w(0, 2), w(-1, 3))  # two epochs
            add(end, w(0, 2, status="completed", output="1"), w(0, 3))  # after the end
            add(end, w(0, None, status="cancelled", error=err), w(0, None, release=True))
        now = T0 + 100
        for i, (ended, writes) in enumerate(cases):
            run_id, fn = f"r{i:03d}", f"f{i:03d}"
            create(store, new_run(run_id, function_id=fn))
            [c] = store.claim_runs("w1", T0, LEASE, 1, [fn])
            epoch = c.run.epoch
            assert write(store, RunWrite(run_id, epoch, entries(0, 2))) == set()
            if ended:
                assert write(store, RunWrite(run_id, epoch, status="completed")) == set()
            batch = tuple(x._replace(run_id=run_id, epoch=epoch + x.epoch) for x in writes)
            before, journal = store.get_run(run_id), store.load_journal(run_id)
            [change] = fold_writes(batch).values()
            ok = write_accepted(change.epoch, change.first, before.epoch, before.status,
                                len(journal))
            assert write(store, *batch, now=now) == (set() if ok else {run_id}), batch
            if ok:
                assert store.get_run(run_id) == apply_change(before, change, now), batch
                assert store.load_journal(run_id) == [*journal, *change.entries], batch
            else:
                assert store.get_run(run_id) == before, batch
                assert store.load_journal(run_id) == journal, batch

    def test_renewal_follows_the_lease_held_rule(self, store: Store) -> None:
        """What ``renew`` keeps is :func:`~durable_core.store.lease_held`, on a table of
        leases (held, expiring now, expired, someone else's, released, ended)."""
        create(store, *(new_run(f"r{i}", function_id=f"f{i}") for i in range(6)))
        for i in range(6):
            [c] = store.claim_runs("w1" if i != 3 else "w2", T0, LEASE, 1, [f"f{i}"])
            if i == 4:
                assert write(store, RunWrite(c.run.id, c.run.epoch, status="waiting",
                                             release=True)) == set()
            if i == 5:
                assert write(store, RunWrite(c.run.id, c.run.epoch, status="completed",
                                             output="1")) == set()
        for now in (T0, T0 + LEASE - 1, T0 + LEASE, T0 + LEASE + 1):
            runs = {r.id: r for r in store.list_runs()}
            expected = {
                r for r, run in runs.items()
                if not lease_held(run.lease_owner, run.lease_expires, run.status, "w1", now)
            }
            assert store.renew("w1", [*runs, "ghost"], now, 10) == expected | {"ghost"}
            for r in runs:
                if r not in expected:
                    assert store.get_run(r).lease_expires == now + 10

    # ------------------------------------------------------------------ functions

    def test_claim_runs_takes_only_the_given_functions(self, store: Store) -> None:
        """With ``function_ids``, only runs of those functions are claimed; others stay
        queued (and listable) for a worker that has their function."""
        create(store, new_run("r1", function_id="a"), new_run("r2", function_id="gone"),
               new_run("r3", function_id="b"), new_run("r4", function_id="a"))
        assert store.claim_runs("w1", T0, LEASE, 10, []) == []
        assert [c.run.id for c in store.claim_runs("w1", T0, LEASE, 1, ["a", "b"])] == ["r1"]
        assert [c.run.id for c in store.claim_runs("w1", T0, LEASE, 10, ("b", "a", "x"))] \
            == ["r3", "r4"]
        assert store.claim_runs("w1", T0, LEASE, 10, ["a", "b"]) == []
        gone = store.get_run("r2")
        assert (gone.status, gone.epoch, gone.lease_owner) == ("queued", 0, None)
        assert store.list_runs(status="queued", exclude_function_ids=["a", "b"]) == [gone]
        assert [r.id for r in store.list_runs(exclude_function_ids=["gone"])] == [
            "r4", "r3", "r1"
        ]
        assert [r.id for r in store.list_runs(exclude_function_ids=[])] == [
            "r4", "r3", "r2", "r1"
        ]
        assert [c.run.id for c in store.claim_runs("w2", T0, LEASE, 10)] == ["r2"]

    # ------------------------------------------------------------------ durability

    def test_what_was_committed_is_there_after_reopening(self, store: Store) -> None:
        """Close the store and open it again (:meth:`reopen`): runs, journals, events, dedupe
        windows, idempotency keys, waits, signals, cron cursors, seq counters and epochs
        are all there."""
        epochs = _populate(store)
        before = _snapshot(store)
        store = self.reopen(store)
        try:
            assert _snapshot(store) == before
            [dup] = store.append_events([event_json("e2", ts=T0 + 5)], T0 + 5)
            assert dup.duplicate and dup.seq > max(e.seq for e in before["unrouted"])
            create(store, new_run("r9", key="k", created_at=T0 + 5))
            assert [r.id for r in store.list_runs()] == ["r3", "r2", "r1"]
            assert write(store, RunWrite("r2", epochs["r2"] - 1, entries(1, 2)),
                         RunWrite("r3", epochs["r3"], entries(3, 4))) == {"r2", "r3"}
            [c] = store.claim_runs("w2", T0 + 2, LEASE, 10)
            assert (c.run.id, c.run.epoch) == ("r1", epochs["r1"] + 1)
            [(seq, _)] = c.signals
            new = Signal("cancel", "c", '"stop"')
            assert store.commit(CommitBatch(now=T0 + 6, signals=(("r1", new),))) == set()
            assert store.cancel_requested(["r1"]) == {"r1"}
            w = RunWrite("r1", c.run.epoch, entries(2, 3), status="waiting",
                         consumed_signals=seq, release=True)
            assert write(store, w, now=T0 + 6) == set()
            [c] = store.claim_runs("w2", T0 + 7, LEASE, 10)
            assert [s for s, _ in c.signals] > [seq]  # signal seqs are never reused
            assert [s for _, s in c.signals] == [new]
        finally:
            store.close()

    def test_a_commit_that_fails_half_way_leaves_nothing(self, store: Store) -> None:
        """A commit that fails after writing part of its batch (see
        :meth:`fail_commits_half_way`) raises and leaves nothing of the batch; the store
        works on."""
        self.fail_commits_half_way(store)
        _populate(store)
        [c] = store.claim_runs("w2", T0 + 2, LEASE, 10)
        before = _snapshot(store)
        batch = CommitBatch(
            now=T0 + 3, events=(event_json("e9"),), runs=(new_run("r9", key="k2"),),
            writes=(RunWrite("r1", c.run.epoch, entries(2, 4), status="completed",
                             output="1", consumed_signals=c.signals[-1][0]),),
            waits_add=(WaitRecord("r1", 2, "paid", None, "{}", T0 + DAY),),
            waits_remove=(("r1", 1),), signals=(("r2", Signal("event", "x", "{}", 1)),),
            routed_events=tuple(e.seq for e in before["unrouted"]),
            cron=(("f|* * * * *", T0 + 60_000), ("boom", T0)),
        )
        with pytest.raises(Exception):  # noqa: B017 - whatever the store raises
            store.commit(batch)
        assert _snapshot(store) == before
        assert store.get_event("e9") is None
        # Nothing was left locked or half-open: the same batch without the fault commits.
        good = batch._replace(cron=batch.cron[:1])
        assert store.commit(good) == set()
        assert store.get_run("r1").status == "completed"
        assert store.get_run("r9").status == "queued"

    def test_a_batch_that_cannot_be_applied_leaves_nothing(self, store: Store) -> None:
        """A batch that the store refuses part way (an event that is not JSON, after valid
        events, runs and writes) raises and leaves nothing of it."""
        _populate(store)
        [c] = store.claim_runs("w2", T0 + 2, LEASE, 10)
        before = _snapshot(store)
        batch = CommitBatch(
            now=T0 + 3, runs=(new_run("r9"),), events=(event_json("e9"), "{not json"),
            writes=(RunWrite("r1", c.run.epoch, entries(2, 3), status="completed",
                             output="1"),),
            cron=(("f|* * * * *", T0 + 60_000),),
        )
        with pytest.raises(Exception):  # noqa: B017 - whatever the store raises
            store.commit(batch)
        with pytest.raises(Exception):  # noqa: B017
            store.append_events([event_json("e8"), "{not json"], T0 + 3)
        assert _snapshot(store) == before
        assert store.get_event("e9") is None and store.get_event("e8") is None

    # ------------------------------------------------------------------ wake-ups

    def test_wait_for_notify_wakes_on_new_work_if_offered(self, store: Store) -> None:
        """``wait_for_notify(timeout_s) -> bool`` is optional (docs/stores.md): skipped for
        a store without it. Once listening (the first call), a commit that creates a run,
        events or a signal, from any process and this store too, makes a wait return True;
        the wake-up is kept for a wait that starts after the commit; a closed store's wait
        returns False without waiting."""
        wait = getattr(store, "wait_for_notify", None)
        if not callable(wait):
            pytest.skip(f"{type(store).__name__} has no wait_for_notify (optional)")
        wait(0)  # starts listening
        create(store, new_run("r1"))
        assert wait(30) is True
        store.append_events([event_json("e1")], T0)
        assert wait(30) is True
        assert store.commit(CommitBatch(now=T0, signals=(("r1", Signal("event", "k", "{}")),))
                            ) == set()
        assert wait(30) is True
        # A write that ends a run wakes listeners too (a RunHandle waits for it).
        c = claim(store, "r1", now=T0 + 1)
        assert write(store, RunWrite("r1", c.run.epoch, status="completed", output="1",
                                     consumed_signals=ALL_SIGNALS), now=T0 + 2) == set()
        assert wait(30) is True
        store.close()
        assert wait(600) is False

    def test_notifies_rule(self) -> None:
        """:func:`durable_core.store.notifies`: events (a run's system events too), runs,
        signals and run ends wake listeners; journal writes and statuses that do not end a
        run do not."""
        assert notifies(CommitBatch(now=T0, events=(event_json("e1"),)))
        assert notifies(CommitBatch(now=T0, runs=(new_run("r1"),)))
        assert notifies(CommitBatch(now=T0, signals=(("r1", Signal("event", "k", "{}")),)))
        assert notifies(CommitBatch(now=T0, run_events=(("r1", event_json("e2")),)))
        for status in ("completed", "failed", "cancelled"):
            assert notifies(CommitBatch(now=T0, writes=(RunWrite("r1", 1, status=status),)))
        assert not notifies(CommitBatch(now=T0, writes=(RunWrite("r1", 1, entries(0, 1)),)))
        assert not notifies(CommitBatch(now=T0, writes=(
            RunWrite("r1", 1, status="sleeping", wake_at=T0 + 1),)))

    def test_routing_only_rule(self) -> None:
        """:func:`durable_core.store.routing_only`: routed marks, with the runs, signals and
        waits routing made, and nothing else (a store may commit these without a flush)."""
        routed = CommitBatch(now=T0, routed_events=(1,))
        assert routing_only(routed)
        assert routing_only(routed._replace(
            runs=(new_run("r1"),), signals=(("r2", Signal("event", "k", "{}")),),
            waits_add=(WaitRecord("r1", -1, "x", None, event_json("e1"), T0 + 1, 1),)))
        assert not routing_only(CommitBatch(now=T0, runs=(new_run("r1"),)))
        assert not routing_only(routed._replace(events=(event_json("e1"),)))
        assert not routing_only(routed._replace(writes=(RunWrite("r1", 1, entries(0, 1)),)))
        assert not routing_only(routed._replace(run_events=(("r1", event_json("e2")),)))
        assert not routing_only(routed._replace(cron=(("c", T0),)))
        assert not routing_only(routed._replace(waits_remove=(("r1", 0),)))

    # ------------------------------------------------------------------ stateful

    def test_stateful_matches_the_reference_store(self) -> None:
        """Random operations give the same results as the reference store."""
        run_state_machine_as_test(  # type: ignore[no-untyped-call, unused-ignore]
            make_state_machine(self.make_store), settings=self.stateful_settings
        )


# --------------------------------------------------------------------------- state machine

_RUN_IDS = ("r1", "r2", "r3", "r'; DROP TABLE runs; --")
_FUNCS = ("f1", "f2")
_KEYS = (None, "k1", "k2")
_EVENT_IDS = ("e1", "e2", "e3")
_EVENT_NAMES = ("paid", "shipped")
_OWNERS = ("w1", "w2")
_LEASES = (1_000, LEASE)
_STATUSES = (None, None, "running", "sleeping", "sleeping", "waiting", "waiting", "completed",
             "failed", "cancelled")


def _wait(run_id: str, position: int) -> WaitRecord:
    """The state machine's wait at ``(run_id, position)``: always the same record, so that
    registering it again is unambiguous."""
    return WaitRecord(
        run_id, position, _EVENT_NAMES[position % 2], None if position else "true", "{}",
        T0 + (position + 1) * 3 * LEASE, keys=_WAIT_KEYS[position % len(_WAIT_KEYS)],
    )


# Match keys of the state machine's waits (by position): none, one, several, another path.
_WAIT_KEYS: tuple[tuple[str, ...], ...] = (
    (), ("data.k=1",), ("data.k=1", 'data.k="a"'), ("id=\"x\"",), ('data.k="a"',),
)
_KEY_SETS: tuple[tuple[str, ...], ...] = (("data.k=1",), ("data.k=2", 'id="x"'))


class StoreStateMachine(RuleBasedStateMachine):
    """Random operations against a store and the reference :class:`~stores.MemoryStore`.

    Every observable result must agree. Event and signal ``seq`` numbers are compared through
    an order-preserving mapping, so a store may number them its own way. Override
    :meth:`new_store` (or use :func:`make_state_machine`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.model = MemoryStore()
        self.store = self.new_store()
        self.now = T0
        self.counter = 0
        self.event_seqs: dict[int, int] = {}  # model seq -> store seq
        self.signal_seqs: dict[int, int] = {}
        self.epochs: dict[str, int] = {}  # latest claimed epoch per run
        self.signals_seen: dict[str, int] = {}  # highest model signal seq seen per run

    def new_store(self) -> Store:
        """A new, empty store under test."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Close both stores."""
        self.store.close()
        self.model.close()

    # ------------------------------------------------------------------ mapping

    @staticmethod
    def _map(table: dict[int, int], model_seq: int, store_seq: int) -> None:
        if model_seq in table:
            assert table[model_seq] == store_seq, (model_seq, store_seq, table)
            return
        for m, s in table.items():
            assert (m < model_seq) == (s < store_seq), "seq order differs from the reference"
        table[model_seq] = store_seq

    def _event(self, ev: StoredEvent) -> StoredEvent:
        return attrs.evolve(ev, seq=self.event_seqs[ev.seq])

    def _sync_events(self) -> None:
        m = self.model.unrouted_events(1_000_000)
        s = self.store.unrouted_events(1_000_000)
        assert len(s) == len(m)
        for me, se in zip(m, s, strict=True):
            self._map(self.event_seqs, me.seq, se.seq)
            assert se == self._event(me)

    def _check_claims(self, m: Sequence[Claim], s: Sequence[Claim]) -> None:
        assert [c.run.id for c in s] == [c.run.id for c in m]
        for mc, sc in zip(m, s, strict=True):
            assert sc.run == mc.run
            assert sc.journal == mc.journal
            assert [x for _, x in sc.signals] == [x for _, x in mc.signals]
            for (ms, _), (ss, _) in zip(mc.signals, sc.signals, strict=True):
                self._map(self.signal_seqs, ms, ss)
            self.epochs[mc.run.id] = mc.run.epoch
            self.signals_seen[mc.run.id] = max((q for q, _ in mc.signals), default=0)

    def _existing(self) -> Iterator[str]:
        for run_id in _RUN_IDS:
            try:
                self.model.get_run(run_id)
            except RunNotFoundError:
                continue
            yield run_id

    @staticmethod
    def _pick(data: st.DataObject, likely: Sequence[str]) -> str:
        """A run id: mostly one of ``likely``, sometimes any (or an unknown one)."""
        if likely and data.draw(st.sampled_from((True, True, True, False))):
            return data.draw(st.sampled_from(likely), label="run_id")
        return data.draw(st.sampled_from((*_RUN_IDS, "ghost")), label="run_id")

    def _commit_both(self, model_batch: CommitBatch, store_batch: CommitBatch) -> None:
        expected = self.model.commit(model_batch)
        assert self.store.commit(store_batch) == expected

    def _commit(self, **kw: Any) -> None:
        batch = CommitBatch(now=self.now, **kw)
        self._commit_both(batch, batch)

    # ------------------------------------------------------------------ rules

    @rule(delta=st.sampled_from((0, 1, 999, LEASE, DAY - 1, DAY)))
    def advance(self, delta: int) -> None:
        """Let time pass."""
        self.now += delta

    @rule(events=st.lists(
        st.tuples(st.sampled_from(_EVENT_IDS), st.sampled_from(_EVENT_NAMES)),
        min_size=1, max_size=3,
    ), via_commit=st.booleans())
    def append_events(self, events: list[tuple[str, str]], via_commit: bool) -> None:
        """Append events directly or as part of a commit."""
        texts = []
        for eid, name in events:
            self.counter += 1
            texts.append(event_json(eid, name, self.now, {"n": self.counter}))
        if via_commit:
            self._commit(events=tuple(texts))
            return
        m = self.model.append_events(texts, self.now)
        s = self.store.append_events(texts, self.now)
        assert len(s) == len(m)
        for me, se in zip(m, s, strict=True):
            self._map(self.event_seqs, me.seq, se.seq)
            assert se == self._event(me)

    @precondition(lambda self: bool(self.model.unrouted_events(1)))
    @rule(data=st.data(), limit=st.integers(1, 4))
    def route(self, data: st.DataObject, limit: int) -> None:
        """Read the oldest unrouted events, and mark some of them routed."""
        self._sync_events()
        pending = self.model.unrouted_events(limit)
        assert self.store.unrouted_events(limit) == [self._event(e) for e in pending]
        chosen = data.draw(st.lists(st.sampled_from(pending), min_size=1, unique=True))
        self._commit_both(
            CommitBatch(now=self.now, routed_events=tuple(e.seq for e in chosen)),
            CommitBatch(now=self.now, routed_events=tuple(self.event_seqs[e.seq]
                                                          for e in chosen)),
        )

    @initialize(ids=st.lists(st.sampled_from(_RUN_IDS), min_size=1, max_size=3, unique=True))
    def start(self, ids: list[str]) -> None:
        """Begin with a few runs."""
        self._commit(runs=tuple(new_run(r, created_at=self.now) for r in ids))

    @rule(runs=st.lists(
        st.tuples(
            st.sampled_from(_RUN_IDS), st.sampled_from(_FUNCS), st.sampled_from(_KEYS),
            st.lists(st.sampled_from(_EVENT_IDS), max_size=2, unique=True),
            st.sampled_from((None, "r1")),
        ),
        min_size=1, max_size=3,
    ))
    def create_runs(
        self, runs: list[tuple[str, str, str | None, list[str], str | None]]
    ) -> None:
        """Create runs (some conflicting by id or idempotency key)."""
        self._commit(runs=tuple(
            new_run(rid, function_id=fn, created_at=self.now, key=key,
                    event_ids=tuple(eids), parent_run_id=parent)
            for rid, fn, key, eids, parent in runs
        ))

    @rule(owner=st.sampled_from(_OWNERS), lease_ms=st.sampled_from(_LEASES),
          limit=st.integers(1, 3),
          functions=st.sampled_from((None, None, None, ("f1",), ("f2", "fx"), ())))
    def claim_runs(
        self, owner: str, lease_ms: int, limit: int, functions: tuple[str, ...] | None
    ) -> None:
        """Claim runs that need work (of some functions only, sometimes)."""
        m = self.model.claim_runs(owner, self.now, lease_ms, limit, functions)
        s = self.store.claim_runs(owner, self.now, lease_ms, limit, functions)
        self._check_claims(m, s)

    @rule(owner=st.sampled_from(_OWNERS),
          run_ids=st.lists(st.sampled_from((*_RUN_IDS, "ghost")), max_size=3),
          lease_ms=st.sampled_from(_LEASES))
    def renew(self, owner: str, run_ids: list[str], lease_ms: int) -> None:
        """Renew leases."""
        m = self.model.renew(owner, run_ids, self.now, lease_ms)
        assert self.store.renew(owner, run_ids, self.now, lease_ms) == m

    @rule(
        data=st.data(),
        epoch_shift=st.sampled_from((0,) * 8 + (-1, 1)),
        n_entries=st.integers(0, 3),
        seq_shift=st.sampled_from((0,) * 8 + (-1, 1)),
        status=st.sampled_from(_STATUSES),
        wake=st.sampled_from((None, 0, 1_000, LEASE)),
        consume=st.sampled_from((True, True, False)),
        release=st.booleans(),
        split=st.booleans(),
        wait_op=st.sampled_from((None, "add", "remove")),
        position=st.integers(0, 2),
        signal_to=st.sampled_from((None, *_RUN_IDS)),
        with_event=st.booleans(),
    )
    def write(
        self, data: st.DataObject, epoch_shift: int, n_entries: int, seq_shift: int,
        status: str | None, wake: int | None, consume: bool, release: bool, split: bool,
        wait_op: str | None, position: int, signal_to: str | None, with_event: bool,
    ) -> None:
        """A run write (maybe stale, maybe with a seq gap, maybe split in two) with waits,
        a signal and an event in the same batch. Mostly aimed at a run claimed before."""
        live = [r for r in self._existing()
                if self.model.get_run(r).status not in TERMINAL_STATUSES]
        run_id = self._pick(data, [r for r in live if r in self.epochs] or live)
        epoch = self.epochs.get(run_id, 0) + epoch_shift
        start = len(self.model.load_journal(run_id)) + seq_shift
        journal = tuple(
            JournalEntry(seq, "completed", seq, f"s{seq}", "run", self.now,
                         json.dumps({"output": seq}))
            for seq in range(start, start + n_entries)
        )
        output = json.dumps({"done": self.now}) if status == "completed" else None
        error = ErrorInfo("Boom", str(self.now)) if status in ("failed", "cancelled") else None
        wake_at = None if wake is None else self.now + wake
        seen = self.signals_seen.get(run_id, 0) if consume else 0

        def writes(consumed: int) -> tuple[RunWrite, ...]:
            last = RunWrite(run_id, epoch, journal, status, wake_at, output, error,
                            consumed, release)
            if not (split and journal):
                return (last,)
            # Two writes for the run in one batch; a terminal status only ever comes last.
            first = RunWrite(run_id, epoch, journal[:1], consumed_signals=consumed)
            second = RunWrite(run_id, epoch, journal[1:], status, wake_at, output, error,
                              release=release)
            return (first, second)

        waits_add: tuple[WaitRecord, ...] = ()
        waits_remove: tuple[tuple[str, int], ...] = ()
        if wait_op == "add":
            waits_add = (_wait(run_id, position),)
        elif wait_op == "remove":
            waits_remove = ((run_id, position),)
        signals: tuple[tuple[str, Signal], ...] = ()
        if signal_to is not None:
            self.counter += 1
            signals = ((signal_to, Signal("event", f"k{self.counter}", "{}", position)),)
        events: tuple[str, ...] = ()
        if with_event:
            self.counter += 1
            events = (event_json("e1", _EVENT_NAMES[0], self.now, {"n": self.counter}),)
        common: dict[str, Any] = {
            "now": self.now, "waits_add": waits_add, "waits_remove": waits_remove,
            "signals": signals, "events": events,
        }
        self._commit_both(
            CommitBatch(writes=writes(seen), **common),
            CommitBatch(writes=writes(self.signal_seqs.get(seen, 0)), **common),
        )

    @rule(data=st.data(), n=st.integers(1, 3),
          kind=st.sampled_from(("event", "invoke", "cancel")))
    def signal(self, data: st.DataObject, n: int, kind: str) -> None:
        """Send signals (to unknown runs too)."""
        sigs = []
        existing = list(self._existing())
        for _ in range(n):
            t = self._pick(data, existing)
            self.counter += 1
            sigs.append((t, Signal(kind, f"k{self.counter}", json.dumps(self.counter))))
        self._commit(signals=tuple(sigs))

    @rule(run_id=st.sampled_from(_RUN_IDS), position=st.integers(0, 2), add=st.booleans())
    def wait(self, run_id: str, position: int, add: bool) -> None:
        """Register or clear a wait on its own."""
        if add:
            self._commit(waits_add=(_wait(run_id, position),))
        else:
            self._commit(waits_remove=((run_id, position),))

    @rule(key=st.sampled_from(("c1", "c'2")), delta=st.sampled_from((-1_000, 0, 1_000)))
    def cron(self, key: str, delta: int) -> None:
        """Move a cron cursor (maybe backwards, which must be ignored)."""
        self._commit(cron=((key, self.now + delta),))

    def _check_waits(self, name: str) -> None:
        """Unexpired waits agree (in any order); ``after_seq`` splits the event log at the
        same place."""
        m = sorted(self.model.find_waits(name, self.now), key=where)
        s = sorted(self.store.find_waits(name, self.now), key=where)
        assert [attrs.evolve(w, after_seq=0) for w in s] == [
            attrs.evolve(w, after_seq=0) for w in m
        ]
        for keys in _KEY_SETS:
            mk = sorted(self.model.find_waits(name, self.now, keys), key=where)
            sk = sorted(self.store.find_waits(name, self.now, keys), key=where)
            assert [where(w) for w in sk] == [where(w) for w in mk], keys
            assert [w.keys for w in sk] == [w.keys for w in mk], keys
        assert self.store.wait_key_paths(name) == self.model.wait_key_paths(name)
        for mw, sw in zip(m, s, strict=True):
            if mw.after_seq in self.event_seqs:
                assert self.event_seqs[mw.after_seq] == sw.after_seq
            for model_seq, store_seq in self.event_seqs.items():
                assert (model_seq <= mw.after_seq) == (store_seq <= sw.after_seq), (mw, sw)

    # ------------------------------------------------------------------ invariant

    @invariant()
    def agrees_with_the_reference(self) -> None:
        """Runs, journals, listings, timers, cron cursors and events agree."""
        self._sync_events()
        for run_id in (*_RUN_IDS, "ghost"):
            try:
                expected: RunRecord | None = self.model.get_run(run_id)
            except RunNotFoundError:
                expected = None
            if expected is None:
                with pytest.raises(RunNotFoundError):
                    self.store.get_run(run_id)
            else:
                assert self.store.get_run(run_id) == expected
            assert self.store.load_journal(run_id) == self.model.load_journal(run_id)
        assert self.store.list_runs() == self.model.list_runs()
        assert self.store.list_runs(limit=2) == self.model.list_runs(limit=2)
        for fn in _FUNCS:
            assert self.store.list_runs(function_id=fn) == self.model.list_runs(function_id=fn)
        for status in ("queued", *TERMINAL_STATUSES):
            assert self.store.list_runs(status=status) == self.model.list_runs(status=status)
        for eid in _EVENT_IDS:
            assert self.store.list_runs(event_id=eid) == self.model.list_runs(event_id=eid)
            ev = self.model.get_event(eid)
            got = self.store.get_event(eid)
            if ev is None:
                assert got is None
            else:
                if ev.seq not in self.event_seqs and got is not None:
                    self._map(self.event_seqs, ev.seq, got.seq)
                assert got == self._event(ev)
        for name in _EVENT_NAMES:
            self._check_waits(name)
        assert self.store.next_wake_at() == self.model.next_wake_at()
        assert self.store.cron_cursors() == self.model.cron_cursors()


def make_state_machine(make_store: Callable[[], Store]) -> type[StoreStateMachine]:
    """A :class:`StoreStateMachine` for the store ``make_store()`` returns (a new, empty one
    per example). Run it with ``run_state_machine_as_test(machine, settings=...)``, or expose
    ``make_state_machine(factory).TestCase`` as a unittest test case."""

    class _Machine(StoreStateMachine):
        def new_store(self) -> Store:
            return make_store()

    _Machine.__name__ = _Machine.__qualname__ = "StoreStateMachine"
    return _Machine


# --------------------------------------------------------------------------- processes


def run_threads(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run ``fn(k)`` for k in range(n) on n threads released together; return the results
    (re-raising the first error)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def target(k: int) -> None:
        try:
            barrier.wait()
            results[k] = fn(k)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def run_gated(args: list[list[str]], timeout: float = 120) -> list[str]:
    """Start one ``python -c`` child per argument list, wait until each prints ``ready``,
    release them all at once (a line on stdin), and return each one's last output line,
    asserting that every child succeeded."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", *a], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        for a in args
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            assert line == "ready", (line, p.stderr.read() if p.stderr else "")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    return [out.strip().splitlines()[-1] for out, _ in results]


_CLAIMER_CHILD = """
import json, sys
import stores
from durable_core.core._model import JournalEntry
from durable_core.store import CommitBatch, NewRun, RunWrite
url, owner, own = sys.argv[1], sys.argv[2], int(sys.argv[3])
NOW, FOREVER = 1_000, 10**12
store = stores.open(url)
print("ready", flush=True)
sys.stdin.readline()
claimed = []

def work():
    claims = store.claim_runs(owner, NOW, FOREVER, 5)
    writes = tuple(
        RunWrite(c.run.id, c.run.epoch,
                 (JournalEntry(len(c.journal), "completed", 0, "s", "run", NOW, "{}"),),
                 status="completed", output=json.dumps(owner))
        for c in claims
    )
    fenced = store.commit(CommitBatch(now=NOW, writes=writes))
    assert fenced == set(), fenced
    claimed.extend(c.run.id for c in claims)
    return bool(claims)

for i in range(own):
    run = NewRun(id=f"{owner}-{i}", function_id="f", events=(), event_ids=(), created_at=NOW)
    assert store.commit(CommitBatch(now=NOW, runs=(run,))) == set()
    work()
while work():
    pass
store.close()
print(json.dumps(claimed), flush=True)
"""
"""The child of :func:`check_processes_never_share_runs`: creates, claims and completes runs
on the store at ``sys.argv[1]`` (a ``stores.open`` URL) as owner ``sys.argv[2]``."""


def check_processes_never_share_runs(
    url: str, owners: Sequence[str] = ("alpha", "beta"), own: int = 40, preexisting: int = 150
) -> None:
    """Several processes open the store at ``url`` (a ``stores.open`` URL) and, released at
    once, create, claim and complete runs concurrently: every run is claimed by exactly one
    of them, under one lease, with one journal entry."""
    import stores

    store = stores.open(url)
    try:
        create(store, *(new_run(f"pre-{i:03d}", created_at=1_000) for i in range(preexisting)))
    finally:
        store.close()
    outs = run_gated([[_CLAIMER_CHILD, url, o, str(own)] for o in owners])
    claimed = {o: json.loads(out) for o, out in zip(owners, outs, strict=True)}
    everything = [r for ids in claimed.values() for r in ids]
    expected = {f"pre-{i:03d}" for i in range(preexisting)}
    expected |= {f"{o}-{i}" for o in owners for i in range(own)}
    assert len(everything) == len(set(everything))  # nobody claimed a run twice
    assert set(everything) == expected
    store = stores.open(url)
    try:
        for owner, ids in claimed.items():
            for run_id in ids:
                run = store.get_run(run_id)
                assert (run.status, run.output, run.epoch) == ("completed", json.dumps(owner), 1)
                assert len(store.load_journal(run_id)) == 1
    finally:
        store.close()
