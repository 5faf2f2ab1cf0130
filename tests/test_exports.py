"""The public surface, pinned (in the style of trio's ``test_exports``).

For every public module: ``__all__`` equals the list pinned here (a change to the public API
is a deliberate edit of this file), every name in it resolves and has a docstring (for a
constant, an attribute docstring under its assignment), every public method and property of
an exported class has one too, and the module shows no public-looking name outside
``__all__``. The front doors (``durable_core``, ``stores``, ...) are strict: every name in
their namespace not starting with ``_`` is in ``__all__`` (subpackages excepted: importing
``durable_core.core._machine`` binds ``durable_core.core``). Public modules that also hold
implementation (``durable_core.store``, ``stores.testing``, ``durable_core.demo``) may import
helpers, but every class, function and constant they define is either private (``_name``) or
in ``__all__``. The layer packages (``durable_core.base``, ``.core``, ``.engine``,
``.drivers``) are namespaces: they export nothing.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pathlib
import types
from typing import Any

import pytest

from durable_core import Function

PINNED: dict[str, list[str]] = {
    "durable_core": [
        "App", "AsyncClient", "AsyncioWorker", "AttemptView", "BackgroundWorker", "Batch",
        "CancelOn", "Client", "Concurrency", "Context", "Debounce", "Priority", "RateLimit",
        "Singleton", "Throttle",
        "CronTrigger", "DeterminismError",
        "DurableError", "Engine", "ErrorInfo", "Event", "EventTrigger", "Function",
        "FunctionConfigError", "InvalidCronError", "InvalidDurationError", "InvalidEventError",
        "InvalidExpressionError", "JournalEntry", "JsonLogFormatter", "LimitExceededError",
        "NonRetriableError",
        "RetryAfterError", "RunFailedError", "RunHandle", "RunMachine", "RunNotFoundError",
        "RunTimeoutError", "RunView", "Sent",
        "SerializationError", "SkippedTrigger", "Step", "StepError", "StepView", "Steps",
        "Store", "StoreError", "StoreLostError", "TextLogFormatter", "Timeouts",
        "UnknownFunctionError", "UsageError", "ValidationError", "Worker", "__version__",
        "configure_logging", "converter", "make_converter", "on_cron", "on_event", "open_store",
        "tuned_gc",
    ],
    "durable_core.testing": [
        "CrashTestReport", "DeployFailure", "DeployReport", "FaultPlan", "Finding",
        "FunctionReport", "InvariantViolation", "RunHandle", "SentRuns", "Simulation",
        "TestEngine", "check_deploy", "check_determinism", "crash_test", "export_run", "lint",
        "replay", "replay_folder",
    ],
    "durable_core.cli": ["main"],
    "durable_core.dashboard": ["create_app", "serve"],
    "durable_core.store": [
        "ALL_SIGNALS", "ALWAYS_DUE", "DEDUPE_WINDOW_MS", "SKIP_REASONS", "Claim",
        "CommitBatch", "NewRun", "RunChange", "RunRecord", "RunWrite", "SkippedTrigger",
        "StartLimiter", "StartLimits", "Store", "StoredEvent",
        "WaitRecord", "apply_change", "claim_order", "cron_advances", "due_at",
        "event_is_duplicate",
        "flag_duplicates", "fold_writes", "gcra_rate_limit", "gcra_throttle",
        "is_journal_only", "lease_held", "lone_memo",
        "new_runs_to_create", "notifies", "pick_limited", "record_changes", "routing_only",
        "run_events_to_append", "signal_accepted", "slot_has_room", "slot_released",
        "wait_changes", "wait_found", "wait_records",
        "write_accepted",
        # flow buffers (debounce, batch_events)
        "BUFFER_KINDS", "Buffer", "BufferAdd", "BufferState", "BufferTake", "buffer_added",
        "buffer_rest", "event_bytes", "take_accepted",
    ],
    "durable_core.demo": ["app", "charge_card", "process_order"],
    "durable_core.otel": ["instrument", "instrumented", "uninstrument"],
    "durable_core.protocol": [
        "CRON_EVENT", "TERMINAL_STATUSES", "AppendJournal", "CancelRequested", "CancelRun",
        "ClearWait", "Command", "CompleteRun", "EmitEvents", "Engine", "ErrorInfo",
        "ExecuteStep", "FailRun", "Input", "JournalEntry", "JournalOp", "Plan", "RegisterWait",
        "RunMachine", "RunStarted", "RunStatus", "SendSignal", "SetRunState", "Signal",
        "SignalKind", "SignalReceived", "StartRun", "StepCompleted", "StepFailed", "StepKind",
        "StepResult", "TimerFired", "Work", "run_step_body", "run_step_body_async",
        "wait_matches",
    ],
    "stores": [
        "Claim", "CommitBatch", "MemoryStore", "NewRun", "PostgresStore", "RunRecord",
        "RunWrite", "SQLiteStore", "Store", "StoredEvent", "WaitRecord", "open", "register",
        "shareable",
    ],
    "stores.registry": ["Scheme", "open", "register", "schemes", "shareable"],
    "stores.sqlite": ["SQLiteStore"],
    "stores.postgres": ["PostgresStore"],
    "stores.testing": [
        "DAY", "LEASE", "NASTY_STRINGS", "T0", "StoreConformance", "StoreStateMachine",
        "check_processes_never_share_runs", "claim", "create", "entries", "entry",
        "event_json", "make_state_machine", "new_run", "run_gated", "run_threads", "where",
        "write",
    ],
}
FRONT_DOORS = {"durable_core", "durable_core.testing", "durable_core.cli", "stores",
               "stores.sqlite", "stores.postgres"}
NAMESPACES = ["durable_core.base", "durable_core.core", "durable_core.engine",
              "durable_core.drivers"]
SRC = pathlib.Path(__file__).resolve().parent.parent / "src"


def _import(name: str) -> types.ModuleType:
    return importlib.import_module(name)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_all_is_pinned(name: str) -> None:
    module = _import(name)
    assert sorted(module.__all__) == sorted(PINNED[name])
    assert len(set(module.__all__)) == len(module.__all__)


def _public_modules() -> set[str]:
    """Every module under src/durable_core and src/stores with no ``_`` in its path."""
    found = set()
    for top in ("durable_core", "stores"):
        for path in (SRC / top).rglob("*.py"):
            parts = list(path.relative_to(SRC).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if not any(p.startswith("_") for p in parts):
                found.add(".".join(parts))
    return found


def test_every_public_module_is_pinned() -> None:
    # A new public module (durable_core.protocol, stores.contract, ...) must be added to
    # PINNED (or to NAMESPACES if it only groups private modules).
    assert _public_modules() == set(PINNED) | set(NAMESPACES)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_every_exported_name_resolves(name: str) -> None:
    module = _import(name)
    missing = []
    for attr in module.__all__:
        try:
            getattr(module, attr)
        except AttributeError:
            missing.append(attr)
    assert missing == []


def _is_submodule(module: types.ModuleType, value: object) -> bool:
    return isinstance(value, types.ModuleType) and value.__name__.startswith(
        module.__name__ + "."
    )


def _future_feature(value: object) -> bool:
    return type(value).__module__ == "__future__"


def _defined_here(module: types.ModuleType) -> set[str]:
    """Names the module's own source binds at top level (not by import)."""
    assert module.__file__ is not None
    tree = ast.parse(pathlib.Path(module.__file__).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


@pytest.mark.parametrize("name", sorted(PINNED))
def test_no_public_looking_name_outside_all(name: str) -> None:
    module = _import(name)
    exported = set(module.__all__)
    if name in FRONT_DOORS:
        candidates = {
            n for n, v in vars(module).items()
            if not _is_submodule(module, v) and not _future_feature(v)
        }
    else:
        candidates = _defined_here(module)
    extra = sorted(n for n in candidates if not n.startswith("_") and n not in exported)
    assert extra == [], f"{name}: make these private (_name) or export them: {extra}"


@pytest.mark.parametrize("name", NAMESPACES)
def test_layer_packages_export_nothing(name: str) -> None:
    module = _import(name)
    assert not hasattr(module, "__all__")
    public = sorted(
        n for n, v in vars(module).items()
        if not n.startswith("_") and not _is_submodule(module, v) and not _future_feature(v)
    )
    assert public == []
    assert (module.__doc__ or "").strip()


# --------------------------------------------------------------------------- docstrings


def _attribute_docstring(module_name: str, attr: str, seen: frozenset[str] = frozenset()) -> str:
    """The string literal right under ``attr = ...`` in the module that assigns it (following
    ``from x import attr`` re-exports), or ''."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None or module_name in seen:
        return ""
    tree = ast.parse(pathlib.Path(spec.origin).read_text(encoding="utf-8"))
    body = tree.body
    for i, node in enumerate(body):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == attr for t in targets):
            nxt = body[i + 1] if i + 1 < len(body) else None
            if (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                return nxt.value.value.strip()
            return ""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                if (alias.asname or alias.name) == attr:
                    return _attribute_docstring(node.module, alias.name, seen | {module_name})
    return ""


def _undocumented(module: types.ModuleType, attr: str) -> list[str]:
    value = getattr(module, attr)
    if isinstance(value, Function):
        value = value.fn  # a registered durable function: its body's docstring
    if not isinstance(value, type | types.FunctionType | types.BuiltinFunctionType):
        # A constant or an instance: it needs an attribute docstring where it is assigned.
        return [] if _attribute_docstring(module.__name__, attr) else [attr]
    bad = [] if (value.__doc__ or "").strip() else [attr]
    if isinstance(value, type):
        for member, raw in vars(value).items():
            if member.startswith("_"):
                continue
            fn: Any = raw
            if isinstance(raw, staticmethod | classmethod):
                fn = raw.__func__
            elif isinstance(raw, property):
                fn = raw.fget
            elif not inspect.isfunction(raw):
                continue  # fields, slots and class constants
            if not (fn.__doc__ or "").strip():
                bad.append(f"{attr}.{member}")
    return bad


@pytest.mark.parametrize("name", sorted(PINNED))
def test_every_public_name_has_a_docstring(name: str) -> None:
    module = _import(name)
    assert (module.__doc__ or "").strip(), f"{name} has no module docstring"
    bad = [b for attr in module.__all__ for b in _undocumented(module, attr)]
    assert bad == [], f"{name}: no docstring on {bad}"


def test_the_checks_can_fail() -> None:
    fake = types.ModuleType("fake_public", "A module.")
    fake.__all__ = ["f"]  # type: ignore[attr-defined]

    def f() -> None:
        pass

    class Undocumented:
        def method(self) -> None:
            pass

    fake.f = f  # type: ignore[attr-defined]
    fake.Undocumented = Undocumented  # type: ignore[attr-defined]
    assert _undocumented(fake, "f") == ["f"]
    assert _undocumented(fake, "Undocumented") == ["Undocumented", "Undocumented.method"]
    leaked = {n for n in vars(fake) if not n.startswith("_")} - set(fake.__all__)
    assert leaked == {"Undocumented"}
    assert _attribute_docstring("durable_core.store", "DEDUPE_WINDOW_MS")
    assert _attribute_docstring("durable_core.store", "Store") == ""
