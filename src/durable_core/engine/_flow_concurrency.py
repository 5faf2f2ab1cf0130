"""Engine glue for ``concurrency`` and ``priority`` (issue 13): new runs get their slots and
priority from their function and triggering event; claims of functions with ``concurrency``
go through :meth:`~durable_core.Store.claim_limited_runs`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from durable_core.core._flow_concurrency import priority_ms, slot_keys
from durable_core.core._function import App
from durable_core.store import Claim, NewRun, Store

__all__ = ["check_store", "claim_split", "flow_runs", "limited_function_ids", "slots_over_limit"]


def limited_function_ids(app: App) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The app's function ids without ``concurrency`` and those with it."""
    plain = tuple(f.id for f in app.functions.values() if not f.flow.concurrency)
    limited = tuple(f.id for f in app.functions.values() if f.flow.concurrency)
    return plain, limited


def flow_runs(app: App, runs: Sequence[NewRun]) -> tuple[NewRun, ...]:
    """``runs`` with the slots and priority of those whose function has ``concurrency`` or
    ``priority`` (evaluated on the run's first triggering event); others as they are."""
    out: list[NewRun] = []
    functions = app._functions  # read only (app.functions would copy it on each call)
    for run in runs:
        func = functions.get(run.function_id)
        flow = None if func is None else func.flow
        if flow is None or not (flow.concurrency or flow.priority is not None):
            out.append(run)
            continue
        event: dict[str, Any] | None = None
        if run.events:
            try:
                raw = json.loads(run.events[0])
                event = raw if isinstance(raw, dict) else None
            except ValueError:
                event = None
        out.append(attrs.evolve(
            run, slots=slot_keys(app.id, run.function_id, flow, event, run.id),
            priority_ms=priority_ms(run.function_id, flow, event, run.id)))
    return tuple(out)


def claim_split(
    store: Store, owner: str, now: int, lease_ms: int, limit: int,
    plain: Sequence[str], limited: Sequence[str],
) -> list[Claim]:
    """Claim up to ``limit`` runs: of the ``plain`` functions as ever, then of the
    ``limited`` ones (with ``concurrency``) as their slots allow."""
    claims = store.claim_runs(owner, now, lease_ms, limit, plain) if plain else []
    if limited and len(claims) < limit:
        claims += store.claim_limited_runs(owner, now, lease_ms, limit - len(claims), limited)
    return claims


def slots_over_limit(app: App, store: Store, now: int) -> dict[str, tuple[int, int]]:
    """The slot keys held (:meth:`~durable_core.Store.held_slots` at ``now``) by more runs
    than any of the app's functions naming them allows: key -> (held, limit). For checks
    (the simulator): ``{}`` when every limit holds. The limit of a key is the highest among
    the runs that have not ended and carry it (their own function's limit)."""
    held = store.held_slots(now)
    if not held:
        return {}
    limits: dict[str, int] = {}
    for func in app.functions.values():
        if not func.flow.concurrency:
            continue
        for run in store.list_runs(function_id=func.id, limit=1_000_000):
            if run.status in ("completed", "failed", "cancelled"):
                continue
            try:
                raw = json.loads(run.events[0]) if run.events else None
            except ValueError:
                raw = None
            event = raw if isinstance(raw, dict) else None
            for key, limit in slot_keys(app.id, func.id, func.flow, event, run.id):
                limits[key] = max(limits.get(key, 0), limit)
    return {k: (n, limits.get(k, 0)) for k, n in held.items() if n > limits.get(k, 0)}


def check_store(app: App, store: Store) -> None:
    """Raise a ValidationError at startup if ``app`` uses ``concurrency`` and ``store``
    (a custom store written before flow control) has no ``claim_limited_runs`` or
    ``held_slots``, instead of failing every poll."""
    from durable_core.base._errors import ValidationError

    if not any(f.flow.concurrency for f in app.functions.values()):
        return
    missing = [m for m in ("claim_limited_runs", "held_slots")
               if not callable(getattr(store, m, None))]
    if missing:
        raise ValidationError(
            f"app {app.id!r} has functions with concurrency, but the store "
            f"({type(store).__name__}) has no {' or '.join(missing)}: implement them "
            "(docs/stores.md, 'Concurrency and priority') or use a store that has them",
            field="store")
