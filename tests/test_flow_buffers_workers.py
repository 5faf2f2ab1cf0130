"""Debounce and batching under several worker processes on one store: 4 on PostgreSQL, 2 on
SQLite, 500 events of each kind over 20 keys. The processes go through waves in lock step
(a barrier between phases, through their stdin): in each wave every process sends its share
of events at the same instant, routing them as it goes (racing the others on the same
buffers), then every process moves its clock past the quiet period and hands off whatever
is ready (racing on the same takes). Then: each key's debounced runs are exactly one per
wave, each with that wave's last event of the key; the batches hold every event once, none
over the size, each of one key."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections import defaultdict
from typing import Any

import stores
from durable_core.testing import TestEngine

TESTS = pathlib.Path(__file__).resolve().parent
KEYS = 20
WAVES = 5
TOTAL = 500  # events of each kind
START = "2026-01-01T00:00:00Z"
T0 = 1_767_225_600_000  # START in ms
WAVE_MS = 60_000

_CHILD = """
import datetime as dt, json, sys
sys.path.insert(0, sys.argv[1])
import stores
from durable_core import Event
from durable_core.testing import TestEngine
from flow_buffers_app import app
url, p, per_wave, waves, keys, wave_ms = sys.argv[2], int(sys.argv[3]), *map(int, sys.argv[4:8])
store = stores.open(url)
engine = TestEngine(app, start=sys.argv[8], store=store)
print("ready", flush=True)
for w in range(waves):
    sys.stdin.readline()                         # barrier: send this wave
    for c in range(0, per_wave, 5):              # 5 of each kind per send
        batch = []
        for i in range(c, min(c + 5, per_wave)):
            k = f"k{(p * 7 + i) % keys}"
            batch += [Event("deb", {"k": k}, id=f"d-{w}-{p}-{i}"),
                      Event("bat", {"k": k}, id=f"b-{w}-{p}-{i}")]
        engine.send(batch)
    print("sent", flush=True)
    sys.stdin.readline()                         # barrier: all sent; hand off what is due
    engine.advance("30s")
    print("flushed", flush=True)
    sys.stdin.readline()                         # barrier: next wave's instant
    engine.advance_to(dt.datetime.fromtimestamp((T0_MS + (w + 1) * wave_ms) / 1000, dt.UTC))
store.close()
print("done", flush=True)
"""


def _race(url: str, processes: int) -> stores.Store:
    per_wave = TOTAL // WAVES // processes
    child = _CHILD.replace("T0_MS", str(T0))
    procs = [subprocess.Popen(
        [sys.executable, "-c", child, str(TESTS), url, str(p), str(per_wave), str(WAVES),
         str(KEYS), str(WAVE_MS), START],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for p in range(processes)]

    def step(expect: str) -> None:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            assert line == expect, (line, p.stderr.read() if p.stderr else "")

    def release() -> None:
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()

    try:
        step("ready")
        for _ in range(WAVES):
            release()
            step("sent")
            release()
            step("flushed")
            release()
        step("done")
        for p in procs:
            assert p.wait(timeout=60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    store = stores.open(url)
    from flow_buffers_app import app

    TestEngine(app, start=START, store=store).advance_to("2026-01-02T00:00:00Z")
    return store


def _check(store: stores.Store) -> None:
    events = {e.id: e for e in store.list_events(limit=100_000)}
    assert not store.unrouted_events(1) and store.buffer_states() == []
    runs = store.list_runs(limit=100_000)
    assert all(r.status == "completed" for r in runs)
    # debounce: per (wave, key), one run, with the wave's last event of the key
    last: dict[tuple[int, str], Any] = {}
    for e in sorted(events.values(), key=lambda e: e.seq):
        if e.name == "deb":
            last[(int(e.id.split("-")[1]), json.loads(e.data)["data"]["k"])] = e
    deb = [r for r in runs if r.function_id == "deb"]
    got: dict[tuple[int, str], list[str]] = defaultdict(list)
    for r in deb:
        [eid] = r.event_ids
        e = events[eid]
        got[(int(eid.split("-")[1]), json.loads(e.data)["data"]["k"])].append(eid)
        assert json.loads(r.output or "null") == [eid]
    assert len(last) == WAVES * KEYS
    assert {k: [e.id] for k, e in last.items()} == dict(got)
    # batches: every event once, none over the size, each batch of one key, in seq order
    bat = [r for r in runs if r.function_id == "bat"]
    seen: list[str] = []
    for r in bat:
        assert 1 <= len(r.event_ids) <= 7 and json.loads(r.output or "null") == list(r.event_ids)
        assert len({json.loads(events[i].data)["data"]["k"] for i in r.event_ids}) == 1
        seqs = [events[i].seq for i in r.event_ids]
        assert seqs == sorted(seqs)
        seen += r.event_ids
    assert len(seen) == len(set(seen)) == TOTAL
    assert set(seen) == {i for i, e in events.items() if e.name == "bat"}


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
