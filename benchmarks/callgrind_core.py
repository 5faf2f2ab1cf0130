"""Instruction counts per step of the pure core, for A/B comparisons on a loaded machine.

Wall times on a shared box drift by 10-20 %; the number of instructions the interpreter
executes does not. Run the pure-core loop of ``step_overhead.py`` (one run of ``--steps``
steps, driven by ``RunMachine.step_completed``) under callgrind twice, with ``--steps`` and
with ``--steps // 2`` steps, and divide the difference of the totals by the difference of
the step counts: what is left is the cost of one step (imports and start-up cancel out)::

    python benchmarks/callgrind_core.py --steps 4000 --measure

runs both under ``valgrind --tool=callgrind`` and prints the instructions (Ir) per step.
``--path worker`` measures the trio worker with the memory store instead (async bodies).
``--path short`` measures the fixed cost of a short run instead: ``--steps`` runs of
``--run-steps`` (3) steps each, sent at once (``max_runs`` as many) to the trio worker on a
SQLite file (``--store memory`` for the memory store), logging at ``--log-level`` (``info``,
as ``durable worker`` does, to ``/dev/null``); it prints Ir per *run*.
``--value dict`` / ``--value dataclass`` make each core step return a small unannotated dict
or a dataclass its annotation rebuilds, instead of an int: the cost of recording a value
that is not a plain scalar (the JSON round trip and its check, docs/concepts/types.md).
Without ``--measure`` it only runs the loop once (what callgrind is pointed at).
Compare two trees by running this script with ``PYTHONPATH=<tree>/src``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import re
import subprocess
import sys
import tempfile
from typing import Any


def _freeze() -> None:
    """Leave what the imports made out of the collector's passes: otherwise a full
    collection that happens in one of the two measured runs and not in the other counts
    the whole interpreter's objects as the cost of the extra steps."""
    gc.collect()
    gc.freeze()


@dataclasses.dataclass
class Item:
    """What ``--value dataclass`` steps return (module level, so both trees resolve it)."""

    i: int
    name: str
    tags: list[str]


def work_dict(i: int):  # type: ignore[no-untyped-def]  # unannotated: plain JSON
    return {"i": i + 1, "name": "item", "tags": ["a", "b"]}


def work_typed(i: int) -> Item:
    return Item(i + 1, "item", ["a", "b"])


def run_core(n: int, value: str = "int") -> None:
    from durable_core import App, Context, Event, on_event
    from durable_core.core._machine import RunMachine
    from durable_core.core._model import ExecuteStep, RunStarted

    app = App("bench")

    def work(i: int) -> int:
        return i + 1

    body: Any = {"int": work, "dict": work_dict, "dataclass": work_typed}[value]

    @app.function(id="sync-steps", trigger=on_event("bench/sync"), max_steps=10_000)
    async def sync_steps(ctx: Context) -> int:
        total = 0
        for i in range(n):
            out = await ctx.step.run("s", body, i)
            total += out if type(out) is int else 1
        return total

    _freeze()
    m = RunMachine(sync_steps, "r0", [Event("bench/sync", {})], 0)
    pending = [c for c in m.handle(RunStarted(0)) if type(c) is ExecuteStep]
    while pending:
        nxt = []
        for s in pending:
            value = s.fn(*s.args)
            for cmd in m.step_completed(s.position, s.attempt, value, 0):
                if type(cmd) is ExecuteStep:
                    nxt.append(cmd)
        pending = nxt
    assert m.status == "completed", (m.status, m.error)


