"""The verdict logic, one convention everywhere: certified when a sound bound is below delta, violated when a
witness reaches it (the VNN-LIB property's unsafe set is ``gap >= delta``)."""

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
    if emp_lb >= delta:
        assert verdict is Verdict.VIOLATED
    if faith_ub < delta:
        assert verdict is Verdict.CERTIFIED
    if verdict is Verdict.UNKNOWN:
        assert emp_lb < delta <= faith_ub


def test_a_gap_of_exactly_delta_is_a_violation() -> None:
    """At the boundary the VNN-LIB unsafe set (gap >= delta) and certify agree: reaching delta violates it."""
    assert decide(0.1, 0.1, 0.1) is Verdict.VIOLATED
    assert decide(0.05, 0.1, 0.1) is Verdict.UNKNOWN
    assert decide(0.05, 0.0999, 0.1) is Verdict.CERTIFIED
