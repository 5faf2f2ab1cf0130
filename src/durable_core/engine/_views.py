"""Read-only views of runs and steps, as shown by TestEngine, Client and the CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from durable_core.base._durations import from_ms
from durable_core.base._serde import MAX_JSON_DEPTH
from durable_core.core._journal import JournalFold
from durable_core.core._model import ErrorInfo, JournalEntry
from durable_core.store import RunRecord

__all__ = ["RunView", "StepView", "run_view", "step_views"]

UNDECODABLE_KEY = "$undecodable"
"""The key of the placeholder a view shows instead of a stored output nested too deep for
Python to decode (``{"$undecodable": "<why>"}``): the run and its other steps stay
viewable; the stored text is unchanged."""


def _iso(ms: int | None) -> str | None:
    """A time in the JSON forms: ISO 8601 in UTC (None stays None)."""
    return None if ms is None else from_ms(ms).isoformat()


def _decode(text: str | None, what: str) -> Any:
    """A stored JSON value, or the placeholder if it is nested too deep to decode."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except RecursionError:
        return {UNDECODABLE_KEY: (
            f"{what} is JSON nested too deep for Python to decode ({len(text)} characters; "
            f"new values are limited to {MAX_JSON_DEPTH} levels); the stored text is unchanged"
        )}


@attrs.frozen
class StepView:
    """One step of a run, rebuilt from its journal.

    ``status`` is ``"completed"``, ``"failed"`` (for good), ``"retrying"`` (an attempt failed,
    another is scheduled), ``"sleeping"`` or ``"waiting"`` (a wait or invoke in progress).
    ``attempts`` counts the attempts of a ``run`` step that have ended.
    """

    id: str
    kind: str
    status: str
    attempts: int
    output: Any = None
    error: ErrorInfo | None = None
    started_at: int | None = None
    ended_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "attempts": self.attempts,
            "output": self.output,
            "error": None if self.error is None else self.error.to_dict(),
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
        }


@attrs.frozen
class RunView:
    """A run as stored: ``status`` is one of ``queued running sleeping waiting completed
    failed cancelled``; ``output`` the returned value (JSON-decoded; an output stored nested
    too deep to decode shows as ``{UNDECODABLE_KEY: "<why>"}``; a journal that cannot be
    folded for that reason shows as one step with ``status="undecodable"`` and an error);
    ``error`` ``None`` or an object with ``type`` and ``message``; ``steps`` in order."""

    id: str
    function_id: str
    status: str
    output: Any
    error: ErrorInfo | None
    steps: tuple[StepView, ...]
    created_at: int
    ended_at: int | None
    event_ids: tuple[str, ...]
    parent_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "id": self.id,
            "function_id": self.function_id,
            "status": self.status,
            "output": self.output,
            "error": None if self.error is None else self.error.to_dict(),
            "created_at": _iso(self.created_at),
            "ended_at": _iso(self.ended_at),
            "event_ids": list(self.event_ids),
            "parent_run_id": self.parent_run_id,
            "steps": [s.to_dict() for s in self.steps],
        }


def step_views(entries: Sequence[JournalEntry]) -> tuple[StepView, ...]:
    """The steps recorded in a journal, in position order (folded by :class:`JournalFold`)."""
    views = []
    for pos in sorted((fold := JournalFold(entries)).steps):
        memo = fold.steps[pos]
        views.append(StepView(
            id=memo.step_id,
            kind=memo.kind,
            status=memo.status,
            attempts=memo.attempts,
            output=_decode(memo.output, f"the output of step {memo.step_id!r}"),
            error=memo.error if memo.done else memo.last_error,
            started_at=memo.started_at,
            ended_at=memo.done_ts if memo.done else None,
        ))
    return tuple(views)


def _steps_or_placeholder(run_id: str, journal: Sequence[JournalEntry]) -> tuple[StepView, ...]:
    try:
        return step_views(journal)
    except RecursionError:
        return (StepView(
            id=UNDECODABLE_KEY, kind="", status="undecodable", attempts=0,
            error=ErrorInfo("SerializationError", (
                f"the journal of run {run_id!r} holds JSON nested too deep for Python to "
                f"decode (new values are limited to {MAX_JSON_DEPTH} levels); its steps "
                "cannot be shown; the stored entries are unchanged")),
        ),)


def run_view(run: RunRecord, journal: Sequence[JournalEntry]) -> RunView:
    """Combine a run record and its journal into a view."""
    return RunView(
        id=run.id,
        function_id=run.function_id,
        status=run.status,
        output=_decode(run.output, f"the output of run {run.id!r}"),
        error=run.error,
        steps=_steps_or_placeholder(run.id, journal),
        created_at=run.created_at,
        ended_at=run.ended_at,
        event_ids=run.event_ids,
        parent_run_id=run.parent_run_id,
    )
