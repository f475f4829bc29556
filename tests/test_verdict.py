"""The verdict logic: a witness above delta is never certified; a bound at or below delta is never violated."""

from __future__ import annotations

import itertools

import pytest

from faithverify.verdict import Verdict, decide

VALUES = [0.0, 0.05, 0.1, 0.1000001, 0.2, 0.5, 1.0]


@pytest.mark.parametrize(("emp_lb", "faith_ub", "delta"), itertools.product(VALUES, VALUES, [0.0, 0.1, 0.2]))
def test_verdicts_follow_the_evidence(emp_lb: float, faith_ub: float, delta: float) -> None:
    if emp_lb > faith_ub:
        return  # impossible for a sound bound; the pipeline stops before deciding
    verdict = decide(emp_lb, faith_ub, delta)
    if emp_lb > delta:
        assert verdict is Verdict.VIOLATED
    if faith_ub <= delta:
        assert verdict is Verdict.CERTIFIED
    if verdict is Verdict.UNKNOWN:
        assert emp_lb <= delta < faith_ub
