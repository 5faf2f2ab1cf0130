"""A store's wake-ups, shared by every waiter in the process.

A store's ``wait_for_notify(timeout_s) -> bool`` (see :class:`durable_core.Store`) has one
listening state per store object: two callers taking turns on it would each miss the
wake-ups the other consumed. So one thread per store calls it, and counts wake-ups; each
waiter (a worker's listener, a :class:`~durable_core.RunHandle` waiting for a result)
remembers the count it last saw and blocks until it moves. The thread runs while someone
is subscribed and stops (after its current call, at most ``_LISTEN_S``) when nobody is.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["Notifications", "notifications"]

log = logging.getLogger("durable_core.worker")

_LISTEN_S = 1.0
"""How long (seconds) one ``wait_for_notify`` call of the listening thread blocks: it comes
back at least this often, to stop when nobody listens any more."""

_RETRY_MIN = 0.05
_RETRY_MAX = 5.0

_hubs: weakref.WeakKeyDictionary[Any, Notifications] = weakref.WeakKeyDictionary()
_hubs_lock = threading.Lock()


def notifications(store: object) -> Notifications | None:
    """The process's :class:`Notifications` for ``store``, or None if the store offers no
    ``wait_for_notify`` (its waiters poll)."""
    wait = getattr(store, "wait_for_notify", None)
    if not callable(wait):
        return None
    with _hubs_lock:
        try:
            hub = _hubs.get(store)
        except TypeError:  # a store that cannot be weakly referenced: no sharing possible
            return Notifications(lambda: store)
        if hub is None:
            # The hub refers to its store weakly: the registry must not keep it alive.
            hub = _hubs[store] = Notifications(weakref.ref(store))
        return hub


class Notifications:
    """Wake-ups of one store, counted: :meth:`subscribe` gives the count now (listening
    has started by then), :meth:`wait` blocks until the count moves past what the caller
    saw. A count that moves may be spurious (the store's True may be, and an outage that
    ends counts as one: wake-ups may have been missed); waiters then look at the store."""

    def __init__(self, store: Callable[[], object | None]) -> None:
        self._store = store  # the store, or None once it is gone
        self._cond = threading.Condition()
        self._count = 0
        self._users = 0
        self._thread: threading.Thread | None = None
        self._started = False  # the listening thread's first call has returned
        self.waiting = 0
        """How many callers are blocked in :meth:`wait` now."""
        self.calls = 0
        """How many times the listening thread called ``wait_for_notify``."""
        self._callbacks: set[Callable[[], None]] = set()

    @property
    def count(self) -> int:
        """How many wake-ups were heard so far."""
        with self._cond:
            return self._count

    def subscribe(self) -> int:
        """Start listening (or join the listening already going on) and return the count
        of wake-ups so far; every commit that notifies after this returns moves the count.
        Call :meth:`unsubscribe` once done."""
        with self._cond:
            self._users += 1
            if self._thread is None:
                self._started = False
                self._thread = threading.Thread(target=self._listen, daemon=True,
                                                name="durable-notifications")
                self._thread.start()
            self._cond.wait_for(lambda: self._started)
            return self._count

    def unsubscribe(self) -> None:
        """Stop listening for this caller; the thread stops when nobody listens."""
        with self._cond:
            self._users = max(self._users - 1, 0)

    def wait(self, seen: int, timeout: float | None) -> int:
        """Block until the count differs from ``seen`` or ``timeout`` seconds pass (None:
        no limit); returns the count then."""
        with self._cond:
            self.waiting += 1
            self._cond.notify_all()  # for wait_until
            try:
                self._cond.wait_for(lambda: self._count != seen, timeout)
            finally:
                self.waiting -= 1
            return self._count

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until ``predicate()`` (checked whenever the listening thread comes back
        from a call, and when a waiter starts waiting) holds or ``timeout`` seconds pass;
        its last value. For tests and diagnostics."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (from the listening thread) whenever the count moves, until
        :meth:`remove_callback`: how async waiters hear wake-ups without a thread each."""
        with self._cond:
            self._callbacks.add(callback)

    def remove_callback(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback``."""
        with self._cond:
            self._callbacks.discard(callback)

    def _listen(self) -> None:
        first = True
        failing = False
        delay = _RETRY_MIN
        while True:
            with self._cond:
                if self._users == 0:
                    self._thread = None
                    self._cond.notify_all()  # for wait_until
                    return
            started = time.monotonic()
            timeout = 0.0 if first else _LISTEN_S
            store = self._store()
            if store is None:  # nobody can commit to it any more
                self._bump(started=True)
                with self._cond:
                    self._thread = None
                return
            try:
                woken = bool(store.wait_for_notify(timeout))  # type: ignore[attr-defined]
            except Exception as exc:  # wake-ups only save latency
                if not failing:
                    log.warning("listening for notifications failed: %s; retrying with "
                                "backoff until the store answers", exc)
                failing = True
                self._bump(started=True)  # let subscribers go: they poll meanwhile
                first = False
                time.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            finally:
                del store
            if failing:
                log.warning("listening for notifications works again")
                failing, delay, woken = False, _RETRY_MIN, True
            self._bump(started=first, woken=woken)
            if first:
                first = False
            elif not woken and time.monotonic() - started < timeout / 2:
                # Back at once without a wake-up: the store is closed. Do not spin.
                time.sleep(_LISTEN_S / 10)

    def _bump(self, *, started: bool = False, woken: bool = True) -> None:
        with self._cond:
            self.calls += 1
            if started:
                self._started = True
            moved = woken and not started
            if moved:
                self._count += 1
            self._cond.notify_all()
            callbacks = list(self._callbacks) if moved else []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a waiter whose loop has closed
                log.debug("a notification callback failed", exc_info=True)
