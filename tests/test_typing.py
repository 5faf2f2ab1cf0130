"""Types carry through: ``mypy --strict`` accepts tests/typed_example.py (step results bound
to annotated names), rejects each marked line of tests/typed_errors.py with the marked error
and nothing else, and the example runs with values of the types it states."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
from collections import defaultdict

import pytest

import typed_example
from durable_core import Event
from durable_core.testing import TestEngine, export_run, replay

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLE = HERE / "typed_example.py"
ERRORS = HERE / "typed_errors.py"
_LINE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<msg>.*?)\s+\[(?P<code>[a-z-]+)\]$")
_MARK = re.compile(r"#\s*error:\s*(?P<codes>[a-z, -]+)$")


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[int, list[str]]]:
    """mypy --strict over both files (one run): file name -> line -> error codes."""
    cache = tmp_path_factory.mktemp("mypy-cache")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache),
         "--no-error-summary", "--show-error-codes", "--hide-error-context",
         str(EXAMPLE), str(ERRORS)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, check=False,
    )
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 2 would be a crash
    found: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for line in proc.stdout.splitlines():
        m = _LINE.match(line)
        if m:
            found[pathlib.Path(m["path"]).name][int(m["line"])].append(m["code"])
        else:
            assert ": note: " in line, line
    return found


def _marked(path: pathlib.Path) -> dict[int, list[str]]:
    marks = {}
    for i, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = _MARK.search(text)
        if m:
            marks[i] = sorted(c.strip() for c in m["codes"].split(","))
    return marks


def test_the_typed_example_is_clean_under_mypy_strict(
    mypy_errors: dict[str, dict[int, list[str]]],
) -> None:
    assert dict(mypy_errors.get(EXAMPLE.name, {})) == {}


def test_each_misuse_gets_its_error_and_nothing_else_does(
    mypy_errors: dict[str, dict[int, list[str]]],
) -> None:
    expected = _marked(ERRORS)
    assert len(expected) == 10  # the file's marks were read
    got = {line: sorted(codes) for line, codes in mypy_errors.get(ERRORS.name, {}).items()}
    assert got == expected


def test_markers_are_read_as_written() -> None:
    # The comparison above can fail: a marker names codes, other comments are not markers.
    assert _MARK.search("x = 1  # error: call-overload, arg-type")["codes"] == (  # type: ignore[index]
        "call-overload, arg-type"
    )
    assert _MARK.search("x = 1  # an error here") is None


def test_the_typed_example_returns_the_types_it_states() -> None:
    eng = TestEngine(typed_example.app)
    [run] = eng.send(Event("typed/order", {"sku": "tea"})).runs
    assert run.status == "sleeping"
    eng.advance("2d")  # the sleeps are over; the run waits for the payment
    assert run.status == "waiting"
    eng.send(Event("typed/paid", {"sku": "tea", "cents": 500}))
    assert run.status == "completed", run.error
    assert run.output == {
        "quote": 500, "reserved": True, "name": "order of tea", "tag": "SKU-tea",
        "single": 250, "labels": ["SKU-a", "SKU-b"], "paid": 500, "tax": 100, "tax_by_id": 2,
        "sent": 1, "random": True, "uuid": 36, "attempt": 0,
    }
    # Replayed from its journal (every step result read back from JSON), the code sees the
    # same typed values (q.cents works on the rebuilt Quote) and returns the same output.
    quote_step = next(s for s in run.steps if s.id == "quote")
    assert quote_step.output == {"sku": "tea", "cents": 500}
    assert replay(typed_example.app, export_run(eng.store, run.id)).output == run.output
