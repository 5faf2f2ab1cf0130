"""Read-only views of runs and steps, as shown by TestEngine, Client and the CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from durable_core.base._durations import from_ms
from durable_core.core._journal import JournalFold
from durable_core.core._model import ErrorInfo, JournalEntry
from durable_core.store import RunRecord

__all__ = ["RunView", "StepView", "run_view", "step_views"]


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
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }


@attrs.frozen
class RunView:
    """A run as stored: ``status`` is one of ``queued running sleeping waiting completed
    failed cancelled``; ``output`` the returned value (JSON-decoded); ``error`` ``None`` or an
    object with ``type`` and ``message``; ``steps`` in order."""

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
            "created_at": from_ms(self.created_at).isoformat(),
            "ended_at": None if self.ended_at is None else from_ms(self.ended_at).isoformat(),
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
            output=None if memo.output is None else json.loads(memo.output),
            error=memo.error if memo.done else memo.last_error,
            started_at=memo.started_at,
            ended_at=memo.done_ts if memo.done else None,
        ))
    return tuple(views)


def run_view(run: RunRecord, journal: Sequence[JournalEntry]) -> RunView:
    """Combine a run record and its journal into a view."""
    return RunView(
        id=run.id,
        function_id=run.function_id,
        status=run.status,
        output=None if run.output is None else json.loads(run.output),
        error=run.error,
        steps=step_views(journal),
        created_at=run.created_at,
        ended_at=run.ended_at,
        event_ids=run.event_ids,
        parent_run_id=run.parent_run_id,
    )
