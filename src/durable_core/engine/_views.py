"""Read-only views of runs and steps, as shown by TestEngine, Client and the CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from durable_core.base._durations import from_ms
from durable_core.base._serde import MAX_JSON_DEPTH
from durable_core.core._journal import AttemptRecord, JournalFold, StepMemo, StepStatus
from durable_core.core._model import (
    TERMINAL_STATUSES,
    ErrorInfo,
    JournalEntry,
    JournalOp,
    RunStatus,
    StepKind,
)
from durable_core.store import RunRecord

__all__ = ["AttemptView", "RunView", "StepView", "run_view", "step_views"]

UNDECODABLE_KEY = "$undecodable"
"""The key of the placeholder a view shows instead of a stored output nested too deep for
Python to decode (``{"$undecodable": "<why>"}``): the run and its other steps stay
viewable; the stored text is unchanged."""


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


def _iso(ms: int | None) -> str | None:
    """A time (ms since the epoch) as JSON shows every time: ISO 8601, UTC."""
    return None if ms is None else from_ms(ms).isoformat()


def _error_json(error: ErrorInfo | None) -> dict[str, Any] | None:
    """An error in the views' JSON: ``type``, ``message`` and ``traceback`` (None when the
    error was never raised, e.g. a cancel, or was recorded before tracebacks were kept)."""
    if error is None:
        return None
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


@attrs.frozen
class AttemptView:
    """One ended attempt of a ``run`` step, or of the run's orchestration code.

    ``attempt`` is 0-based; ``step_id`` the step the attempt ran (a later attempt may ask
    for another step at the same place: ``if ctx.attempt > 2: ...``; empty for the
    orchestration code); ``started_at`` and ``ended_at`` are ms since the epoch
    (``started_at`` None when the journal predates it); ``error`` None for the attempt that
    succeeded; ``retry_at`` when the next attempt may start, for a failed attempt that is
    retried.

    .. versionadded:: 0.2
    """

    attempt: int
    step_id: str
    started_at: int | None
    ended_at: int
    error: ErrorInfo | None = None
    retry_at: int | None = None

    @property
    def duration_ms(self) -> int | None:
        """How long the attempt took, when its start is known."""
        return None if self.started_at is None else self.ended_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        """JSON form (times in ISO 8601, UTC)."""
        return {
            "attempt": self.attempt,
            "step_id": self.step_id,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "duration_ms": self.duration_ms,
            "error": _error_json(self.error),
            "retry_at": _iso(self.retry_at),
        }


@attrs.frozen
class StepView:
    """One step of a run, rebuilt from its journal.

    ``status`` is ``"completed"``, ``"failed"`` (for good), ``"retrying"`` (an attempt failed,
    another is scheduled: ``retry_at`` says when), ``"running"``, ``"sleeping"`` or
    ``"waiting"`` (a wait or invoke in progress), or ``"abandoned"``: the run ended (failed
    or was cancelled) before the step finished. ``attempts`` counts the attempts of a
    ``run`` step that have ended, and ``attempt_log`` lists them, each with its error.

    Times are ms since the epoch: ``started_at`` is when the step started (a ``run``
    step's first attempt's body; a sleep's, wait's or invoke's scheduling), ``ended_at``
    when its result was recorded (or when the run ended, for an abandoned step). A sleep,
    wait or invoke says ``until`` when it waits, and a wait or invoke ``waiting_for`` what:
    ``{"event": name, "if": expression}`` or ``{"function": id, "run_id": child}``.
    """

    id: str
    kind: str
    status: str
    attempts: int
    output: Any = None
    error: ErrorInfo | None = None
    started_at: int | None = None
    ended_at: int | None = None
    attempt_log: tuple[AttemptView, ...] = ()
    retry_at: int | None = None
    until: int | None = None
    waiting_for: dict[str, Any] | None = None

    @property
    def duration_ms(self) -> int | None:
        """From ``started_at`` to ``ended_at``, once the step ended."""
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        """JSON form (times in ISO 8601, UTC)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "attempts": self.attempts,
            "output": self.output,
            "error": _error_json(self.error),
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "duration_ms": self.duration_ms,
            "retry_at": _iso(self.retry_at),
            "until": _iso(self.until),
            "waiting_for": self.waiting_for,
            "attempt_log": [a.to_dict() for a in self.attempt_log],
        }


@attrs.frozen
class RunView:
    """A run as stored: ``status`` is one of ``queued running sleeping waiting completed
    failed cancelled``, or ``retrying`` (stored as ``sleeping``): the orchestration code
    raised and is re-entered at ``next_attempt_at``, ``error`` saying what it raised.
    ``output`` is the returned value (JSON-decoded; an output stored nested too deep to
    decode shows as ``{UNDECODABLE_KEY: "<why>"}``; a journal that cannot be folded for that
    reason shows as one step with ``status="undecodable"`` and an error); ``error`` ``None``
    or an object with ``type``, ``message`` and ``traceback``; ``steps`` in order;
    ``attempt_log`` the orchestration code's failed attempts (raised outside any step)."""

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
    attempt_log: tuple[AttemptView, ...] = ()
    next_attempt_at: int | None = None
    rerun_of: str | None = None
    """The run this one reruns (``Client.rerun``), or None."""

    @property
    def duration_ms(self) -> int | None:
        """From creation to the end, once the run ended."""
        return None if self.ended_at is None else self.ended_at - self.created_at

    def to_dict(self) -> dict[str, Any]:
        """JSON form (times in ISO 8601, UTC)."""
        return {
            "id": self.id,
            "function_id": self.function_id,
            "status": self.status,
            "output": self.output,
            "error": _error_json(self.error),
            "created_at": _iso(self.created_at),
            "ended_at": _iso(self.ended_at),
            "duration_ms": self.duration_ms,
            "next_attempt_at": _iso(self.next_attempt_at),
            "event_ids": list(self.event_ids),
            "parent_run_id": self.parent_run_id,
            "attempt_log": [a.to_dict() for a in self.attempt_log],
            "rerun_of": self.rerun_of,
            "steps": [s.to_dict() for s in self.steps],
        }


