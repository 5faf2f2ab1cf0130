"""The journal, folded in one place: what a run's entries say about each step and the run.

A journal is the ordered list of :class:`~durable_core.core._model.JournalEntry` a run has
written. Everything that reads one (the run machine when it is rebuilt, the run and step
views, ``replay()``, the simulator's checks) folds it with :class:`JournalFold`, and
everything that writes one builds ``data`` with the ``*_data`` functions below, so each op's
layout (documented on :class:`~durable_core.core._model.JournalOp`) is written down once.

``data`` is JSON built with :mod:`json`, with one exception: an *output* (a step's value,
the run's) is already JSON text, made once by the serde when the code returned it, and is
placed as the value of ``output`` as it is; parsing and re-encoding it would cost more than
the rest of a step's bookkeeping. That happens in two places: ``_with_output`` below (the
``run_ended`` entry, a child's answer to its parent) and, on the per-step hot path, the memo
written by ``StepMachine._do_journal_completed`` (:mod:`durable_core.core._steps._base`).
A Hypothesis test checks that a memo parses back to the value.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from typing import Any

from durable_core.core._model import (
    ErrorInfo,
    JournalEntry,
    JournalOp,
    RunStatus,
    StepKind,
)

__all__ = [
    "MAX_RUN_STATE_BYTES",
    "MAX_STEP_OUTPUT_BYTES",
    "AttemptRecord",
    "JournalFold",
    "StepMemo",
    "StepStatus",
    "attempt_failed_data",
    "entry_from_dict",
    "entry_to_dict",
    "error_data",
    "output_payload",
    "patched_data",
    "run_ended_data",
    "scheduled_data",
]

MAX_STEP_OUTPUT_BYTES = 4 * 1024 * 1024
"""The largest JSON a step (or the run) may return."""
MAX_RUN_STATE_BYTES = 32 * 1024 * 1024
"""The largest recorded state of one run: its triggering events' data, its steps' outputs
and its own output, in bytes of JSON."""

_COMPLETED = JournalOp.COMPLETED
_SCHEDULED = JournalOp.SCHEDULED
_ATTEMPT_FAILED = JournalOp.ATTEMPT_FAILED
_RUN_ATTEMPT_FAILED = JournalOp.RUN_ATTEMPT_FAILED
_RUN_ENDED = JournalOp.RUN_ENDED
_PATCHED = JournalOp.PATCHED
_STARTED = JournalOp.STARTED

_compact = json.JSONEncoder(separators=(",", ":")).encode
_compact_unicode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def utf8_len(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (cheap for ASCII, the common case)."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


# --------------------------------------------------------------------------- building data


def error_data(error: ErrorInfo, started_at: int | None = None) -> str:
    """``data`` of a ``completed`` memo of a step that failed for good (``started_at``: when
    the body of its last attempt started, for a ``run`` step)."""
    if started_at is None:
        return _compact({"error": error.to_dict()})
    return _compact({"error": error.to_dict(), "started_at": started_at})


def scheduled_data(sched: Mapping[str, Any]) -> str:
    """``data`` of a ``scheduled`` entry (``until``, and the kind's own keys)."""
    return _compact(sched)


def attempt_failed_data(
    attempt: int, error: ErrorInfo, retry_at: int, started_at: int | None = None
) -> str:
    """``data`` of an ``attempt_failed`` entry (``started_at``: when the attempt's body was
    started) or a ``run_attempt_failed`` one."""
    data: dict[str, Any] = {"attempt": attempt, "error": error.to_dict(), "retry_at": retry_at}
    if started_at is not None:
        data["started_at"] = started_at
    return _compact(data)


def run_ended_data(
    status: RunStatus, *, output: str | None = None, error: ErrorInfo | None = None
) -> str:
    """``data`` of the ``run_ended`` entry: the status, with ``output`` (JSON text) or
    ``error``."""
    if error is not None:
        return _compact({"status": status, "error": error.to_dict()})
    assert output is not None
    return _with_output({"status": status}, output)


def patched_data(at: int, deprecated: bool) -> str:
    """``data`` of a ``patched`` marker: the step position it sits before, and whether
    ``deprecate_patch`` recorded it."""
    return _compact({"at": at, "deprecated": deprecated})


def _with_output(head: dict[str, Any], output: str) -> str:
    """``head`` as JSON, with ``"output"`` added: the JSON text ``output`` as it is (the
    serde made it; parsing and re-encoding a large output would only cost time)."""
    prefix = _compact_unicode(head)[:-1] + "," if head else "{"
    return prefix + '"output":' + output + "}"


def output_payload(output: str) -> str:
    """``{"output": ...}`` for the JSON text ``output``: an invoked child's answer to its
    parent (a signal payload, parsed by the parent's ``invoke`` step)."""
    return _with_output({}, output)


def entry_to_dict(e: JournalEntry) -> dict[str, Any]:
    """An entry as a JSON-compatible dict (``data`` parsed), as ``durable export`` writes."""
    return {"seq": e.seq, "op": e.op, "position": e.position, "step_id": e.step_id,
            "kind": e.kind, "ts": e.ts, "data": json.loads(e.data)}


def entry_from_dict(raw: Mapping[str, Any]) -> JournalEntry:
    """The inverse of :func:`entry_to_dict`."""
    return JournalEntry(
        int(raw["seq"]), JournalOp(raw["op"]), int(raw["position"]), str(raw["step_id"]),
        str(raw["kind"]), int(raw["ts"]),
        json.dumps(raw["data"], separators=(",", ":"), ensure_ascii=False),
    )


# --------------------------------------------------------------------------- folding


class StepStatus(enum.StrEnum):
    """A step's status as views show it (str-valued, like the run statuses)."""

    RUNNING = "running"
    """Its body runs (or is about to)."""
    RETRYING = "retrying"
    """An attempt failed; another is scheduled."""
    SLEEPING = "sleeping"
    """A sleep in progress."""
    WAITING = "waiting"
    """A wait or invoke in progress."""
    COMPLETED = "completed"
    """Its memo is a value."""
    FAILED = "failed"
    """It failed for good: its memo is an error."""
    ABANDONED = "abandoned"
    """The run ended (failed or was cancelled) before the step finished (shown by views of
    ended runs only: the journal itself never says so)."""


class AttemptRecord:
    """One ended attempt of a ``run`` step (or of the run's orchestration code): its number
    (0-based), the step id it ran (a later attempt may ask for another step at the same
    position), when it started (None when the journal does not say: written before
    durable-core recorded it) and ended, its error (None: it succeeded) and, for a failed
    attempt that is retried, when the next one may start."""

    __slots__ = ("attempt", "ended_at", "error", "retry_at", "started_at", "step_id")

    def __init__(self, attempt: int, step_id: str, started_at: int | None, ended_at: int,
                 error: ErrorInfo | None, retry_at: int | None) -> None:
        self.attempt = attempt
        self.step_id = step_id
        self.started_at = started_at
        self.ended_at = ended_at
        self.error = error
        self.retry_at = retry_at


class StepMemo:
    """What the journal says about the step at one position.

    ``done`` once a ``completed`` entry was folded: then ``output`` (JSON text) or ``error``
    is its memo and ``done_ts`` when it was written. ``failures`` counts failed attempts of a
    ``run`` step (the next attempt's number), ``retry_at`` when it may run again and
    ``last_error`` the latest failure; ``sched`` is the ``scheduled`` data of a sleep, wait or
    invoke. ``log`` lists the failed attempts (:class:`AttemptRecord`, oldest first; None
    until one failed). ``body_started`` is when the body of the attempt that completed the
    step started, when the journal says. Defaults live on the class: folding a long journal
    sets few attributes.

    A step that failed attempts and is not done may be asked for under another id (or as
    another kind) on a later attempt (``if ctx.attempt > 2: ...``): the memo then takes the
    new id and kind and keeps counting attempts (the position's attempts, see
    ``RunMachine._assign``).
    """

    done = False
    log: list[AttemptRecord] | None = None
    body_started: int | None = None
    done_ts = 0
    output: str | None = None
    error: ErrorInfo | None = None
    failures = 0
    retry_at: int | None = None
    last_error: ErrorInfo | None = None
    sched: dict[str, Any] | None = None

    def __init__(self, position: int, step_id: str, kind: str, started_at: int) -> None:
        self.position = position
        self.step_id = step_id
        self.kind = kind
        self.started_at = started_at

    @property
    def status(self) -> StepStatus:
        """The step's status as views show it (a :class:`StepStatus` value)."""
        if self.done:
            return StepStatus.FAILED if self.error is not None else StepStatus.COMPLETED
        if self.failures and self.kind == StepKind.RUN:
            return StepStatus.RETRYING
        if self.sched is not None:
            return StepStatus.SLEEPING if self.kind == StepKind.SLEEP else StepStatus.WAITING
        return StepStatus.RUNNING

    @property
    def attempts(self) -> int:
        """Attempts of a ``run`` step that have ended (0 for other kinds)."""
        return self.failures + (1 if self.done and self.kind == StepKind.RUN else 0)


class JournalFold:
    """A journal folded entry by entry: the steps' memos and the run-level facts.

    ``steps`` maps a position to its :class:`StepMemo`; ``children`` an invoked child run id
    to the position of its ``invoke``; ``run_failures`` / ``run_retry_at`` count the
    run-level failures and say when the code may be re-entered; ``ended`` is the
    ``run_ended`` entry, if any; ``state_bytes`` the UTF-8 size of the recorded outputs;
    ``patches`` maps each patch id with a ``patched`` marker to ``(at, deprecated)``;
    ``run_log`` the orchestration code's failed attempts (:class:`AttemptRecord`).
    ``state_bytes`` counts step outputs and the run's own output; the triggering events'
    data is the run machine's to add (it is not in the journal). ``started`` the ts of the
    ``started`` entry (None without one).
    """

    __slots__ = ("_last_ts", "children", "ended", "patches", "run_failures", "run_log",
                 "run_retry_at", "started", "state_bytes", "steps")

    def __init__(self, entries: Iterable[JournalEntry] = ()) -> None:
        self.steps: dict[int, StepMemo] = {}
        self.children: dict[str, int] = {}
        self.run_failures = 0
        self.run_retry_at: int | None = None
        self.ended: JournalEntry | None = None
        self.state_bytes = 0
        self.patches: dict[str, tuple[int, bool]] = {}
        self.run_log: list[AttemptRecord] = []
        self._last_ts: int | None = None
        self.started: int | None = None
        for e in entries:
            self.apply(e)

    def apply(self, e: JournalEntry) -> None:
        """Fold one more entry."""
        op = e.op
        last_ts = self._last_ts
        if op != _PATCHED:  # (a marker's ts is the run's clock: no resumption)
            self._last_ts = e.ts
        if op == _RUN_ATTEMPT_FAILED:
            data = json.loads(e.data)
            self.run_failures += 1
            self.run_retry_at = int(data["retry_at"])
            self.run_log.append(AttemptRecord(
                int(data.get("attempt", self.run_failures - 1)), "", None, e.ts,
                ErrorInfo.from_dict(data["error"]), self.run_retry_at))
            return
        if op == _RUN_ENDED:
            self.ended = e
            data = json.loads(e.data)
            if "output" in data:
                self.state_bytes += utf8_len(_compact(data["output"]))
            return
        if op == _STARTED:
            if self.started is None:
                self.started = e.ts
            return
        if op == _PATCHED:
            marker = json.loads(e.data)
            self.patches.setdefault(e.step_id, (int(marker["at"]), bool(marker["deprecated"])))
            return
        data = json.loads(e.data)
        # A run step's attempt started at its "started_at", or when absent at the entry
        # before (written so: see StepMachine._do_journal_completed).
        started = None
        if op != _SCHEDULED:
            started = data.get("started_at", last_ts)
        rec = self.steps.get(e.position)
        if rec is None:
            rec = self.steps[e.position] = StepMemo(
                e.position, e.step_id, e.kind, e.ts if started is None else int(started))
        elif not rec.done and (rec.step_id != e.step_id or rec.kind != e.kind):
            # A later attempt asked for another step at this position (see the class doc).
            rec.step_id = e.step_id
            rec.kind = e.kind
            rec.sched = None
        if op == _COMPLETED:
            rec.done = True
            rec.done_ts = e.ts
            if started is not None:
                rec.body_started = int(started)
            if "error" in data:
                rec.error = ErrorInfo.from_dict(data["error"])
            else:
                rec.output = _compact(data["output"])
                self.state_bytes += utf8_len(rec.output)
        elif op == _ATTEMPT_FAILED:
            rec.failures = int(data["attempt"]) + 1
            rec.retry_at = int(data["retry_at"])
            rec.last_error = ErrorInfo.from_dict(data["error"])
            if rec.log is None:
                rec.log = []
            rec.log.append(AttemptRecord(
                int(data["attempt"]), e.step_id, None if started is None else int(started),
                e.ts, rec.last_error, rec.retry_at))
        elif op == _SCHEDULED:
            rec.sched = data
            child = data.get("child")
            if child:
                self.children[child] = e.position
