"""Testing helpers: the whole engine on a virtual clock.

:class:`TestEngine` runs an app against a store (in memory by default) with time that moves
only when you say so. No trio, no threads and no real waiting on the caller's side::

    engine = TestEngine(app, start="2026-01-01T00:00:00Z")
    [run] = engine.send(Event("order/created", {"orderId": 1, "amount": 150})).runs
    assert run.status == "sleeping"
    engine.advance("1h30m")
    assert run.status == "completed"
"""

from __future__ import annotations

from durable_core.testing._deploy import (
    DeployFailure,
    DeployReport,
    FunctionReport,
    check_deploy,
)
from durable_core.testing._engine import (
    RunHandle,
    SentRuns,
    TestEngine,
    export_run,
    replay,
    replay_folder,
)
from durable_core.testing._lint import Finding, check_determinism, lint
from durable_core.testing._simulation import (
    CrashTestReport,
    FaultPlan,
    InvariantViolation,
    Simulation,
    crash_test,
)

__all__ = [
    "CrashTestReport",
    "DeployFailure",
    "DeployReport",
    "FaultPlan",
    "Finding",
    "FunctionReport",
    "InvariantViolation",
    "RunHandle",
    "SentRuns",
    "Simulation",
    "TestEngine",
    "check_deploy",
    "check_determinism",
    "crash_test",
    "export_run",
    "lint",
    "replay",
    "replay_folder",
]
