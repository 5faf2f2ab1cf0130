"""Conformance cases for concurrency slots and priority (issue 13): a mixin of
:class:`~stores.testing.StoreConformance` (its ``store`` fixture gives a fresh store)."""

from __future__ import annotations

import attrs

from durable_core.core._model import JournalEntry
from durable_core.store import CommitBatch, NewRun, RunWrite, Store

__all__ = ["ConcurrencyConformance"]

_T0 = 1_700_000_000_000
_LEASE = 30_000


def _run(run_id: str, slots: tuple[tuple[str, int], ...] = (), *, priority_ms: int = 0,
         created_at: int = _T0, function_id: str = "lim") -> NewRun:
    return NewRun(id=run_id, function_id=function_id,
                  events=('{"name":"e","data":{},"id":"e0","ts":0}',), event_ids=("e0",),
                  created_at=created_at, slots=slots, priority_ms=priority_ms)


def _ids(claims: list) -> list[str]:  # type: ignore[type-arg]
    return [c.run.id for c in claims]


class ConcurrencyConformance:
    """Limited claims count the live leases per slot key, and priority orders claims."""

    def test_claims_follow_priority_order(self, store: Store) -> None:
        """Queued runs are claimed by ``created_at - priority_ms``, then creation order."""
        store.commit(CommitBatch(now=_T0, runs=(
            _run("old", created_at=_T0, function_id="p"),
            _run("vip", created_at=_T0 + 200_000, priority_ms=150_000, function_id="p"),
            _run("mid", created_at=_T0 + 100_000, function_id="p"),
            _run("tie", created_at=_T0 + 50_000, function_id="p"),
            _run("late", created_at=_T0 + 30_000, priority_ms=-600_000, function_id="p"),
        )))
        got = store.claim_runs("w", _T0 + 300_000, _LEASE, 10, ["p"])
        assert _ids(got) == ["old", "vip", "tie", "mid", "late"]

    def test_limited_claims_respect_slot_limits(self, store: Store) -> None:
        """A limited claim takes a run only if each of its keys has room, counting the
        runs it takes; keys are served in turn."""
        a, b = (("A", 2),), (("B", 1),)
        store.commit(CommitBatch(now=_T0, runs=(
            _run("a1", a), _run("a2", a), _run("a3", a), _run("b1", b), _run("b2", b),
            _run("free", function_id="other"),
        )))
        got = store.claim_limited_runs("w", _T0, _LEASE, 10, ["lim"])
        assert _ids(got) == ["a1", "b1", "a2"]
        assert store.held_slots(_T0) == {"A": 2, "B": 1}
        assert store.claim_limited_runs("w2", _T0 + 1, _LEASE, 10, ["lim"]) == []
        assert store.claim_limited_runs("w", _T0, _LEASE, 0, ["lim"]) == []
        assert store.claim_limited_runs("w", _T0, _LEASE, 5, []) == []
        # Plain claims of other functions are not affected.
        assert _ids(store.claim_runs("w", _T0, _LEASE, 10, ["other"])) == ["free"]

    def test_slots_come_back_when_leases_end(self, store: Store) -> None:
        """A slot is held while its run's lease is live: a release, an end or an expired
        lease gives it back."""
        a = (("A", 1),)
        store.commit(CommitBatch(now=_T0, runs=(_run("r1", a), _run("r2", a), _run("r3", a))))
        [c1] = store.claim_limited_runs("w", _T0, _LEASE, 10, ["lim"])
        assert c1.run.id == "r1"
        # Released (the run sleeps): the slot frees, r2 takes it.
        assert store.commit(CommitBatch(now=_T0 + 1, writes=(RunWrite(
            "r1", c1.run.epoch, status="sleeping", wake_at=_T0 + 10**9, release=True),))) == set()
        assert store.held_slots(_T0 + 1) == {}
        [c2] = store.claim_limited_runs("w", _T0 + 1, _LEASE, 10, ["lim"])
        assert c2.run.id == "r2"
        # Ended: the slot frees, r3 takes it.
        entry = JournalEntry(seq=0, op="completed", position=0, step_id="s", kind="run",
                             ts=_T0, data="{}")
        assert store.commit(CommitBatch(now=_T0 + 2, writes=(RunWrite(
            "r2", c2.run.epoch, entries=(entry,), status="completed", output="1"),))) == set()
        [c3] = store.claim_limited_runs("w", _T0 + 2, _LEASE, 10, ["lim"])
        assert c3.run.id == "r3"
        # A crashed holder: once its lease expires, the slot is back (here r3 itself is due
        # again and takes it under a new epoch).
        assert store.claim_limited_runs("w2", _T0 + 2 + _LEASE - 1, _LEASE, 10, ["lim"]) == []
        assert store.held_slots(_T0 + 2 + _LEASE) == {}
        [again] = store.claim_limited_runs("w2", _T0 + 2 + _LEASE, _LEASE, 10, ["lim"])
        assert (again.run.id, again.run.epoch) == ("r3", c3.run.epoch + 1)

    def test_limits_are_per_run_on_a_shared_key(self, store: Store) -> None:
        """Runs of two functions sharing a key value (app scope) count together; each is
        taken against its own limit."""
        store.commit(CommitBatch(now=_T0, runs=(
            attrs.evolve(_run("f1", (("S", 2),)), function_id="f"),
            attrs.evolve(_run("g1", (("S", 1),)), function_id="g"),
            attrs.evolve(_run("f2", (("S", 2),)), function_id="f"),
        )))
        got = store.claim_limited_runs("w", _T0, _LEASE, 10, ["f", "g"])
        assert _ids(got) == ["f1", "f2"]  # g1 found S held once: at its limit of 1
        assert store.held_slots(_T0) == {"S": 2}
