"""Instruction counts per step of the pure core, for A/B comparisons on a loaded machine.

Wall times on a shared box drift by 10-20 %; the number of instructions the interpreter
executes does not. Run the pure-core loop of ``step_overhead.py`` (one run of ``--steps``
steps, driven by ``RunMachine.step_completed``) under callgrind twice, with ``--steps`` and
with ``--steps // 2`` steps, and divide the difference of the totals by the difference of
the step counts: what is left is the cost of one step (imports and start-up cancel out)::

    python benchmarks/callgrind_core.py --steps 4000 --measure

runs both under ``valgrind --tool=callgrind`` and prints the instructions (Ir) per step.
``--path worker`` measures the trio worker with the memory store instead (async bodies).
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


def _ir(path: str, n: int, value: str = "int") -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, __file__, "--path", path, "--steps", str(n), "--value", value],
            check=True, capture_output=True, env=dict(os.environ, PYTHONHASHSEED="0"),
        )
        with open(out) as f:
            m = re.search(r"^summary: (\d+)", f.read(), re.M) or None
        assert m is not None
        return int(m.group(1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--path", choices=["core", "worker"], default="core")
    p.add_argument("--measure", action="store_true", help="run under callgrind, print Ir/step")
    p.add_argument("--value", choices=["int", "dict", "dataclass"], default="int",
                   help="what each step body returns (core path): an int (the default), "
                   "a small unannotated dict, or a dataclass its annotation rebuilds")
    args = p.parse_args()
    if not args.measure:
        if args.path == "core":
            run_core(args.steps, args.value)
        else:
            run_worker(args.steps)
        return 0
    half = args.steps // 2
    # A first run outside callgrind writes the .pyc files: compiling a changed module in
    # one of the measured runs only would count as steps.
    subprocess.run([sys.executable, __file__, "--path", args.path, "--steps", "1",
                    "--value", args.value], check=True)
    big, small = _ir(args.path, args.steps, args.value), _ir(args.path, half, args.value)
    label = args.path if args.value == "int" else f"{args.path} ({args.value} outputs)"
    print(f"{label}: {(big - small) / (args.steps - half):,.0f} Ir/step "
          f"(total {big:,} at {args.steps} steps, {small:,} at {half})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
