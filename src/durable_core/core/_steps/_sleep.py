"""The ``sleep`` step machine (``ctx.step.sleep`` and ``sleep_until``): a durable timer.

::

    NEW ──START (journal the deadline)──▶ SLEEPING ──DEADLINE──▶ DONE
     └──RESUME (deadline journalled)───────▲
"""

from __future__ import annotations

import enum

from durable_core.base._durations import to_ms
from durable_core.core._context import SleepRequest
from durable_core.core._journal import StepMemo
from durable_core.core._model import StepKind
from durable_core.core._steps._base import Effect, StepInput, StepMachine, Table, _Identity

__all__ = ["SleepState", "SleepStep"]


class SleepState(_Identity):
    """The states of a ``sleep`` step."""

    NEW = enum.auto()
    """Made for the code's request; not started yet."""
    SLEEPING = enum.auto()
    """The deadline is journalled and the timer armed."""
    DONE = enum.auto()
    """The deadline passed; the memo is ``None``."""
    ABANDONED = enum.auto()
    """The run ended first."""


S, In, E = SleepState, StepInput, Effect

SLEEP_TABLE: Table = {
    (S.NEW, In.START): (S.SLEEPING, (E.JOURNAL_SCHEDULED, E.ARM_TIMER)),
    (S.NEW, In.RESUME): (S.SLEEPING, (E.ARM_TIMER,)),
    (S.SLEEPING, In.DEADLINE): (S.DONE, (E.DISARM_TIMER, E.JOURNAL_COMPLETED, E.RESUME)),
    (S.SLEEPING, In.RUN_ENDED): (S.ABANDONED, (E.DISARM_TIMER,)),
}
del S, In, E


class SleepStep(StepMachine):
    """The machine of one ``sleep`` step."""

    KIND = StepKind.SLEEP
    TABLE = SLEEP_TABLE
    INITIAL = SleepState.NEW
    DONE = frozenset({SleepState.DONE})

    def start(self, memo: StepMemo | None, now: int) -> None:
        """START (or RESUME from the journal); DEADLINE at once if it has passed."""
        self._start_timed(memo, now, lambda: {"until": self._until(now)})

    def _until(self, now: int) -> int:
        req = self.req
        assert isinstance(req, SleepRequest)
        if req.until is not None:
            return to_ms(req.until)
        assert req.duration is not None
        return now + int(req.duration.total_seconds() * 1000)

    def deadline_reached(self, now: int) -> None:
        """DEADLINE: the sleep is over; its memo is ``None``."""
        self._expect(StepInput.DEADLINE)
        self.output = "null"
        self.live = None
        self._fire(StepInput.DEADLINE, now)

