"""The kinds of gate check: what each measures, which side of its threshold passes, which keys it takes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckKind:
    """What a kind of check measures, which side of the threshold passes, and which keys it takes."""

    name: str
    upper: bool  # True: measured <= threshold passes; False: measured >= threshold passes
    what: str  # the measured quantity, for messages
    keys: tuple[str, ...]  # keys beyond kind / name / threshold
    required: tuple[str, ...]
    share: bool  # a fraction of points (shown with counts)

    @property
    def comparison(self) -> str:
        """How a passing measurement compares with the threshold: ``"<="`` or ``">="``."""
        return "<=" if self.upper else ">="


_BOUND_KEYS = ("bounds", "solver", "milp_timeout_s")
KINDS: dict[str, CheckKind] = {
    k.name: k
    for k in (
        CheckKind("max_mean_faith_ub", True, "mean FaithUB", ("eps", *_BOUND_KEYS, "milp"), ("eps",), False),
        CheckKind(
            "min_certified_share", False, "certified share", ("eps", "delta", *_BOUND_KEYS, "refine"),
            ("eps", "delta"), True,
        ),
        CheckKind(
            "max_violated_share", True, "violated share", ("eps", "delta", *_BOUND_KEYS, "refine"),
            ("eps", "delta"), True,
        ),
        CheckKind("min_agreement", False, "distillation agreement", ("eps",), ("eps",), True),
        CheckKind("min_robust_accuracy", False, "robust accuracy", ("eps", "model"), ("eps", "model"), True),
        CheckKind("max_mean_emp_lb", True, "mean EmpLB", ("eps",), ("eps",), False),
        CheckKind("min_clean_accuracy", False, "clean accuracy", ("model",), ("model",), True),
    )
}  # fmt: skip
