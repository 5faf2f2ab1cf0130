"""Conformance cases of the start limits (flow control: throttle, rate limit, singleton):
a store decides them with :class:`durable_core.store.StartLimiter` in the commit that
creates the run, keeps their state, never claims a run before its throttle slot or while it
waits for a singleton slot, and frees a slot in the commit that ends its holder.

Mixed into :class:`stores.testing.StoreConformance` (its ``store`` fixture)."""

from __future__ import annotations

import attrs

from durable_core.core._lifecycle import singleton_reason
from durable_core.core._model import SignalKind
from durable_core.store import (
    CommitBatch,
    NewRun,
    RunWrite,
    StartLimits,
    Store,
    gcra_rate_limit,
    gcra_throttle,
)

__all__ = ["StartLimitsConformance"]

_T0 = 1_700_000_000_000
_LEASE = 30_000


def _run(run_id: str, limits: StartLimits, *, at: int = _T0, event: str = "e0") -> NewRun:
    text = f'{{"name": "go", "data": {{}}, "id": "{event}-{run_id}", "ts": {at}}}'
    return NewRun(id=run_id, function_id="fn", events=(text,), event_ids=(f"{event}-{run_id}",),
                  created_at=at, limits=limits)


def _claimed(store: Store, now: int, limit: int = 100) -> list[str]:
    return [c.run.id for c in store.claim_runs("w1", now, _LEASE, limit)]


def _end(store: Store, run_id: str, now: int, *, epoch: int | None = None) -> set[str]:
    if epoch is None:
        epoch = store.get_run(run_id).epoch
    return store.commit(CommitBatch(now=now, writes=(
        RunWrite(run_id, epoch, status="completed", output="1"),)))


THROTTLE = StartLimits(throttle=("t", 1_000, 1, 1))
RATE = StartLimits(rate_limit=("r", 1_000, 2), rate_limit_key="k")
SKIP = StartLimits(singleton=("s", "skip"), singleton_key="k")
CANCEL = StartLimits(singleton=("c", "cancel"), singleton_key="k")


