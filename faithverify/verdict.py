"""The decision for one point against a threshold ``delta`` on the confidence gap.

The one convention, shared by ``certify``, the release gate and the VNN-LIB engine (whose exported property's
unsafe set is ``gap >= delta``): a point is **certified** when its worst gap is provably *below* delta
(FaithUB < delta: ``unsat``), and **violated** when some input of the ball *reaches* delta (a witness with gap
>= delta, re-checked by onnxruntime: ``sat``).
"""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    CERTIFIED = "certified"  # a sound FaithUB < delta: every input of the ball moves every confidence by less
    VIOLATED = "violated"  # a witness, re-checked by onnxruntime, has a gap >= delta
    UNKNOWN = "unknown"  # neither, within the time given


def decide(emp_lb: float, faith_ub: float, delta: float) -> Verdict:
    """``certified`` needs the sound bound, ``violated`` a concrete witness; nothing else decides.

    Both cannot hold at once for a sound bound (EmpLB <= FaithUB); the pipeline checks that separately and
    stops on a violation, so the order here never hides a contradiction.
    """
    if faith_ub < delta:
        return Verdict.CERTIFIED
    if emp_lb >= delta:
        return Verdict.VIOLATED
    return Verdict.UNKNOWN
