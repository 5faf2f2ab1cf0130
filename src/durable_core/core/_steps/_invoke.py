"""The ``invoke`` step machine: start a child run and wait for its end (or the timeout).

::

    NEW ──START (child started)──▶ WAITING ──CHILD_SUCCEEDED──▶ COMPLETED
     └──RESUME───────────────────────▲  ├────CHILD_FAILED─────▶ FAILED
                                        └────DEADLINE─────────▶ TIMED_OUT

The child's id is derived from the parent's and the step's, so a replayed start finds the
same child (``StartRun`` is idempotent); the child tells its parent with a signal.
"""

from __future__ import annotations

import enum
import json

from durable_core.base._events import Event
from durable_core.core._context import InvokeRequest
from durable_core.core._journal import StepMemo
from durable_core.core._model import ErrorInfo, StartRun, StepKind, derive_id
from durable_core.core._steps._base import Effect, StepInput, StepMachine, Table, _Identity

__all__ = ["INVOKED_EVENT", "InvokeState", "InvokeStep"]

INVOKED_EVENT = "durable/function.invoked"
"""The name of the event that starts an invoked child run."""


class InvokeState(_Identity):
    """The states of an ``invoke`` step."""

    NEW = enum.auto()
    """Made for the code's request; not started yet."""
    WAITING = enum.auto()
    """The child run was started; waiting for it to end, until the deadline."""
    COMPLETED = enum.auto()
    """The child completed; its output is the memo."""
    FAILED = enum.auto()
    """The child failed or was cancelled; its error is the memo."""
    TIMED_OUT = enum.auto()
    """The deadline passed first; the memo is an ``InvokeTimeoutError``."""
    ABANDONED = enum.auto()
    """The run ended first (the child runs on)."""


S, In, E = InvokeState, StepInput, Effect

INVOKE_TABLE: Table = {
    (S.NEW, In.START): (S.WAITING, (E.JOURNAL_SCHEDULED, E.START_CHILD, E.ARM_TIMER)),
    (S.NEW, In.RESUME): (S.WAITING, (E.ARM_TIMER,)),
    (S.WAITING, In.CHILD_SUCCEEDED): (
        S.COMPLETED, (E.DISARM_TIMER, E.JOURNAL_COMPLETED, E.RESUME)
    ),
    (S.WAITING, In.CHILD_FAILED): (S.FAILED, (E.DISARM_TIMER, E.JOURNAL_COMPLETED, E.RESUME)),
    (S.WAITING, In.DEADLINE): (S.TIMED_OUT, (E.DISARM_TIMER, E.JOURNAL_COMPLETED, E.RESUME)),
    (S.WAITING, In.RUN_ENDED): (S.ABANDONED, (E.DISARM_TIMER,)),
}
del S, In, E


class InvokeStep(StepMachine):
    """The machine of one ``invoke`` step."""

    KIND = StepKind.INVOKE
    TABLE = INVOKE_TABLE
    INITIAL = InvokeState.NEW
    DONE = frozenset({InvokeState.COMPLETED, InvokeState.FAILED, InvokeState.TIMED_OUT})
    WAITS = True

    def start(self, memo: StepMemo | None, now: int) -> None:
        """START (or RESUME from the journal); DEADLINE at once if it has passed."""
        req = self.req
        assert isinstance(req, InvokeRequest)

        def sched() -> dict[str, object]:
            return {
                "until": now + int(req.timeout.total_seconds() * 1000),
                "child": derive_id("r_", self.host.run_id, self.step_id),
                "function": req.function.id,
            }

        self._start_timed(memo, now, sched)

    def child_ended(self, payload: str, now: int) -> None:
        """CHILD_SUCCEEDED or CHILD_FAILED: ``payload`` holds the child's ``output`` or
        ``error``."""
        data = json.loads(payload)
        self._expect(StepInput.CHILD_FAILED if "error" in data else StepInput.CHILD_SUCCEEDED)
        if "error" in data:
            self.error = ErrorInfo.from_dict(data["error"])
            self._fire(StepInput.CHILD_FAILED, now)
        else:
            self.output = json.dumps(data["output"], separators=(",", ":"))
            self._fire(StepInput.CHILD_SUCCEEDED, now)

    def deadline_reached(self, now: int) -> None:
        """DEADLINE: the child did not end in time."""
        self._expect(StepInput.DEADLINE)
        self.error = ErrorInfo(
            "InvokeTimeoutError",
            "timed out waiting for invoked function "
            f"{self.sched and self.sched['function']!r} to finish",
        )
        self._fire(StepInput.DEADLINE, now)

    def _do_start_child(self, now: int) -> None:
        req = self.req
        assert isinstance(req, InvokeRequest) and self.sched is not None
        host = self.host
        child = self.sched["child"]
        host._children[child] = self.position
        event = Event(
            INVOKED_EVENT, req.data, id=derive_id("e_", host.run_id, self.step_id), ts=now
        )
        host._persist.append(
            StartRun(child, req.function.id, event.to_json(), parent_run_id=host.run_id)
        )
