"""What a gate found: each check's outcome, each certify run, and the gate's verdict over them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faithverify.gate.plan import RunSpec

PASS, FAIL, NOT_EVALUATED = "pass", "fail", "not evaluated"


@dataclass
class CheckResult:
    name: str
    kind: str
    threshold: float
    comparison: str  # "<=" or ">=": measured <comparison> threshold passes
    parameters: dict[str, Any]
    status: str  # pass | fail | not evaluated
    measured: float | None = None
    detail: str = ""  # counts behind a share, or why the check was not evaluated
    message: str = ""  # one line: the measurement against the threshold
    run: int | None = None  # index into GateResult.runs, None for checks outside the runs
    seconds: float = 0.0  # this check's share of the time of the stage that measured it

    @property
    def passed(self) -> bool:
        return self.status == PASS


@dataclass
class RunResult:
    spec: RunSpec
    checks: list[str]
    robustness: bool
    status: str = "skipped"  # done | skipped
    points: int = 0
    seconds: float = 0.0


@dataclass
class GateResult:
    name: str
    checks: list[CheckResult]
    runs: list[RunResult]
    settings: dict[str, Any]
    timings: dict[str, float]  # seconds per stage, and total
    started_at: str  # ISO 8601, UTC

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> int:
        return sum(c.status == FAIL for c in self.checks)

    @property
    def not_evaluated(self) -> int:
        return sum(c.status == NOT_EVALUATED for c in self.checks)
