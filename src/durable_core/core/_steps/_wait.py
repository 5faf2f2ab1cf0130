"""The ``wait_for_event`` step machine: the first matching event, or ``None`` at the timeout.

::

    NEW ──START──▶ WAITING ──EVENT────▶ RECEIVED
     └──RESUME─────▲   └─────DEADLINE──▶ TIMED_OUT

While it waits, the run's store routes matching events to it (``RegisterWait``), and stops
once it is resolved or the run ends (``ClearWait``). A wait never looks back: only events
that arrive after it was registered can resolve it.
"""

from __future__ import annotations

import enum

from durable_core.base._durations import to_ms
from durable_core.core._context import WaitRequest
from durable_core.core._journal import StepMemo
from durable_core.core._model import ClearWait, RegisterWait, StepKind
from durable_core.core._steps._base import Effect, StepInput, StepMachine, Table, _Identity

__all__ = ["WaitState", "WaitStep"]


class WaitState(_Identity):
    """The states of a ``wait_for_event`` step."""

    NEW = enum.auto()
    """Made for the code's request; not started yet."""
    WAITING = enum.auto()
    """Registered for matching events until the deadline."""
    RECEIVED = enum.auto()
    """A matching event arrived; it is the memo."""
    TIMED_OUT = enum.auto()
    """The deadline passed first; the memo is ``None``."""
    ABANDONED = enum.auto()
    """The run ended first."""


S, In, E = WaitState, StepInput, Effect

WAIT_TABLE: Table = {
    (S.NEW, In.START): (S.WAITING, (E.JOURNAL_SCHEDULED, E.REGISTER_WAIT, E.ARM_TIMER)),
    (S.NEW, In.RESUME): (S.WAITING, (E.REGISTER_WAIT, E.ARM_TIMER)),
    (S.WAITING, In.EVENT): (
        S.RECEIVED, (E.DISARM_TIMER, E.JOURNAL_COMPLETED, E.CLEAR_WAIT, E.RESUME)
    ),
    (S.WAITING, In.DEADLINE): (
        S.TIMED_OUT, (E.DISARM_TIMER, E.JOURNAL_COMPLETED, E.CLEAR_WAIT, E.RESUME)
    ),
    (S.WAITING, In.RUN_ENDED): (S.ABANDONED, (E.DISARM_TIMER, E.CLEAR_WAIT)),
}
del S, In, E


class WaitStep(StepMachine):
    """The machine of one ``wait_for_event`` step."""

    KIND = StepKind.WAIT_FOR_EVENT
    TABLE = WAIT_TABLE
    INITIAL = WaitState.NEW
    DONE = frozenset({WaitState.RECEIVED, WaitState.TIMED_OUT})
    WAITS = True

    def start(self, memo: StepMemo | None, now: int) -> None:
        """START (or RESUME from the journal); DEADLINE at once if it has passed."""
        req = self.req
        assert isinstance(req, WaitRequest)

        def sched() -> dict[str, object]:
            if req.timeout_at is not None:
                until = to_ms(req.timeout_at)
            else:
                assert req.timeout is not None
                until = now + int(req.timeout.total_seconds() * 1000)
            return {"until": until, "event": req.event, "if": req.if_}

        self._start_timed(memo, now, sched)

    def event(self, payload: str, now: int) -> None:
        """EVENT: ``payload`` (the event's JSON) matched."""
        self._expect(StepInput.EVENT)
        self.output = payload
        self._fire(StepInput.EVENT, now)

    def deadline_reached(self, now: int) -> None:
        """DEADLINE: no event came in time; the memo is ``None``."""
        self._expect(StepInput.DEADLINE)
        self.output = "null"
        self.live = None
        self._fire(StepInput.DEADLINE, now)

    def _do_register_wait(self, now: int) -> None:
        # Only a wait that can still be met is registered (one already due times out next).
        sched = self.sched
        assert sched is not None and self.deadline is not None
        if self.deadline > now:
            self.host._persist.append(
                RegisterWait(
                    run_id=self.host.run_id,
                    position=self.position,
                    event=sched["event"],
                    if_=sched["if"],
                    trigger_event=self.host._trigger(),
                    expires_at=self.deadline,
                )
            )

    def _do_clear_wait(self, now: int) -> None:
        self.host._persist.append(ClearWait(self.host.run_id, self.position))