def run_worker(n: int) -> None:
    import trio

    from durable_core import App, Context, Event, on_event
    from durable_core.drivers._worker import Worker
    from stores import MemoryStore

    app = App("bench", async_bodies="trio")  # bodies awaited in the run's task, as measured before

    async def awork(i: int) -> int:
        return i + 1

    @app.function(id="async-steps", trigger=on_event("bench/async"), max_steps=10_000)
    async def async_steps(ctx: Context) -> int:
        total = 0
        for i in range(n):
            total += await ctx.step.run("s", awork, i)
        return total

    class Counting(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.done = trio.Event()

        def commit(self, batch: Any) -> set[str]:
            fenced = super().commit(batch)
            if any(w.status == "completed" for w in batch.writes):
                self.done.set()
            return fenced

    store = Counting()
    _freeze()

    async def main() -> None:
        w = Worker(app, store, max_runs=1, batch_limit=1000)
        async with trio.open_nursery() as nursery:
            await nursery.start(w.run)
            await w.send([Event("bench/async", {})])
            await store.done.wait()
            w.stop()

    trio.run(main)


def run_short(n: int, steps: int, store_kind: str, log_level: str) -> None:
    import trio

    import stores
    from durable_core import App, Context, Event, on_event
    from durable_core.drivers._logs import configure_logging
    from durable_core.drivers._worker import Worker

    app = App("bench", async_bodies="trio")

    async def awork(i: int) -> int:
        return i + 1

    @app.function(id="short", trigger=on_event("bench/short"))
    async def short(ctx: Context) -> int:
        total = 0
        for i in range(steps):
            total += await ctx.step.run(f"s{i}", awork, i)
        return total

    configure_logging(log_level, stream=open(os.devnull, "w"))  # noqa: SIM115
    with tempfile.TemporaryDirectory() as tmp:
        inner = (stores.open("memory://") if store_kind == "memory"
                 else stores.open(f"sqlite:///{tmp}/short.db"))
        ended = [0]
        done = trio.Event()
        token: list[Any] = []

        class Counting:
            blocking = inner.blocking

            def __getattr__(self, name: str) -> Any:
                return getattr(inner, name)

            def commit(self, batch: Any) -> set[str]:
                fenced = inner.commit(batch)
                ended[0] += sum(w.status == "completed" for w in batch.writes)
                if ended[0] >= n and not done.is_set():
                    token[0].run_sync_soon(done.set)  # from the commit thread or trio's
                return fenced

        store = Counting()
        _freeze()

        async def main() -> None:
            # A lease far longer than the run (valgrind is ~50x slower): no lease may run out
            # and make the count depend on the wall time.
            w = Worker(app, store, max_runs=n, batch_limit=1000,  # type: ignore[arg-type]
                       poll_interval=0.01, tune_gc=True, lease_ms=3_600_000)
            token.append(trio.lowlevel.current_trio_token())
            async with trio.open_nursery() as nursery:
                await nursery.start(w.run)
                await w.send([Event("bench/short", {"i": i}) for i in range(n)])
                await done.wait()
                w.stop()

        trio.run(main)
        inner.close()


def _ir(path: str, n: int, value: str = "int", extra: tuple[str, ...] = ()) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, __file__, "--path", path, "--steps", str(n), "--value", value,
             *extra],
            check=True, capture_output=True, env=dict(os.environ, PYTHONHASHSEED="0"),
        )
        with open(out) as f:
            m = re.search(r"^summary: (\d+)", f.read(), re.M) or None
        assert m is not None
        return int(m.group(1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--path", choices=["core", "worker", "short"], default="core")
    p.add_argument("--run-steps", type=int, default=3, help="steps per run (--path short)")
    p.add_argument("--store", choices=["sqlite", "memory"], default="sqlite",
                   help="the store of --path short")
    p.add_argument("--log-level", default="info", help="logging of --path short")
    p.add_argument("--measure", action="store_true", help="run under callgrind, print Ir/step")
    p.add_argument("--value", choices=["int", "dict", "dataclass"], default="int",
                   help="what each step body returns (core path): an int (the default), "
                   "a small unannotated dict, or a dataclass its annotation rebuilds")
    args = p.parse_args()
    if not args.measure:
        if args.path == "core":
            run_core(args.steps, args.value)
        elif args.path == "short":
            run_short(args.steps, args.run_steps, args.store, args.log_level)
        else:
            run_worker(args.steps)
        return 0
    half = args.steps // 2
    # A first run outside callgrind writes the .pyc files: compiling a changed module in
    # one of the measured runs only would count as steps.
    extra: tuple[str, ...] = ()
    if args.path == "short":
        extra = ("--run-steps", str(args.run_steps), "--store", args.store,
                 "--log-level", args.log_level)
    subprocess.run([sys.executable, __file__, "--path", args.path, "--steps", "1",
                    "--value", args.value, *extra], check=True)
    big = _ir(args.path, args.steps, args.value, extra)
    small = _ir(args.path, half, args.value, extra)
    label = args.path if args.value == "int" else f"{args.path} ({args.value} outputs)"
    if args.path == "short":
        print(f"short ({args.run_steps}-step runs, {args.store}, log {args.log_level}): "
              f"{(big - small) / (args.steps - half):,.0f} Ir/run "
              f"(total {big:,} at {args.steps} runs, {small:,} at {half})")
        return 0
    print(f"{label}: {(big - small) / (args.steps - half):,.0f} Ir/step "
          f"(total {big:,} at {args.steps} steps, {small:,} at {half})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
