"""Throttle and singleton under several worker processes on one store, released at once: 4
on PostgreSQL, 2 on SQLite; 500 events over 20 keys in all, each triggering a throttled
function, a singleton that skips and one that cancels (routing and creating runs under the
same keys race between processes). Each process checks the singleton invariant after every
state change that could break it (every state change is some process's commit or claim):
after each commit creating runs of ``one``, per key at most one of its runs has not ended;
after each claim of a run of ``swap``, per key at most one of its runs has started (been
claimed) and not ended. At the end: no run of ``thr`` started before its GCRA
slot, replayed from the runs in creation order, and every slot is free."""

from __future__ import annotations

import json
import pathlib
from collections import defaultdict
from typing import Any

import stores
from durable_core.store import TERMINAL_STATUSES, gcra_throttle
from durable_core.testing import TestEngine
from stores.testing import run_gated

TESTS = pathlib.Path(__file__).resolve().parent
EVENTS = 500
KEYS = 20
START = "2026-01-01T00:00:00Z"

_CHILD = """
import collections, json, sys
sys.path.insert(0, sys.argv[1])
import stores
from durable_core import Event
from durable_core.store import TERMINAL_STATUSES
from durable_core.testing import TestEngine
from flow_starts_app import app
url, k, n, keys = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
store = stores.open(url)
samples = 0

def check(fns):
    global samples
    samples += 1
    for fn, started_only in fns:
        active = collections.Counter(
            json.loads(r.events[0])["data"]["k"]
            for r in store.list_runs(function_id=fn, limit=100_000)
            if r.status not in TERMINAL_STATUSES and (r.epoch > 0 or not started_only))
        assert all(c <= 1 for c in active.values()), (fn, active)

class Checked:
    def __init__(self, inner):
        self._inner = inner
    def __getattr__(self, name):
        return getattr(self._inner, name)
    def commit(self, batch):
        # A second active run of ``one`` could only appear when runs are created; a second
        # started run of ``swap`` only when one is claimed.
        out = self._inner.commit(batch)
        if any(n.function_id == "one" for n in batch.runs):
            check([("one", False)])
        return out
    def claim_runs(self, *a, **kw):
        out = self._inner.claim_runs(*a, **kw)
        if any(c.run.function_id == "swap" for c in out):
            check([("swap", True)])
        return out

engine = TestEngine(app, start=sys.argv[6], store=Checked(store))
print("ready", flush=True)
sys.stdin.readline()
mine = [i for i in range(n) if i % int(sys.argv[7]) == k]
for j in range(0, len(mine), 10):
    engine.send([Event("go", {"i": i, "k": f"k{i % keys}"}, id=f"go-{i}")
                 for i in mine[j:j + 10]])
    engine.advance("1s")
engine.advance("10m")
store.close()
print(json.dumps(samples), flush=True)
"""


def _race(url: str, processes: int) -> stores.Store:
    outs = run_gated([[_CHILD, str(TESTS), url, str(k), str(EVENTS), str(KEYS), START,
                       str(processes)] for k in range(processes)], timeout=300)
    assert all(int(o) > 0 for o in outs)  # every process sampled the invariant
    store = stores.open(url)
    from flow_starts_app import app

    TestEngine(app, start=START, store=store).advance("1h")
    return store


def _check(store: stores.Store) -> None:
    from flow_starts_app import THROTTLE

    by_fn: dict[str, list[Any]] = defaultdict(list)
    for r in reversed(store.list_runs(limit=100_000)):  # creation order
        by_fn[r.function_id].append(r)
    # Every event started one throttled run (lossless), and every run ended.
    assert len(by_fn["thr"]) == EVENTS
    assert all(r.status in TERMINAL_STATUSES for rs in by_fn.values() for r in rs)
    # Throttle: replay GCRA in creation order (the order the store decided it in); no run
    # started (its first step's journal time) before its slot, and per key no window of a
    # period holds more slots than the GCRA model allows (limit + burst - 1).
    # Runs created by one commit share its time, and the store may list them in another
    # order than the one it decided their slots in (PostgreSQL inserts a batch's runs in id
    # order): within a (key, creation time) group the slots are matched to the starts
    # sorted, which finds an assignment in which every run starts at or after its slot
    # whenever one exists.
    period = 10_000
    tat: dict[str, int | None] = defaultdict(lambda: None)
    slots: dict[str, list[int]] = defaultdict(list)
    groups: dict[tuple[str, int], list[tuple[int, str]]] = defaultdict(list)
    for r in by_fn["thr"]:
        k = json.loads(r.events[0])["data"]["k"]
        slot, tat[k] = gcra_throttle(tat[k], r.created_at, period, THROTTLE.limit,
                                     THROTTLE.burst)
        groups[(k, r.created_at)].append((slot, r.id))
        slots[k].append(slot)
    for group in groups.values():
        starts = sorted((store.load_journal(run_id)[0].ts, run_id) for _, run_id in group)
        for (slot, _), (start, run_id) in zip(sorted(group), starts, strict=True):
            assert start >= slot, (run_id, slot)
    for k, ss in slots.items():
        for i, s in enumerate(ss):
            within = sum(1 for t in ss[i:] if t < s + period)
            assert within <= THROTTLE.limit + THROTTLE.burst - 1, (k, s)
    # Singleton: every key's last runs ended, so no slot is held or waited for: a newcomer
    # of each key starts.
    for fn in ("one", "swap"):
        assert len({json.loads(r.events[0])["data"]["k"] for r in by_fn[fn]}) == KEYS
        cancelled = [r for r in by_fn[fn] if r.status == "cancelled"]
        assert (fn == "swap") == bool(cancelled)
    engine = TestEngine(__import__("flow_starts_app").app, start="2026-01-02T00:00:00Z",
                        store=store)
    from durable_core import Event

    sent = engine.send([Event("go", {"i": -1, "k": f"k{k}"}) for k in range(KEYS)])
    assert sorted(r.function_id for r in sent.runs) == sorted(["thr", "one", "swap"] * KEYS)


def test_four_workers_on_postgres(pg_url: str, pg_schema: str) -> None:
    sep = "&" if "?" in pg_url else "?"
    store = _race(f"{pg_url}{sep}schema={pg_schema}", 4)
    try:
        _check(store)
    finally:
        store.close()


def test_two_processes_on_sqlite(tmp_path: pathlib.Path) -> None:
    store = _race(f"sqlite:///{tmp_path / 'shared.db'}", 2)
    try:
        _check(store)
    finally:
        store.close()
