"""check_deploy: replay a store's live runs against new code before it ships, in one
process or several."""

from __future__ import annotations

import atexit
import concurrent.futures
import json
import multiprocessing
from typing import Any, cast

import attrs

from durable_core.base._errors import DeterminismError, DurableError, ValidationError
from durable_core.base._events import Event
from durable_core.core._function import App
from durable_core.core._model import TERMINAL_STATUSES, RunStatus
from durable_core.drivers._loading import import_stores, load_app
from durable_core.store import Store
from durable_core.testing._engine import _CodeRaised, replay_run

__all__ = ["DeployFailure", "DeployReport", "FunctionReport", "check_deploy"]

_LIVE = [s for s in RunStatus if s not in TERMINAL_STATUSES]
_ENDED = sorted(TERMINAL_STATUSES)
_ALL = 2**31 - 1


@attrs.frozen
class DeployFailure:
    """A run the new code would fail: where its journal and the code first differ."""

    run_id: str
    status: str
    error: str
    """``DeterminismError`` (``recorded`` and ``requested`` say how the code differs), or the
    type of the exception the code raised on the recorded journal where the recorded run
    did not (``requested`` is ``raise <type>``, ``recorded`` the step the journal holds at
    ``position``), or ``UnknownFunctionError``."""
    message: str
    position: int | None = None
    recorded: str | None = None
    requested: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict."""
        return attrs.asdict(self)


@attrs.frozen
class FunctionReport:
    """What replaying one function's runs found."""

    function_id: str
    checked: int
    failures: tuple[DeployFailure, ...]
    missing: bool = False
    """The app no longer defines this function: every one of its runs is a failure."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict."""
        return {"function_id": self.function_id, "checked": self.checked,
                "failed": len(self.failures), "missing": self.missing,
                "failures": [f.to_dict() for f in self.failures]}


@attrs.frozen
class DeployReport:
    """The result of :func:`check_deploy`, one :class:`FunctionReport` per function id."""

    functions: tuple[FunctionReport, ...]

    @property
    def checked(self) -> int:
        """Runs replayed."""
        return sum(f.checked for f in self.functions)

    @property
    def failures(self) -> list[DeployFailure]:
        """Every run the new code would fail, by function id."""
        return [x for f in self.functions for x in f.failures]

    @property
    def ok(self) -> bool:
        """No run would fail."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict (what ``durable replay --json`` prints)."""
        return {"ok": self.ok, "checked": self.checked, "failed": len(self.failures),
                "functions": [f.to_dict() for f in self.functions]}

    def format(self) -> str:
        """A per-function summary and each failing run's first differing step, as text."""
        lines = []
        for f in self.functions:
            gone = "  (function no longer in the app)" if f.missing else ""
            lines.append(f"{f.function_id}: {f.checked} checked, {len(f.failures)} would fail"
                         f"{gone}")
            for x in f.failures:
                where = "" if x.position is None else f" at step {x.position}"
                if x.error == "DeterminismError" and x.requested is not None:
                    lines.append(f"  {x.run_id} ({x.status}){where}: recorded {x.recorded}, "
                                 f"asked for {x.requested}")
                elif x.requested is not None:  # the code raised: show what it raised
                    lines.append(f"  {x.run_id} ({x.status}){where}: the code raised "
                                 f"{x.error}: {x.message}")
                else:
                    lines.append(f"  {x.run_id} ({x.status}){where}")
                    lines.append(f"    {x.error}: {x.message}")
        verdict = "ok" if self.ok else f"{len(self.failures)} would fail"
        lines.append(f"{self.checked} runs checked, {verdict}")
        return "\n".join(lines)


