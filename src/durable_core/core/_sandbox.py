"""The determinism sandbox, core side: which thread runs orchestration code, and the errors.

Orchestration code runs in exactly one place, :meth:`RunMachine._settle` (and the
``coro.close()`` of a cancel or an early end), which pushes the machine on :data:`ACTIVE`
before it resumes the code and pops it after: two C calls per turn, whatever the code does.
The guards that the drivers install (``durable_core.drivers._sandbox``: thin wrappers around
``time.time``, ``random.random``, ``uuid.uuid4``, ... and an audit hook for I/O) cost one
global truthiness test while no thread runs orchestration code; when one does, they call
:func:`check`, which walks the calling thread's frames: it reaches a frame of the machine's
driving methods only in the thread that runs the code, so step bodies, other threads and
code outside runs are never affected. A frame of an exempt module met first (``logging``,
the import system, durable-core's own library code) means the call is made on the library's
behalf: allowed.

A violation is raised at the call as a :class:`DeterminismError` that names the call, the
function, the step position and the replacement, and it is recorded on the machine: if the
code swallows it, the run fails with it anyway at the code's next step request or end
(``RunMachine._review``). The error is the same in every driver, because every driver runs
the same machine.

This module is pure: it reads frames and never patches anything itself.
"""

from __future__ import annotations

import inspect
from types import CodeType, FrameType
from typing import Any

from durable_core.base._errors import DeterminismError, ValidationError
from durable_core.base._safelog import safe_logger

__all__ = [
    "ACTIVE", "Unsafe", "check", "foreign_call", "foreign_error", "register_driver", "violation",
]

_log = safe_logger("durable_core.run")

ACTIVE: list[Any] = []
"""Machines whose orchestration code is running now (in any thread). Only its truthiness is
read outside :func:`check`; pushes and pops are single C calls, atomic under the GIL."""

_DRIVERS: set[CodeType] = set()

# Modules whose calls are made on a library's behalf, not the orchestration code's: logging
# stamps records with the time and its handlers write files; the import system opens files
# when the code imports lazily (and runs the imported module's body); tracebacks and warnings
# read source lines; durable-core's own code (ctx.step.* compiling a CEL filter, the serde) is
# deterministic by construction.
_EXEMPT = frozenset({
    "logging", "importlib._bootstrap", "importlib._bootstrap_external", "_frozen_importlib",
    "_frozen_importlib_external", "zipimport", "linecache", "tokenize", "traceback",
    "warnings",
})
_EXEMPT_PREFIXES = ("logging.", "importlib.", "durable_core.base.", "durable_core.core.")

WHY = {
    "clock": ("reads the wall clock, which differs when the run is replayed",
              "use ctx.now() instead, or read it inside a ctx.step.run body"),
    "random": ("draws random values, which differ when the run is replayed",
               "use ctx.random() or ctx.uuid4() instead, or draw them inside a ctx.step.run "
               "body"),
    "wait": ("blocks or waits outside the engine (orchestration code may only await ctx "
             "primitives)", "use ctx.step.sleep(...) to wait and ctx.step.run(...) for other "
             "work"),
    "thread": ("starts a thread, which a replay cannot follow",
               "start it inside a ctx.step.run body"),
    "io": ("does I/O, whose result can differ when the run is replayed",
           "do it inside a ctx.step.run body"),
}
"""Per kind of call: why it breaks replay, and what to do instead."""


def register_driver(*codes: CodeType) -> None:
    """Mark the code objects of the methods that resume orchestration code (the machine's);
    a frame running one of them, with ``self`` the machine, is where :func:`check` stops."""
    _DRIVERS.update(codes)


def violation(machine: Any, call: str, kind: str, *, verb: str = "called") -> DeterminismError:
    """The error for ``call`` (e.g. ``"random.random()"``) of kind ``kind`` (a key of
    :data:`WHY`) made by the orchestration code of ``machine``. The message is the same in
    every driver (but for the run id)."""
    why, fix = WHY[kind]
    pos = machine._next_pos
    return DeterminismError(
        f"run {machine.run_id}: function {machine.function.id!r}, at step position {pos}: "
        f"orchestration code {verb} {call}, which {why}; {fix}"
        + ("" if kind == "wait" else
           "; if it cannot change which steps the run takes, wrap it in "
           "`with ctx.unsafe.nondeterministic(\"why\"):`"),
        run_id=machine.run_id,
        position=pos,
        requested=call,
    )