def _attempt(rec: AttemptRecord) -> AttemptView:
    return AttemptView(rec.attempt, rec.step_id, rec.started_at, rec.ended_at, rec.error,
                       rec.retry_at)


def _waiting_for(kind: str, sched: dict[str, Any] | None) -> dict[str, Any] | None:
    if sched is None:
        return None
    if kind == StepKind.WAIT_FOR_EVENT:
        return {"event": sched.get("event"), "if": sched.get("if")}
    if kind == StepKind.INVOKE:
        return {"function": sched.get("function"), "run_id": sched.get("child")}
    return None


def _step_view(memo: StepMemo, ended_at: int | None) -> StepView:
    log = [_attempt(r) for r in memo.log or ()]
    if memo.done and memo.kind == StepKind.RUN:
        # The attempt that ended the step: its start is journalled with the memo (None in
        # journals written before that), its error the memo's, if it failed.
        log.append(AttemptView(memo.failures, memo.step_id, memo.body_started, memo.done_ts,
                               memo.error))
    sched = memo.sched
    until = None if sched is None or "until" not in sched else int(sched["until"])
    status: str = memo.status
    step_ended = memo.done_ts if memo.done else None
    if not memo.done and ended_at is not None:
        status = StepStatus.ABANDONED
        step_ended = ended_at
    return StepView(
        id=memo.step_id,
        kind=memo.kind,
        status=status,
        attempts=memo.attempts,
        output=_decode(memo.output, f"the output of step {memo.step_id!r}"),
        error=memo.error if memo.done else memo.last_error,
        started_at=memo.started_at,
        ended_at=step_ended,
        attempt_log=tuple(log),
        retry_at=memo.retry_at if status == StepStatus.RETRYING else None,
        until=until,
        waiting_for=_waiting_for(memo.kind, sched),
    )


def step_views(
    entries: Sequence[JournalEntry], *, ended_at: int | None = None
) -> tuple[StepView, ...]:
    """The steps recorded in a journal, in position order (folded by :class:`JournalFold`).
    ``ended_at``: when the run ended, if it did (its unfinished steps are abandoned)."""
    fold = JournalFold(entries)
    return tuple(_step_view(fold.steps[pos], ended_at) for pos in sorted(fold.steps))


def _steps_or_placeholder(
    run_id: str, journal: Sequence[JournalEntry], ended_at: int | None
) -> tuple[StepView, ...]:
    try:
        return step_views(journal, ended_at=ended_at)
    except RecursionError:
        return (StepView(
            id=UNDECODABLE_KEY, kind="", status="undecodable", attempts=0,
            error=ErrorInfo("SerializationError", (
                f"the journal of run {run_id!r} holds JSON nested too deep for Python to "
                f"decode (new values are limited to {MAX_JSON_DEPTH} levels); its steps "
                "cannot be shown; the stored entries are unchanged")),
        ),)


def _run_level(journal: Sequence[JournalEntry]) -> tuple[list[AttemptRecord], ErrorInfo | None]:
    """The orchestration code's failed attempts, and the error the run ended with as the
    journal holds it (with its traceback, which a run record may not keep)."""
    log: list[AttemptRecord] = []
    ended: ErrorInfo | None = None
    for e in journal:
        if e.op == JournalOp.RUN_ATTEMPT_FAILED:
            data = json.loads(e.data)
            log.append(AttemptRecord(int(data.get("attempt", len(log))), "", None, e.ts,
                                     ErrorInfo.from_dict(data["error"]),
                                     int(data["retry_at"])))
        elif e.op == JournalOp.RUN_ENDED:
            data = json.loads(e.data)
            if isinstance(data.get("error"), dict):
                ended = ErrorInfo.from_dict(data["error"])
    return log, ended


def run_view(run: RunRecord, journal: Sequence[JournalEntry]) -> RunView:
    """Combine a run record and its journal into a view."""
    ended = run.status in TERMINAL_STATUSES
    log, ended_error = _run_level(journal)
    status: str = run.status
    error = run.error
    if error is not None and error.traceback is None and ended_error == error:
        error = ended_error  # the journal's copy has the traceback
    next_attempt_at = None
    if (not ended and run.status == RunStatus.SLEEPING and journal
            and journal[-1].op == JournalOp.RUN_ATTEMPT_FAILED and log):
        # The code raised and nothing happened since: it is re-entered at retry_at.
        status = "retrying"
        error = log[-1].error
        next_attempt_at = log[-1].retry_at
    return RunView(
        id=run.id,
        function_id=run.function_id,
        status=status,
        output=_decode(run.output, f"the output of run {run.id!r}"),
        error=error,
        steps=_steps_or_placeholder(run.id, journal,
                                    (run.ended_at or run.updated_at) if ended else None),
        created_at=run.created_at,
        ended_at=run.ended_at,
        event_ids=run.event_ids,
        parent_run_id=run.parent_run_id,
        attempt_log=tuple(_attempt(r) for r in log),
        next_attempt_at=next_attempt_at,
        rerun_of=run.rerun_of,
    )
