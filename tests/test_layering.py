"""Layering: the pure core imports no driver, store, network, threading, entropy or clock
module, and never reads the clock.

The import check runs in a fresh interpreter started with ``-S`` (no ``site``), because
``.pth`` files processed by ``site`` may import arbitrary modules at startup (in some
environments they import ``random`` and ``threading``), which would hide what the core itself
imports. The needed paths (the source tree and the installed dependencies) are put on
``sys.path`` explicitly instead. Modules that the allowed stdlib baseline (``logging``,
``json``, ``hashlib``, ``uuid``, ``datetime``, ``zoneinfo``, ``contextvars``) and the core's
chosen pure dependencies (attrs, cattrs, celpy, croniter) already import do not count against
the core: ``logging`` imports ``threading``, and celpy's parser (lark) imports ``tempfile``,
which imports ``random``. The core itself never calls either; the source checks below prove
that no core module imports them or reads the clock.
"""

from __future__ import annotations

import ast
import json
import pathlib
import re
import subprocess
import sys
import sysconfig
from typing import Any

import pytest

import durable_core

PURE_PACKAGES = ("base", "core", "engine")  # and the store contract, durable_core.store


def _pure_modules() -> list[str]:
    root = pathlib.Path(durable_core.__file__).resolve().parent
    mods = ["durable_core.store"]
    for pkg in PURE_PACKAGES:
        for path in sorted((root / pkg).glob("*.py")):
            tail = "" if path.stem == "__init__" else f".{path.stem}"
            mods.append(f"durable_core.{pkg}{tail}")
    return mods


CORE = _pure_modules()
FORBIDDEN = ["trio", "sqlite3", "sqlite_utils", "psycopg", "socket", "threading", "asyncio",
             "random", "stores"]
BASELINE = ("logging, json, hashlib, uuid, datetime, zoneinfo, contextvars, attrs, cattrs, "
            "celpy, croniter")
PKG_DIR = pathlib.Path(durable_core.__file__).resolve().parent

_SCRIPT = r"""
import importlib, json, sys
sys.path[:0] = json.loads(sys.argv[1])
FORBIDDEN = set(json.loads(sys.argv[2]))
import logging, json, hashlib, uuid, datetime, zoneinfo, contextvars
import attrs, cattrs, celpy, croniter
baseline = sorted(sys.modules)
chains = {}

class Tracker:
    # Records, for each forbidden module, the chain of modules being imported when it was.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN and name not in chains:
            stack = []
            frame = sys._getframe(1)
            while frame is not None:
                if frame.f_code.co_name == "<module>":
                    mod = frame.f_globals.get("__name__")
                    if mod and mod != "__main__" and (not stack or stack[-1] != mod):
                        stack.append(mod)
                frame = frame.f_back
            chains[name] = list(reversed(stack)) + [name]
        return None

sys.meta_path.insert(0, Tracker())
for m in json.loads(sys.argv[3]):
    importlib.import_module(m)
print(json.dumps({"baseline": baseline, "after": sorted(sys.modules), "chains": chains}))
"""


