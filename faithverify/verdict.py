"""The decision for one point against a threshold ``delta`` on the confidence gap."""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    CERTIFIED = "certified"  # a sound FaithUB <= delta: no input of the ball moves any confidence by more
    VIOLATED = "violated"  # a witness, re-checked by onnxruntime, has a gap > delta
    UNKNOWN = "unknown"  # neither, within the time given


def decide(emp_lb: float, faith_ub: float, delta: float) -> Verdict:
    """``certified`` needs the sound bound, ``violated`` a concrete witness; nothing else decides.

    Both cannot hold at once for a sound bound (EmpLB <= FaithUB); the pipeline checks that separately and
    stops on a violation, so the order here never hides a contradiction.
    """
    if faith_ub <= delta:
        return Verdict.CERTIFIED
    if emp_lb > delta:
        return Verdict.VIOLATED
    return Verdict.UNKNOWN
