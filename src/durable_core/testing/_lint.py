"""A static check of orchestration code: calls that break replay, found in the source.

:func:`lint` reads each function's source (``inspect`` + ``ast``), resolves the names its
module imports (``import time as t``, ``from time import time``, ``from datetime import
datetime``) and reports every direct call, in the orchestration body itself, of a wall-clock
read, a random source, a blocking or foreign wait, or I/O, with file and line. Step bodies are
not orchestration code: a lambda or a nested ``def`` passed to ``ctx.step.run`` is skipped, and
module-level helpers are never followed (neither those used as step bodies nor those called
directly: the check is of the function's own text).
"""

from __future__ import annotations

import ast
import builtins
import inspect
import sys
import textwrap
import types
from typing import Any

import attrs

from durable_core.base._errors import DeterminismError
from durable_core.core._function import App

WALL_CLOCK = "reads the wall clock"
RANDOMNESS = "is random"
WAIT = "blocks or waits outside the run"
IO = "does I/O"

# Exact callables (canonical dotted names) and the category each falls in.
_EXACT: dict[str, str] = {
    **{f"time.{n}": WALL_CLOCK for n in (
        "time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns")},
    "datetime.datetime.now": WALL_CLOCK,
    "datetime.datetime.utcnow": WALL_CLOCK,
    "datetime.datetime.today": WALL_CLOCK,
    "datetime.date.today": WALL_CLOCK,
    "os.urandom": RANDOMNESS,
    "uuid.uuid1": RANDOMNESS,
    "uuid.uuid4": RANDOMNESS,
    "time.sleep": WAIT,
    "open": IO,
    "io.open": IO,
}
# Whole modules: any call of something they define.
_MODULES: dict[str, str] = {
    "random": RANDOMNESS,
    "secrets": RANDOMNESS,
    "asyncio": WAIT,
    "trio": WAIT,
    "socket": IO,
    "subprocess": IO,
    "requests": IO,
    "httpx": IO,
    "urllib": IO,
}
_REPLACEMENT: dict[str, str] = {
    WALL_CLOCK: "use ctx.now()",
    RANDOMNESS: "use ctx.random() or ctx.uuid4()",
    WAIT: "use ctx.step.sleep() or ctx.step.run()",
    IO: "do it in a step: ctx.step.run()",
}
# Objects whose ``__module__``/``__qualname__`` do not name them as imported.
_ALIASES: dict[str, str] = {"os.urandom": "os.urandom", "builtins.open": "open"}


@attrs.frozen
class Finding:
    """One forbidden call in orchestration code, or one function that could not be checked.

    ``call`` is the call as written (``t.time()``); ``category`` is what it does wrong
    (``"reads the wall clock"``, ``"is random"``, ``"blocks or waits outside the run"``,
    ``"does I/O"``, or ``"skipped"`` when the source is unavailable); ``replacement`` says
    what to use instead (for a skipped function: why it was skipped).
    """

    function_id: str
    file: str
    line: int
    call: str
    category: str
    replacement: str

    @property
    def skipped(self) -> bool:
        """True when this function's source could not be read, so it was not checked."""
        return self.category == "skipped"

    def __str__(self) -> str:
        if self.skipped:
            return f"{self.file}: {self.function_id}: skipped: {self.replacement}"
        return (f"{self.file}:{self.line}: {self.function_id}: {self.call} {self.category}; "
                f"{self.replacement}")


def lint(app: App) -> list[Finding]:
    """Every forbidden call written directly in ``app``'s orchestration code, in source order.

    Functions whose source cannot be read (defined in a REPL or by ``exec``, or in a compiled
    module) are reported as one :attr:`Finding.skipped` finding each, never an exception.
    """
    findings: list[Finding] = []
    for function in app.functions.values():
        findings.extend(_lint_function(function.id, function.fn))
    return findings


def check_determinism(app: App) -> None:
    """Raise :class:`DeterminismError` listing every forbidden call :func:`lint` finds.

    For a test suite: ``check_determinism(app)`` passes when the orchestration code has none.
    Functions whose source is unavailable are not errors (they are listed by :func:`lint`).
    """
    found = [f for f in lint(app) if not f.skipped]
    if found:
        lines = "\n".join(f"  {f}" for f in found)
        raise DeterminismError(
            f"app {app.id!r}: {len(found)} call(s) in orchestration code break replay:\n{lines}"
        )