def check_deploy(
    app: App | str,
    store: Store | str,
    *,
    include_ended_since_ms: int | None = None,
    jobs: int = 1,
) -> DeployReport:
    """Replay the journal of every run of ``store`` that has not ended (and, with
    ``include_ended_since_ms``, every run that ended at or after that instant, in ms since
    the epoch) against the code of ``app``, without running step bodies or writing to the
    store. Call it before a deploy: a failure is a run the new code would break::

        report = check_deploy(new_app, store)
        assert report.ok, report.format()

    ``app`` is an :class:`App` or its ``package.module:app`` path, ``store`` a store or its
    URL. With ``jobs`` > 1 the runs are replayed by that many processes (started with
    ``spawn``): pass both as strings then; each process imports the app by its path, opens
    the store by its URL, reads it only (``get_run``, ``load_journal``) and replays a share
    of the run ids. Nothing is pickled but run ids and the findings.
    """
    if type(jobs) is not int or jobs < 1:
        raise ValidationError(f"check_deploy(jobs=...): jobs must be an int >= 1, got {jobs!r}",
                              field="jobs")
    if jobs > 1:
        _check_shareable(app, store)
    the_app = _load(app) if isinstance(app, str) else app
    the_store = import_stores().open(store) if isinstance(store, str) else store
    try:
        runs = [(r.function_id, r.created_at, r.id, str(r.status)) for s in _LIVE
                for r in the_store.list_runs(status=s, limit=_ALL)]
        if include_ended_since_ms is not None:
            runs += [(r.function_id, r.created_at, r.id, str(r.status)) for s in _ENDED
                     for r in the_store.list_runs(status=s, limit=_ALL)
                     if r.ended_at is not None and r.ended_at >= include_ended_since_ms]
        runs.sort()
        known = the_app.functions
        ids = [run_id for fid, _, run_id, _ in runs if fid in known]
        processes = min(jobs, -(-len(ids) // _MIN_SHARE))
        if processes > 1:
            assert isinstance(app, str) and isinstance(store, str)
            found = _replay_in_processes(app, store, ids, processes)
        else:
            found = {run_id: _check_run(the_app, the_store, run_id) for run_id in ids}
    finally:
        if isinstance(store, str):
            the_store.close()
    checked: dict[str, int] = {}
    failed: dict[str, list[DeployFailure]] = {}
    for fid, _, run_id, status in runs:
        checked[fid] = checked.get(fid, 0) + 1
        bad = failed.setdefault(fid, [])
        if fid not in known:
            bad.append(DeployFailure(run_id, status, "UnknownFunctionError",
                                     f"the app has no function {fid!r}"))
        elif (failure := found[run_id]) is not None:
            bad.append(failure)
    return DeployReport(tuple(
        FunctionReport(fid, checked[fid], tuple(failed[fid]), missing=fid not in known)
        for fid in sorted(checked)
    ))


_MIN_SHARE = 25
"""Fewer runs per process than this are replayed in fewer processes: starting one (and
importing the app in it) costs more than replaying a few dozen journals."""


def _load(spec: str) -> App:
    try:
        return load_app(spec)
    except SystemExit as exc:  # load_app speaks to the command line
        raise ValidationError(str(exc.code).removeprefix("durable: "), field="app") from None


def _check_shareable(app: App | str, store: Store | str) -> None:
    if not isinstance(app, str):
        raise ValidationError(
            "check_deploy(app, jobs=N): with jobs > 1 pass the app as its "
            "'package.module:app' path, which each process imports (code is not pickled)",
            field="app",
        )
    if not isinstance(store, str) or not import_stores().shareable(store):
        raise ValidationError(
            "check_deploy(store, jobs=N): with jobs > 1 pass the store as the URL of a "
            "store several processes can open (sqlite:///file.db, postgresql://...), "
            f"not {store if isinstance(store, str) else type(store).__name__!r}",
            field="store",
        )


def _check_run(app: App, store: Store, run_id: str) -> DeployFailure | None:
    """Replay one run against ``app``: None if the code follows it, else where it does not."""
    run = store.get_run(run_id)
    status = str(run.status)
    try:
        replay_run(
            app, run.id, run.function_id, status,
            [Event.from_dict(json.loads(e)) for e in run.events], run.created_at,
            store.load_journal(run_id), parent_run_id=run.parent_run_id,
            output=None if run.output is None else json.loads(run.output),
        )
    except _CodeRaised as exc:
        return DeployFailure(run_id, status, exc.error.type, exc.error.message,
                             exc.position, exc.recorded, exc.requested)
    except DeterminismError as exc:
        return DeployFailure(run_id, status, "DeterminismError", str(exc),
                             exc.position, exc.recorded, exc.requested)
    except Exception as exc:  # the new code (or a journal it cannot read) may raise anything
        return DeployFailure(run_id, status, type(exc).__name__, str(exc))
    return None


def _replay_in_processes(
    app: str, store: str, run_ids: list[str], processes: int
) -> dict[str, DeployFailure | None]:
    """Replay ``run_ids`` in ``processes`` spawned processes, each given a few shares in
    turn (so one slow share does not leave the others idle)."""
    size = max(1, -(-len(run_ids) // (processes * 4)))
    shares = [run_ids[i:i + size] for i in range(0, len(run_ids), size)]
    found: dict[str, DeployFailure | None] = {}
    context = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(
            processes, mp_context=context, initializer=_open_worker, initargs=(app, store)
        ) as pool:
            for share in pool.map(_replay_share, shares):
                found.update(share)
    except concurrent.futures.process.BrokenProcessPool as exc:
        raise DurableError(
            f"check_deploy: a replay process stopped before it finished ({exc}); run with "
            "jobs=1 (durable replay --jobs 1) to see the error in this process"
        ) from exc
    return found


class _ReadOnly:
    """The reads a deploy check needs of a store, and nothing that writes."""

    __slots__ = ("get_run", "load_journal")

    def __init__(self, store: Store) -> None:
        self.get_run = store.get_run
        self.load_journal = store.load_journal


_worker: tuple[App, Store] | None = None


def _open_worker(app: str, store: str) -> None:
    """In a worker process: import the app by its path and open the store by its URL."""
    global _worker
    opened = import_stores().open(store)
    atexit.register(opened.close)
    _worker = (load_app(app), cast(Store, _ReadOnly(opened)))


def _replay_share(run_ids: list[str]) -> list[tuple[str, DeployFailure | None]]:
    """In a worker process: replay a share of the runs."""
    assert _worker is not None
    app, store = _worker
    return [(run_id, _check_run(app, store, run_id)) for run_id in run_ids]
