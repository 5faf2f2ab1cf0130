"""The determinism sandbox, driver side: the guards, installed once per process.

:func:`install` (called by the trio ``Worker``, ``TestEngine`` and the simulator when they
are built, with their app) replaces, in place:

- module functions that read the clock, draw entropy, block or start threads (``time.time``,
  ``random.random``, ``uuid.uuid4``, ``os.urandom``, ``secrets.*``, ``time.sleep``,
  ``threading.Thread.start``, ..., and every public function of ``asyncio`` and ``trio``
  once they are imported) by thin wrappers with the same name, docstring and signature;
- ``datetime.datetime.now``/``utcnow`` and ``datetime.date.today``, which live on C types,
  in the types' own dictionaries (so ``isinstance`` and pickling are untouched);
- names bound to those functions in the modules of the app's functions
  (``from time import time``), with the same wrappers;

and adds an audit hook (``sys.addaudithook``) that sees file, socket, subprocess and other
OS calls. Every guard costs one global truthiness test while no orchestration code runs
(:data:`durable_core.core._sandbox.ACTIVE` is empty); otherwise it asks
:func:`durable_core.core._sandbox.check` whether the caller is orchestration code, which
raises the ``DeterminismError``. Nothing is re-imported, copied or pickled, and an
unsandboxed function, a step body or another thread sees the original behaviour.
"""

from __future__ import annotations

import _thread
import datetime
import functools
import inspect
import os
import random
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from durable_core.base._safelog import safe_logger
from durable_core.core._function import App
from durable_core.core._sandbox import ACTIVE, check

__all__ = ["install"]

_log = safe_logger("durable_core.sandbox")
_lock = threading.Lock()
_installed = False
_patched_modules: set[str] = set()
_guards: dict[int, tuple[Any, Any]] = {}
"""id(original) -> (original, guard): to re-bind ``from time import time`` names."""
_rewritten: set[int] = set()  # ids of module namespaces already rewritten

def _when_no_time_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """``time.localtime()``/``gmtime()``/``ctime()``: the clock only without a time."""
    return not args or args[0] is None


