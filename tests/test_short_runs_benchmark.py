"""``benchmarks/short_runs.py`` keeps working: its ``--quick`` mode runs end to end (a real
``durable worker`` process, events from a ``Client`` in another process) and writes its JSON.
No number is asserted (speed lives in the benchmark, not in tests)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_short_runs_benchmark_runs_in_quick_mode(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "short.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "short_runs.py"), "--quick", "--json",
         str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "runs/s" in done.stdout
    [row] = json.loads(out.read_text(encoding="utf-8"))["rows"]
    assert {k: row[k] for k in ("store", "processes", "steps", "runs", "rounds")} == {
        "store": "sqlite", "processes": 1, "steps": 3, "runs": 50, "rounds": 2}
    assert row["min"] <= row["runs_per_s"] <= row["max"]


def test_the_short_runs_benchmark_app_imports_as_the_worker_imports_it() -> None:
    # `durable worker benchmarks.short_runs:app` runs from the repository root.
    done = subprocess.run(
        [sys.executable, "-c",
         "from durable_core.drivers._loading import load_app; "
         "print(sorted(load_app('benchmarks.short_runs:app').functions))"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['steps-1', 'steps-10', 'steps-3']"