@pytest.fixture(scope="module")
def imports() -> dict[str, Any]:
    paths = [str(PKG_DIR.parent)]
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths()[key]
        if p not in paths:
            paths.append(p)
    proc = subprocess.run(
        [sys.executable, "-S", "-c", _SCRIPT, json.dumps(paths), json.dumps(FORBIDDEN),
         json.dumps(CORE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def _top(name: str) -> str:
    return name.split(".")[0]


def test_every_core_module_was_imported(imports: dict[str, Any]) -> None:
    assert set(CORE) <= set(imports["after"])
    assert not any(_top(m) == "durable_core" for m in imports["baseline"])


@pytest.mark.parametrize("forbidden", FORBIDDEN)
def test_core_adds_no_forbidden_module(imports: dict[str, Any], forbidden: str) -> None:
    baseline = set(imports["baseline"])
    added = [m for m in imports["after"] if _top(m) == forbidden and m not in baseline]
    chain = imports["chains"].get(forbidden)
    assert added == [], f"{forbidden} imported by the core via {' -> '.join(chain or [])}"


def test_only_expected_forbidden_modules_come_from_the_stdlib_baseline(
    imports: dict[str, Any],
) -> None:
    # Document which forbidden modules the allowed baseline itself brings in (so the
    # exemption above is visible): threading (by logging) and random (by celpy -> lark ->
    # tempfile). Nothing that does I/O by itself (trio, sqlite3, psycopg, socket, asyncio).
    in_baseline = {_top(m) for m in imports["baseline"]} & set(FORBIDDEN)
    assert in_baseline <= {"threading", "random"}, in_baseline


# --------------------------------------------------------------------------- source checks

_SOURCE_FORBIDDEN = {"trio", "sqlite3", "sqlite_utils", "psycopg", "socket", "threading",
                     "asyncio", "random", "time", "stores", "secrets"}
_CLOCK_CALL = re.compile(
    r"datetime\.(now|utcnow|today)\(|\bdate\.today\(|\btime\.(time|time_ns|monotonic|"
    r"perf_counter)\(|os\.urandom\(|\buuid\.uuid[14]\("
)


def _core_files() -> list[pathlib.Path]:
    files = []
    for m in CORE:
        rel = pathlib.Path(*m.split(".")[1:])
        pkg = PKG_DIR / rel / "__init__.py"
        files.append(pkg if pkg.exists() else PKG_DIR / rel.with_suffix(".py"))
    return files


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(PKG_DIR)))
def test_core_source_has_no_forbidden_import_statement(path: pathlib.Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        bad += [f"line {node.lineno}: {n}" for n in names if _top(n) in _SOURCE_FORBIDDEN]
    assert bad == []


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(PKG_DIR)))
def test_core_source_never_reads_the_clock_or_entropy(path: pathlib.Path) -> None:
    text = path.read_text(encoding="utf-8")
    hits = [
        f"line {i}: {line.strip()}"
        for i, line in enumerate(text.splitlines(), 1)
        if _CLOCK_CALL.search(line)
    ]
    assert hits == []
    tree = ast.parse(text)
    calls = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("now", "utcnow", "today", "time", "time_ns", "monotonic")
        and not (isinstance(node.func.value, ast.Name) and node.func.value.id in ("self", "ctx"))
    ]
    assert calls == []


def test_source_checks_can_fail() -> None:
    # The checks above catch what they claim to.
    snippet = "import time\nfrom trio import sleep\nx = datetime.now()\nimport random as r\n"
    tree = ast.parse(snippet)
    imported = [
        (a.name if isinstance(n, ast.Import) else n.module)
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in (n.names if isinstance(n, ast.Import) else [None])
    ]
    assert {_top(str(m)) for m in imported} == {"time", "trio", "random"}
    assert _CLOCK_CALL.search(snippet)


def test_hot_path_records_keep_their_field_order() -> None:
    # The machine and the engine build these NamedTuples with tuple.__new__(cls, fields),
    # positionally, to save a frame per step. Reordering a field must update those sites
    # (search for _tuple_new); this test makes such a change fail loudly instead.
    from durable_core.core._model import AppendJournal, ExecuteStep, JournalEntry
    from durable_core.store import CommitBatch, RunWrite

    assert JournalEntry._fields == ("seq", "op", "position", "step_id", "kind", "ts", "data")
    assert ExecuteStep._fields == (
        "run_id", "position", "step_id", "attempt", "fn", "args", "kwargs",
    )
    assert AppendJournal._fields == ("run_id", "entries")
    assert RunWrite._fields == (
        "run_id", "epoch", "entries", "status", "wake_at", "output", "error",
        "consumed_signals", "release",
    )
    assert RunWrite("r", 1)[3:] == (None, None, None, None, 0, False)
    assert CommitBatch._fields == (
        "now", "runs", "events", "writes", "waits_add", "waits_remove", "signals",
        "routed_events", "cron", "run_events",
    )
    assert CommitBatch(0)[1:] == ((),) * 9