def _lint_function(function_id: str, fn: Any) -> list[Finding]:
    fn = inspect.unwrap(fn)
    file = getattr(getattr(fn, "__code__", None), "co_filename", None) or "<unknown>"
    try:
        file = inspect.getsourcefile(fn) or file
        lines, first = inspect.getsourcelines(fn)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError) as exc:
        return [Finding(function_id, file, 0, "", "skipped",
                        f"source unavailable ({type(exc).__name__}: {exc})")]
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return [Finding(function_id, file, 0, "", "skipped",
                        "source is not a def (a lambda or a callable object)")]
    scanner = _Scanner(function_id, file, first - 1, getattr(fn, "__globals__", {}), node)
    for stmt in node.body:
        scanner.visit(stmt)
    return scanner.findings


def _is_step_run(func: ast.expr) -> bool:
    """``<anything>.step.run``: the call that takes a step body."""
    return (isinstance(func, ast.Attribute) and func.attr == "run"
            and isinstance(func.value, ast.Attribute) and func.value.attr == "step")


class _Scanner(ast.NodeVisitor):
    """Walks one orchestration function's body, skipping step bodies."""

    def __init__(self, function_id: str, file: str, line_offset: int,
                 module_globals: dict[str, Any],
                 node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.function_id = function_id
        self.file = file
        self.line_offset = line_offset
        self.globals = module_globals
        self.findings: list[Finding] = []
        self.imports: dict[str, str] = {}  # imports inside the function: name -> dotted
        self.local_names: set[str] = set()
        self.step_bodies: set[str] = set()  # nested defs passed to ctx.step.run
        self.identities = _identities()
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                for a in sub.names:
                    if a.asname:
                        self.imports[a.asname] = a.name
                    else:
                        top = a.name.split(".")[0]
                        self.imports[top] = top
            elif isinstance(sub, ast.ImportFrom) and sub.module and not sub.level:
                for a in sub.names:
                    self.imports[a.asname or a.name] = f"{sub.module}.{a.name}"
            elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store | ast.Del):
                self.local_names.add(sub.id)
            elif isinstance(sub, ast.arg):
                self.local_names.add(sub.arg)
            elif isinstance(sub, ast.Call) and _is_step_run(sub.func):
                for arg in [*sub.args, *(k.value for k in sub.keywords)]:
                    if isinstance(arg, ast.Name):
                        self.step_bodies.add(arg.id)

    # Step bodies are not orchestration code.
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name not in self.step_bodies:
            self.generic_visit(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        if node.name not in self.step_bodies:
            self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = self._resolve(node.func)
        category = _category(name, node) if name else None
        if category is not None:
            self.findings.append(Finding(
                self.function_id, self.file, node.lineno + self.line_offset,
                f"{ast.unparse(node.func)}()", category, _REPLACEMENT[category]))
        self.visit(node.func)
        step_run = _is_step_run(node.func)
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            if step_run and isinstance(arg, ast.Lambda):
                continue  # a step body
            self.visit(arg)

    def _resolve(self, expr: ast.expr) -> str | None:
        """The canonical dotted name ``expr`` refers to, when it is an imported name."""
        if isinstance(expr, ast.Attribute):
            base = self._resolve(expr.value)
            return None if base is None else f"{base}.{expr.attr}"
        if not isinstance(expr, ast.Name):
            return None
        if expr.id in self.imports:
            return self.imports[expr.id]
        if expr.id in self.local_names:
            return None
        if expr.id in self.globals:
            return _name_of(self.globals[expr.id], self.identities)
        if hasattr(builtins, expr.id):
            return _name_of(getattr(builtins, expr.id), self.identities)
        return None


def _category(name: str, call: ast.Call) -> str | None:
    if name in _EXACT:
        return _EXACT[name]
    top = name.split(".")[0]
    if top in _MODULES and "." in name:
        if name == "random.Random" and (call.args or call.keywords):
            return None  # a seeded generator is deterministic
        return _MODULES[top]
    return None


def _name_of(obj: Any, identities: dict[int, str]) -> str | None:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    known = identities.get(id(obj))
    if known is not None:
        return known
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        dotted = f"{module}.{qualname}"
        return _ALIASES.get(dotted, dotted)
    return None


def _identities() -> dict[int, str]:
    """Forbidden objects by identity, for those whose ``__module__`` hides where they live
    (``random.random`` is a bound method, ``os.urandom`` says ``posix``)."""
    found: dict[int, str] = {id(builtins.open): "open"}
    os_module = sys.modules.get("os")
    if os_module is not None:
        found[id(os_module.urandom)] = "os.urandom"
    for module_name in ("random", "secrets"):
        module = sys.modules.get(module_name)
        for attr in getattr(module, "__all__", ()):
            if attr != "compare_digest":  # deterministic
                found.setdefault(id(getattr(module, attr)), f"{module_name}.{attr}")
    return found