def _when_no_tuple(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """``time.strftime(fmt)``/``asctime()``: the clock only without a time tuple."""
    return len(args) < (2 if args and isinstance(args[0], str) else 1)


def _when_unseeded(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """``random.Random()``/``.seed()`` seeded from the OS (not ``Random(42)``)."""
    return (args[1] if len(args) > 1 else kwargs.get("a")) is None


def _guard(orig: Any, call: str, kind: str,
           when: Callable[[tuple[Any, ...], dict[str, Any]], bool] | None = None) -> Any:
    """A wrapper of ``orig`` that raises in orchestration code (``when`` the arguments say
    so), keeping ``orig``'s name, docstring and whether it is a coroutine function."""
    if when is None and kind == "clock":
        # The clock functions take no argument and are called often (trio and the stores
        # read the time): no argument packing.
        @functools.wraps(orig)
        def guard_clock() -> Any:
            if ACTIVE:
                check(call, kind, sys._getframe(1))
            return orig()

        guard: Any = guard_clock
    elif inspect.iscoroutinefunction(orig):
        @functools.wraps(orig)
        async def guard_async(*args: Any, **kwargs: Any) -> Any:
            if ACTIVE and (when is None or when(args, kwargs)):
                check(call, kind, sys._getframe(1))
            return await orig(*args, **kwargs)

        guard = guard_async
    else:
        @functools.wraps(orig)
        def guard_sync(*args: Any, **kwargs: Any) -> Any:
            if ACTIVE and (when is None or when(args, kwargs)):
                check(call, kind, sys._getframe(1))
            return orig(*args, **kwargs)

        guard = guard_sync
    guard.__durable_sandbox__ = True
    _guards[id(orig)] = (orig, guard)
    return guard


def _patch(module: Any, names: Iterable[str], kind: str, *, prefix: str | None = None,
           when: Callable[[tuple[Any, ...], dict[str, Any]], bool] | None = None) -> None:
    label = prefix if prefix is not None else module.__name__
    for name in names:
        orig = getattr(module, name, None)
        if orig is None or getattr(orig, "__durable_sandbox__", False):
            continue
        setattr(module, name, _guard(orig, f"{label}.{name}()", kind, when))


def _patch_c_type(cls: type, name: str, kind: str) -> None:
    """Guard a classmethod of a C type (``datetime.datetime.now``) in the type's own
    dictionary: the type cannot be assigned to, and replacing the module's ``datetime``
    name with a subclass would break ``isinstance``, ``type(x) is`` and pickling."""
    import ctypes
    import gc

    [tp_dict] = [d for d in gc.get_referents(cls.__dict__) if type(d) is dict]
    orig = tp_dict[name]
    if getattr(orig, "__durable_sandbox__", False):
        return

    def guard(klass: type, *args: Any, **kwargs: Any) -> Any:
        if ACTIVE:
            check(f"{klass.__module__}.{klass.__qualname__}.{name}()", kind, sys._getframe(1))
        return orig.__get__(None, klass)(*args, **kwargs)

    guard.__name__ = guard.__qualname__ = name
    guard.__doc__ = getattr(orig, "__doc__", None)
    method: Any = classmethod(guard)
    method.__durable_sandbox__ = True
    tp_dict[name] = method
    ctypes.pythonapi.PyType_Modified(ctypes.py_object(cls))  # drop the attribute caches


# Audit events (sys.audit) that mean I/O or a process, by event or by its module part.
_IO_EVENTS = frozenset({"open", "builtins.input", "time.sleep"})
_IO_MODULES = frozenset({
    "os", "socket", "subprocess", "shutil", "glob", "tempfile", "mmap", "pty", "fcntl",
    "urllib", "http", "ftplib", "smtplib", "imaplib", "poplib", "nntplib", "telnetlib",
    "webbrowser", "syslog", "resource", "sqlite3", "ssl", "msvcrt", "winreg", "_winapi",
})


def _audit(event: str, args: tuple[Any, ...]) -> None:
    # Called for every audit event of the process: one global test while no orchestration
    # code runs anywhere.
    if ACTIVE and (event in _IO_EVENTS or event.partition(".")[0] in _IO_MODULES):
        if event == "sqlite3.connect" and args and args[0] in (":memory:", ""):
            return  # an in-memory database is deterministic
        shown = ", ".join(_short(a) for a in args[:2])
        check(f"{event}({shown})", "wait" if event == "time.sleep" else "io",
              sys._getframe(1))


def _short(value: object) -> str:
    if isinstance(value, bytes):  # (os.system and others pass a path or command as bytes)
        value = value.decode("utf-8", "replace")
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _install_stdlib() -> None:
    _patch(time, ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter",
                  "perf_counter_ns", "process_time", "process_time_ns", "thread_time",
                  "thread_time_ns"), "clock")
    _patch(time, ("localtime", "gmtime", "ctime"), "clock", when=_when_no_time_arg)
    _patch(time, ("strftime", "asctime"), "clock", when=_when_no_tuple)
    _patch(time, ("sleep",), "wait")
    _patch(random, [n for n in random.__all__  # the module's functions: methods of _inst
                    if getattr(getattr(random, n, None), "__self__", None) is random._inst],
           "random")
    random.Random.seed = _guard(  # type: ignore[method-assign]
        random.Random.seed, "random.Random() without a seed", "random", _when_unseeded)
    _patch(os, ("urandom", "getrandom"), "random")
    _patch(uuid, ("uuid1", "uuid4"), "random")
    _patch(secrets, ("token_bytes", "token_hex", "token_urlsafe", "choice", "randbelow",
                     "randbits"), "random")
    threading.Thread.start = _guard(  # type: ignore[method-assign]
        threading.Thread.start, "threading.Thread.start()", "thread")
    _patch(_thread, ("start_new_thread", "start_new"), "thread")
    try:
        _patch_c_type(datetime.datetime, "now", "clock")
        _patch_c_type(datetime.datetime, "utcnow", "clock")
        _patch_c_type(datetime.date, "today", "clock")
    except Exception as exc:  # not CPython, or its layout changed: say so, go on
        _log.warning("the sandbox cannot guard datetime.now()/today() here: %s", exc)


_NOT_WAITS = frozenset({
    # Decorators and predicates libraries call at import time or to sniff the loop.
    "as_safe_channel", "enable_ki_protection", "disable_ki_protection",
    "currently_ki_protected", "in_trio_run", "in_trio_task", "encode_hostname",
})


def _install_loops() -> None:
    """Guard asyncio and trio, once each is imported."""
    for top, subs in (("asyncio", ()), ("trio", ("lowlevel", "to_thread", "from_thread"))):
        if top in _patched_modules or top not in sys.modules:
            continue
        _patched_modules.add(top)
        root = sys.modules[top]
        for mod in (root, *(getattr(root, s) for s in subs)):
            names = [n for n in (getattr(mod, "__all__", None) or dir(mod))
                     if not n.startswith(("_", "is")) and n not in _NOT_WAITS
                     and (inspect.isfunction(getattr(mod, n, None))
                          or inspect.isbuiltin(getattr(mod, n, None)))]
            prefix = top if mod is root else f"{top}.{mod.__name__.rpartition('.')[2]}"
            _patch(mod, names, "wait", prefix=prefix)


def _rewrite_globals(app: App) -> None:
    """Re-bind, in the modules of the app's sandboxed functions, names bound to a guarded
    original (``from time import time``) to its guard."""
    for func in app.functions.values():
        if not func.sandbox:
            continue
        fn = inspect.unwrap(func.fn)
        namespace = getattr(fn, "__globals__", None)
        if namespace is None or id(namespace) in _rewritten:
            continue
        _rewritten.add(id(namespace))
        for name, value in list(namespace.items()):
            found = _guards.get(id(value))
            if found is not None and found[0] is value:
                namespace[name] = found[1]


def install(app: App | None = None) -> None:
    """Install the sandbox's guards in this process (once; later calls add the guards of
    modules imported since, e.g. ``asyncio``), and re-bind guarded names imported into the
    modules of ``app``'s functions. Does nothing for an app whose functions all have
    ``sandbox=False``."""
    global _installed
    if app is not None and not any(f.sandbox for f in app.functions.values()):
        return
    with _lock:
        if not _installed:
            _install_stdlib()
            sys.addaudithook(_audit)
            _installed = True
        _install_loops()
        if app is not None:
            _rewrite_globals(app)

