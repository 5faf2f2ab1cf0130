"""Crash tests in separate processes: kill -9 workers at random moments, then check that
nothing acknowledged was lost and no committed step ran again.

And many workers on one database: every run completes exactly once, a SIGKILLed worker's
runs finish elsewhere, and a SIGSTOPped worker resumed past its lease cannot change anything.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

import stores
from durable_core import Client, Event

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from crash_app import expected_total  # noqa: E402

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_BASE, connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'crash.db'}"
        return
    if not _postgres_available():
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is down; CI must run the Postgres tests")
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable: start it with "
                    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`")
    schema = f"crash_{uuid.uuid4().hex[:10]}"
    yield f"{PG_BASE}?schema={schema}"
    import psycopg

    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class Workers:
    """Start and kill crash-app worker processes."""

    def __init__(self, url: str, tmp: pathlib.Path, lease_ms: int = 600) -> None:
        self.url = url
        self.lease_ms = lease_ms
        self.tmp = tmp
        self.log = tmp / "effects.log"
        self.log.touch()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.n = 0

    def start(self) -> tuple[subprocess.Popen[bytes], pathlib.Path]:
        self.n += 1
        stats = self.tmp / f"stats-{self.n}.json"
        env = {**os.environ, "DURABLE_EFFECT_LOG": str(self.log),
               "DURABLE_LEASE_MS": str(self.lease_ms)}
        with open(self.tmp / f"w{self.n}.err", "wb") as err:
            p = subprocess.Popen(
                [sys.executable, str(HERE / "crash_worker.py"), self.url, str(stats)],
                env=env, stdout=subprocess.DEVNULL, stderr=err,
            )
        self.procs.append(p)
        return p, stats

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _wait_for_effects_from(log: pathlib.Path, pids: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # (a line being appended right now may be incomplete: skip it)
        seen = {int(f[3]) for f in map(str.split, log.read_text().splitlines()) if len(f) == 4}
        if set(pids) <= seen:
            return
        time.sleep(0.01)
    raise AssertionError(f"workers {pids} executed no step within {timeout}s")


def _journal_entries(client: Client) -> int:
    store = client.store
    return sum(len(store.load_journal(r.id)) for r in store.list_runs(limit=10_000))


def _leases_held_by(client: Client, pid: int) -> int:
    prefix = f"worker-{pid}-"  # the Worker's default owner name
    return sum(1 for r in client.store.list_runs(limit=10_000)
               if (r.lease_owner or "").startswith(prefix))


def _pause_between_writes(victim: subprocess.Popen[bytes], client: Client,
                          attempts: int = 20) -> None:
    """SIGSTOP ``victim`` at a moment it holds runs (so it has work to lose) but no database
    write lock, i.e. the other workers keep committing while it is paused. A worker frozen
    in the middle of a SQLite write transaction (or holding the writers' gate) stops every
    writer of the file until it resumes: nothing could take its runs over then; and one
    frozen while all its runs sleep (unleased) has nothing to lose. Neither is the case
    under test."""
    for _ in range(attempts):
        before = _journal_entries(client)
        victim.send_signal(signal.SIGSTOP)
        if not _leases_held_by(client, victim.pid):
            victim.send_signal(signal.SIGCONT)
            time.sleep(0.05)
            continue
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if _journal_entries(client) > before:
                return
            time.sleep(0.05)
        victim.send_signal(signal.SIGCONT)
        time.sleep(0.2)
    raise AssertionError(f"no worker committed while worker {victim.pid} was paused")


def _wait_all_completed(client: Client, n_runs: int, stall: float = 120.0,
                        cap: float = 1800.0) -> None:
    """Wait until all ``n_runs`` runs completed, failing only if the workers make no
    progress (no new journal entry, no run completed) for ``stall`` seconds, or after
    ``cap`` seconds in all: under heavy load the work takes longer, but it must advance."""
    started = last_progress = time.monotonic()
    last: tuple[int, int] | None = None
    while True:
        runs = client.store.list_runs(limit=n_runs * 2)
        done = sum(r.status == "completed" for r in runs)
        if len(runs) == n_runs and done == n_runs:
            return
        now = time.monotonic()
        progress = (done, _journal_entries(client))
        if progress != last:
            last, last_progress = progress, now
        elif now - last_progress > stall or now - started > cap:
            break
        time.sleep(0.5)
    statuses = collections.Counter(r.status for r in client.store.list_runs(limit=10_000))
    raise AssertionError(f"runs stopped completing (no progress for {stall}s, or over "
                         f"{cap}s in all): {dict(statuses)}")


def _check_invariants(client: Client, event_ids: list[str], steps: int,
                      log: pathlib.Path, zombies: frozenset[int] = frozenset()) -> dict[str, int]:
    """``zombies`` are workers that were paused (SIGSTOP) with step bodies in flight: a body
    already running when its worker froze may finish after another worker committed the
    step's memo. That is the at-least-once window; fencing keeps its result out."""
    store = client.store
    # Every acknowledged event is present, and started exactly one run.
    for eid in event_ids:
        assert store.get_event(eid) is not None, f"acknowledged event {eid} was lost"
        runs = store.list_runs(event_id=eid)
        assert len(runs) == 1, f"event {eid} started {len(runs)} runs"
    executions: dict[tuple[str, str], list[tuple[str, int]]] = collections.defaultdict(list)
    for line in log.read_text().splitlines():
        run_id, step_id, token, pid = line.split()
        executions[(run_id, step_id)].append((token, int(pid)))
    reruns = 0
    for run in store.list_runs(limit=10_000):
        assert run.status == "completed"
        assert json.loads(run.output or "null") == {"total": expected_total(steps)}
        memos = {e.step_id: e for e in store.load_journal(run.id) if e.op == "completed"}
        for i in range(steps):
            memo = json.loads(memos[f"s{i}"].data)["output"]
            runs_of_step = executions[(run.id, f"s{i}")]
            tokens = [t for t, _ in runs_of_step]
            assert memo["token"] in tokens, f"run {run.id} step s{i}: memo from no execution"
            # Nothing ran after the committed execution, except a frozen worker's zombie body.
            after = runs_of_step[tokens.index(memo["token"]) + 1:]
            assert all(pid in zombies for _, pid in after), (
                f"run {run.id} step s{i} ran again after its memo was committed: {after}")
            reruns += len(tokens) - 1
    return {"reruns": reruns}


@pytest.mark.slow
def test_kill_9_at_random_moments(store_url: str, tmp_path: pathlib.Path) -> None:
    seed = int(os.environ.get("DURABLE_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"crash seed {seed} (rerun with DURABLE_CRASH_SEED={seed})")
    steps, n_runs, kills = 6, 24, 20
    client = Client(stores.open(store_url))
    event_ids = client.send([Event("crash/go", {"steps": steps}) for _ in range(n_runs)])
    # Leases of 5 s, not 0.6 s: one worker at a time here, so the only way a step could run
    # again after its memo was committed is a worker that outlived its own lease with a
    # body in flight (a thread stalled between its lease check and its side effect for a
    # whole lease, re-claimed and re-run meanwhile): with 0.6 s leases heavy load made
    # that happen. Killed workers' runs still pass to later workers (20 kills take ~13 s).
    workers = Workers(store_url, tmp_path, lease_ms=5_000)
    try:
        for _ in range(kills):
            p, _stats = workers.start()
            time.sleep(rng.uniform(0.3, 1.0))
            p.kill()  # SIGKILL: no cleanup, leases left behind
            p.wait()
            # Events keep arriving between crashes; each is acknowledged durably.
            event_ids += client.send(Event("crash/go", {"steps": steps}))
        workers.start()
        _wait_all_completed(client, len(event_ids))
    finally:
        workers.stop_all()
    result = _check_invariants(client, event_ids, steps, workers.log)
    print(f"{kills} kills, {len(event_ids)} runs, {result['reruns']} step re-executions "
          "(each inside a crash window)")
    client.store.close()


@pytest.mark.slow
def test_many_workers_kill_and_stop(store_url: str, tmp_path: pathlib.Path) -> None:
    n_workers = 4 if store_url.startswith("postgresql") else 2
    steps, n_runs = 9, 500  # long enough that the pause lands while work remains
    client = Client(stores.open(store_url))
    event_ids = client.send([Event("crash/go", {"steps": steps}) for _ in range(n_runs)])
    workers = Workers(store_url, tmp_path)
    try:
        procs = [workers.start() for _ in range(n_workers)]
        killed, _ = procs[0]
        stopped, stopped_stats = procs[1]
        # Wait until both victims are busy executing steps, then strike.
        _wait_for_effects_from(workers.log, [killed.pid, stopped.pid])
        killed.kill()  # its runs must finish elsewhere
        workers.start()  # a replacement, so someone can take over the paused worker's runs
        _pause_between_writes(stopped, client)  # paused with steps in flight...
        time.sleep(3.0)  # ...past its lease
        stopped.send_signal(signal.SIGCONT)
        _wait_all_completed(client, n_runs)
        stopped.terminate()
        stopped.wait(timeout=30)
    finally:
        workers.stop_all()
    print(f"workers: killed {killed.pid}, paused {stopped.pid}, "
          f"all {[p.pid for p in workers.procs]}")
    stats = json.loads(stopped_stats.read_text())
    fenced = (stats["stale_writes"] + stats["discarded_results"] + stats["bodies_skipped"]
              + stats["leases_lost"])
    # The paused worker had steps in flight; others took its runs, so nothing it did after
    # resuming may land: each late result is rejected by the store or dropped before it,
    # and bodies it had not started yet are not started (its leases ran out meanwhile).
    print(f"resumed worker: {stats['stale_writes']} stale writes rejected by the store, "
          f"{stats['discarded_results']} results dropped after its lease was lost, "
          f"{stats['bodies_skipped']} bodies not started for lack of a lease, "
          f"{stats['leases_lost']} leases found lost at renewal")
    _check_invariants(client, event_ids, steps, workers.log, frozenset({stopped.pid}))
    assert fenced >= 1, stats
    client.store.close()