class StartLimitsConformance:
    """The start-limit cases of the store contract."""

    def test_gcra_rules(self) -> None:
        # throttle: limit 2 per second, burst 2: two at once, then one every 500 ms
        tat = None
        starts = []
        for _ in range(4):
            start, tat = gcra_throttle(tat, _T0, 1_000, 2, 2)
            starts.append(start - _T0)
        assert starts == [0, 0, 500, 1_000]
        # rate limit 2 per second: two at once, the third is over, one more 500 ms later
        t1 = gcra_rate_limit(None, _T0, 1_000, 2)
        t2 = gcra_rate_limit(t1, _T0, 1_000, 2)
        assert t2 is not None and gcra_rate_limit(t2, _T0, 1_000, 2) is None
        assert gcra_rate_limit(t2, _T0 + 499, 1_000, 2) is None
        assert gcra_rate_limit(t2, _T0 + 500, 1_000, 2) is not None

    def test_throttled_runs_wait_for_their_slot_in_order(self, store: Store) -> None:
        store.commit(CommitBatch(now=_T0, runs=(_run("a", THROTTLE), _run("b", THROTTLE))))
        store.commit(CommitBatch(now=_T0 + 10, runs=(_run("c", THROTTLE, at=_T0 + 10),)))
        assert store.get_run("a").wake_at is None
        assert store.get_run("b").wake_at == _T0 + 1_000
        assert store.get_run("c").wake_at == _T0 + 2_000
        assert store.next_wake_at() == _T0 + 1_000
        assert _claimed(store, _T0 + 999) == ["a"]
        assert _claimed(store, _T0 + 1_999) == ["b"]
        assert _claimed(store, _T0 + 2_000) == ["c"]

    def test_a_duplicate_run_takes_no_throttle_slot(self, store: Store) -> None:
        store.commit(CommitBatch(now=_T0, runs=(_run("a", THROTTLE),)))
        store.commit(CommitBatch(now=_T0, runs=(_run("a", THROTTLE),)))  # delivered again
        store.commit(CommitBatch(now=_T0, runs=(_run("b", THROTTLE),)))
        assert store.get_run("b").wake_at == _T0 + 1_000

    def test_rate_limited_triggers_are_recorded_skips(self, store: Store) -> None:
        store.commit(CommitBatch(now=_T0, runs=(_run("a", RATE), _run("b", RATE),
                                                _run("c", RATE))))
        assert [r.id for r in store.list_runs()] == ["b", "a"]
        [skip] = store.skipped_triggers()
        assert (skip.id, skip.reason, skip.key, skip.run_id, skip.event_id) == (
            "c", "rate_limit", "k", "b", "e0-c")
        # a skipped id counts as existing: delivered again, it is not reconsidered
        store.commit(CommitBatch(now=_T0 + 600, runs=(_run("c", RATE, at=_T0 + 600),)))
        assert len(store.list_runs()) == 2
        store.commit(CommitBatch(now=_T0 + 600, runs=(_run("d", RATE, at=_T0 + 600),)))
        assert len(store.list_runs()) == 3

    def test_singleton_skip_holds_the_slot_until_the_holder_ends(self, store: Store) -> None:
        store.commit(CommitBatch(now=_T0, runs=(_run("a", SKIP), _run("b", SKIP))))
        assert [(s.id, s.reason, s.run_id) for s in store.skipped_triggers()] == [
            ("b", "singleton", "a")]
        assert _claimed(store, _T0) == ["a"]
        # a stale end (a fenced write) frees nothing
        assert _end(store, "a", _T0 + 1, epoch=99) == {"a"}
        store.commit(CommitBatch(now=_T0 + 2, runs=(_run("c", SKIP, at=_T0 + 2),)))
        assert {s.id for s in store.skipped_triggers()} == {"b", "c"}
        assert _end(store, "a", _T0 + 3) == set()
        store.commit(CommitBatch(now=_T0 + 4, runs=(_run("d", SKIP, at=_T0 + 4),)))
        assert store.get_run("d").status == "queued"

    def test_singleton_cancel_hands_the_slot_on(self, store: Store) -> None:
        store.commit(CommitBatch(now=_T0, runs=(_run("a", CANCEL),)))
        assert _claimed(store, _T0) == ["a"]
        store.commit(CommitBatch(now=_T0 + 1, runs=(_run("b", CANCEL, at=_T0 + 1),
                                                    _run("c", CANCEL, at=_T0 + 1))))
        # b waits for a (not claimable), a holds a cancel signal naming b, c was skipped
        assert store.get_run("b").status == "queued"
        assert [(s.id, s.reason, s.run_id) for s in store.skipped_triggers()] == [
            ("c", "singleton", "b")]
        assert store.cancel_reasons(["a"]) == {"a": singleton_reason("b")}
        assert _claimed(store, _T0 + 10 * _LEASE) == ["a"]  # a's lease ran out: a again
        assert _end(store, "a", _T0 + 10 * _LEASE) == set()
        assert _claimed(store, _T0 + 10 * _LEASE) == ["b"]
        # b holds it now; when b ends, the slot is free and a newcomer takes it at once
        assert _end(store, "b", _T0 + 10 * _LEASE + 1) == set()
        store.commit(CommitBatch(now=_T0 + 11 * _LEASE, runs=(
            _run("d", CANCEL, at=_T0 + 11 * _LEASE),)))
        assert store.cancel_reasons(["b", "d"]) == {}
        assert _claimed(store, _T0 + 11 * _LEASE) == ["d"]

    def test_singleton_cancel_of_a_queued_holder(self, store: Store) -> None:
        store.commit(CommitBatch(now=_T0, runs=(_run("a", CANCEL),)))
        store.commit(CommitBatch(now=_T0, runs=(_run("b", CANCEL),)))
        claims = store.claim_runs("w1", _T0, _LEASE, 10)
        assert [c.run.id for c in claims] == ["a"]
        assert [s.kind for _, s in claims[0].signals] == [SignalKind.CANCEL]
        store.commit(CommitBatch(now=_T0 + 1, writes=(RunWrite(
            "a", claims[0].run.epoch, status="cancelled",
            consumed_signals=claims[0].signals[-1][0]),)))
        assert _claimed(store, _T0 + 1) == ["b"]

    def test_limits_combine(self, store: Store) -> None:
        both = attrs.evolve(THROTTLE, singleton=("s2", "skip"))
        store.commit(CommitBatch(now=_T0, runs=(_run("a", both), _run("b", both))))
        # b was skipped by the singleton: it took no throttle slot
        store.commit(CommitBatch(now=_T0, runs=(_run("c", THROTTLE),)))
        assert store.get_run("c").wake_at == _T0 + 1_000
        assert [s.id for s in store.skipped_triggers()] == ["b"]
