"""check_deploy: replay a store's live runs against new code before it ships."""

from __future__ import annotations

from typing import Any

import attrs

from durable_core.base._errors import DeterminismError
from durable_core.core._function import App
from durable_core.core._model import TERMINAL_STATUSES, RunStatus
from durable_core.store import Store
from durable_core.testing._engine import export_run, replay

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
    """``DeterminismError`` or the type of another error the replay raised."""
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
                diff = ("" if x.recorded is None and x.requested is None
                        else f": recorded {x.recorded}, asked for {x.requested}")
                lines.append(f"  {x.run_id} ({x.status}){where}{diff}")
                if not diff:
                    lines.append(f"    {x.error}: {x.message}")
        verdict = "ok" if self.ok else f"{len(self.failures)} would fail"
        lines.append(f"{self.checked} runs checked, {verdict}")
        return "\n".join(lines)


def check_deploy(
    app: App, store: Store, *, include_ended_since_ms: int | None = None
) -> DeployReport:
    """Replay the journal of every run of ``store`` that has not ended (and, with
    ``include_ended_since_ms``, every run that ended at or after that instant, in ms since
    the epoch) against the code of ``app``, without running step bodies or writing to the
    store. Call it before a deploy: a failure is a run the new code would break::

        report = check_deploy(new_app, store)
        assert report.ok, report.format()
    """
    runs = [r for s in _LIVE for r in store.list_runs(status=s, limit=_ALL)]
    if include_ended_since_ms is not None:
        runs += [r for s in _ENDED for r in store.list_runs(status=s, limit=_ALL)
                 if r.ended_at is not None and r.ended_at >= include_ended_since_ms]
    known = app.functions
    checked: dict[str, int] = {}
    failed: dict[str, list[DeployFailure]] = {}
    for run in sorted(runs, key=lambda r: (r.function_id, r.created_at, r.id)):
        checked[run.function_id] = checked.get(run.function_id, 0) + 1
        bad = failed.setdefault(run.function_id, [])
        if run.function_id not in known:
            bad.append(DeployFailure(run.id, run.status, "UnknownFunctionError",
                                     f"the app has no function {run.function_id!r}"))
            continue
        try:
            replay(app, export_run(store, run.id))
        except DeterminismError as exc:
            bad.append(DeployFailure(run.id, run.status, "DeterminismError", str(exc),
                                     exc.position, exc.recorded, exc.requested))
        except Exception as exc:  # the new code may raise anything
            bad.append(DeployFailure(run.id, run.status, type(exc).__name__, str(exc)))
    return DeployReport(tuple(
        FunctionReport(fid, checked[fid], tuple(failed[fid]), missing=fid not in known)
        for fid in sorted(checked)
    ))