def check(call: str, kind: str, frame: FrameType | None) -> None:
    """Raise the violation for ``call`` if ``frame`` (the caller of the guarded function)
    belongs to orchestration code running in this thread, with the sandbox on; else return.

    Only called while :data:`ACTIVE` is not empty."""
    f = frame
    while f is not None:
        if f.f_code in _DRIVERS:
            machine = f.f_locals.get("self")
            if machine is None or not machine.function.sandbox or machine.__dict__.get(
                "_lifted"
            ):
                return
            err = violation(machine, call, kind)
            machine._made.append(err)  # reviewed at the code's next request or end
            raise err
        name = f.f_globals.get("__name__")
        if type(name) is str and (name in _EXEMPT or name.startswith(_EXEMPT_PREFIXES)):
            return
        f = f.f_back


class Unsafe:
    """``ctx.unsafe``: explicit ways out of the determinism sandbox, for the rare case."""

    __slots__ = ("_host",)

    def __init__(self, host: Any) -> None:
        self._host = host

    def nondeterministic(self, why: str) -> _Lifted:
        """A context manager that lifts the sandbox for its block::

            with ctx.unsafe.nondeterministic("debug timing only; never decides a step"):
                started = perf_counter()  # (from time import perf_counter)

        ``why`` (required) says why the block cannot change which steps the run takes; it is
        logged at DEBUG on the ``durable_core.run`` logger with the run id and step position
        (once: not again while the run replays). The block must not decide which steps the
        run takes, or a replay fails with a ``DeterminismError`` after all."""
        if not isinstance(why, str) or not why.strip():
            raise ValidationError(
                "ctx.unsafe.nondeterministic(why): say why the block cannot change which "
                "steps the run takes, e.g. nondeterministic(\"timing for a log line\")",
                field="why",
            )
        return _Lifted(self._host, why)


class _Lifted:
    __slots__ = ("_host", "_why")

    def __init__(self, host: Any, why: str) -> None:
        self._host = host
        self._why = why

    def __enter__(self) -> None:
        host = self._host
        d = host.__dict__
        d["_lifted"] = d.get("_lifted", 0) + 1
        if not host.replaying:
            _log.debug("run %s: sandbox lifted at step position %d: %s", host.run_id,
                       host._next_pos, self._why,
                       extra={"run_id": host.run_id, "position": host._next_pos,
                              "why": self._why})

    def __exit__(self, *exc: object) -> None:
        d = self._host.__dict__
        d["_lifted"] = d.get("_lifted", 1) - 1



_FOREIGN = frozenset({"trio", "asyncio", "anyio", "sniffio", "curio"})


def _foreign_name(frame: FrameType) -> str | None:
    module = frame.f_globals.get("__name__")
    top = module.split(".")[0] if type(module) is str else ""
    if top not in _FOREIGN:
        return None
    return f"{top}.{frame.f_code.co_qualname}()"


def foreign_call(coro: Any, yielded: object) -> str:
    """What the code awaited when ``yielded`` (not a ctx request) reached the machine:
    the outermost trio/asyncio coroutine it is waiting in (``trio.Event.wait()``), else a
    description of the object."""
    aw = getattr(coro, "cr_await", None)
    while aw is not None:
        frame = getattr(aw, "cr_frame", None) or getattr(aw, "gi_frame", None)
        if frame is not None and (name := _foreign_name(frame)) is not None:
            return name
        aw = getattr(aw, "cr_await", None) or getattr(aw, "gi_yieldfrom", None)
    text = repr(yielded)
    return f"an awaitable that yielded {text[:80]}{'...' if len(text) > 80 else ''}"


def foreign_error(machine: Any, err: Exception) -> Exception:
    """``err`` raised by trio or asyncio code the orchestration code called (there is no
    trio or asyncio loop where orchestration code runs: "must be called from async
    context", "no running event loop"): the :class:`DeterminismError` the same call gets
    in a driver that runs inside such a loop, where it yields to the machine. Else ``err``."""
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        name = _foreign_name(frame)
        if name is not None:
            verb = "awaited" if frame.f_code.co_flags & inspect.CO_COROUTINE else "called"
            new = violation(machine, name, "wait", verb=verb)
            new.__cause__ = err
            return new
        tb = tb.tb_next
    return err
