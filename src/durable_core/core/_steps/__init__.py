"""One small machine per step kind (see :mod:`._base` for the theory of operation)."""

from durable_core.core._model import StepKind
from durable_core.core._steps._base import (
    Effect,
    StepHost,
    StepInput,
    StepMachine,
    StepTransitionError,
    Table,
    decode_memo,
)
from durable_core.core._steps._invoke import INVOKED_EVENT, InvokeState, InvokeStep
from durable_core.core._steps._run import RunState, RunStep
from durable_core.core._steps._send import SendState, SendStep
from durable_core.core._steps._sleep import SleepState, SleepStep
from durable_core.core._steps._wait import WaitState, WaitStep

__all__ = [
    "INVOKED_EVENT",
    "MACHINES",
    "Effect",
    "InvokeState",
    "InvokeStep",
    "RunState",
    "RunStep",
    "SendState",
    "SendStep",
    "SleepState",
    "SleepStep",
    "StepHost",
    "StepInput",
    "StepMachine",
    "StepTransitionError",
    "Table",
    "WaitState",
    "WaitStep",
    "decode_memo",
]

MACHINES: dict[str, type[StepMachine]] = {
    StepKind.RUN: RunStep,
    StepKind.SLEEP: SleepStep,
    StepKind.WAIT_FOR_EVENT: WaitStep,
    StepKind.INVOKE: InvokeStep,
    StepKind.SEND_EVENT: SendStep,
}
"""The machine class of each step kind."""
