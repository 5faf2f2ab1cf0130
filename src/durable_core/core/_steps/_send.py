"""The ``send_event`` step machine: append events to the event log, at once.

::

    NEW ──START (events emitted, ids journalled)──▶ SENT

Event ids are derived from the run's and the step's (unless given), so a step replayed
after a crash before its memo was written sends the same ids, which the store dedupes.
"""

from __future__ import annotations

import enum
import json

from durable_core.base._events import Event
from durable_core.core._context import SendRequest
from durable_core.core._journal import StepMemo
from durable_core.core._model import EmitEvents, StepKind, derive_id
from durable_core.core._steps._base import Effect, StepInput, StepMachine, Table, _Identity

__all__ = ["SendState", "SendStep"]


class SendState(_Identity):
    """The states of a ``send_event`` step."""

    NEW = enum.auto()
    """Made for the code's request; not started yet."""
    SENT = enum.auto()
    """The events were emitted; their ids are the memo."""


S, In, E = SendState, StepInput, Effect

SEND_TABLE: Table = {
    (S.NEW, In.START): (S.SENT, (E.EMIT_EVENTS, E.JOURNAL_COMPLETED, E.RESUME)),
}
del S, In, E


class SendStep(StepMachine):
    """The machine of one ``send_event`` step."""

    KIND = StepKind.SEND_EVENT
    TABLE = SEND_TABLE
    INITIAL = SendState.NEW
    DONE = frozenset({SendState.SENT})

    _texts: tuple[str, ...] = ()

    def start(self, memo: StepMemo | None, now: int) -> None:
        """START: the events get their ids and timestamps, and are emitted."""
        self._expect(StepInput.START)
        req = self.req
        assert isinstance(req, SendRequest)
        texts, ids = [], []
        for i, e in enumerate(req.events):
            eid = e.id or derive_id("e_", self.host.run_id, self.step_id, i)
            ids.append(eid)
            texts.append(Event(e.name, e.data, id=eid, ts=e.ts or now).to_json())
        self._texts = tuple(texts)
        self.output = json.dumps(ids)
        self.live = ids
        self._fire(StepInput.START, now)

    def _do_emit_events(self, now: int) -> None:
        self.host._persist.append(EmitEvents(self._texts))