# --------------------------------------------------------------------------- every layer
#
# The package tree names the layers (docs/design.md draws the picture). Each module may
# import only its own layer and the layers below it; the check reads every import statement
# of every module under src/, including imports inside functions and under TYPE_CHECKING.

SRC = PKG_DIR.parent

# layer -> (rank, the module prefixes that belong to it)
LAYERS: dict[str, tuple[int, tuple[str, ...]]] = {
    "base": (0, ("durable_core.base",)),
    "core": (1, ("durable_core.core",)),
    "store": (2, ("durable_core.store", "stores.contract")),
    "engine": (3, ("durable_core.engine",)),
    "protocol": (4, ("durable_core.protocol",)),
    "stores": (4, ("stores._memory", "stores._rules", "stores.sqlite", "stores.postgres",
                   "stores.registry")),
    "drivers": (5, ("durable_core.drivers",)),
    "testing": (6, ("durable_core.testing", "stores.testing")),
    # The web dashboard reads stores through the drivers' client and the engine's views;
    # only the CLI (``durable serve``) imports it.
    "dashboard": (7, ("durable_core.dashboard",)),
    "cli": (8, ("durable_core.cli", "durable_core.demo")),
    # The two packages' front doors re-export from every layer (drivers lazily).
    "front": (9, ("durable_core", "stores")),
}
# What a layer may import besides the layers below it (same-rank imports are allowed only
# within one layer). The stores may use each other's front door for lazily opened backends.
EXTRA_ALLOWED: dict[str, set[str]] = {
    "drivers": {"front"},     # drivers open stores by URL: ``stores.open``
    "testing": {"front"},     # the test engine defaults to ``stores.MemoryStore``
    "stores": set(),
    "cli": {"front"},
}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _all_modules() -> dict[str, pathlib.Path]:
    return {
        _module_name(p): p
        for top in ("durable_core", "stores")
        for p in sorted((SRC / top).rglob("*.py"))
    }


MODULES = _all_modules()


def _layer_of(module: str) -> str:
    best, best_len = "", -1
    for layer, (_, prefixes) in LAYERS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = layer, len(prefix)
    assert best, f"{module} belongs to no layer: add it to LAYERS"
    return best


def _imports_of(module: str, path: pathlib.Path) -> set[str]:
    """The project modules that ``module`` imports (resolved to the longest known name)."""
    found: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, *([base] if base else [])])
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            while parts and ".".join(parts) not in MODULES:
                parts.pop()
            target = ".".join(parts)
            if target and target != module:
                found.add(target)
    return found


GRAPH = {m: _imports_of(m, p) for m, p in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_only_its_layer_and_below(module: str) -> None:
    layer = _layer_of(module)
    rank = LAYERS[layer][0]
    bad = []
    for target in sorted(GRAPH[module]):
        t_layer = _layer_of(target)
        if t_layer == layer or (LAYERS[t_layer][0] < rank and t_layer != "front"):
            continue
        if t_layer in EXTRA_ALLOWED.get(layer, set()):
            continue
        if layer == "front":
            continue
        bad.append(f"{target} (layer {t_layer})")
    assert bad == [], f"{module} (layer {layer}) imports upwards: {bad}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_circular_imports() -> None:
    assert _cycles(GRAPH) == []


def test_cycle_check_can_fail() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_dashboard_sits_beside_the_cli_and_only_the_cli_imports_it() -> None:
    # The dashboard uses the drivers, the engine's views, the store contract and base;
    # never the test tools (ranked below it only so the CLI may sit above it).
    dash = [m for m in GRAPH if _layer_of(m) == "dashboard"]
    assert dash, "no dashboard modules found"
    for m in dash:
        assert not [t for t in GRAPH[m] if _layer_of(t) == "testing"], m
    importers = {m for m, targets in GRAPH.items()
                 if _layer_of(m) != "dashboard" and any(t in dash for t in targets)}
    assert importers <= {"durable_core.cli._main"}, importers
