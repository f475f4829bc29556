"""Which certify runs a gate needs: one per distinct eps and bound setting, shared by the checks it serves."""

from __future__ import annotations

from dataclasses import dataclass

from faithverify.gate.config import CheckConfig, GateConfig
from faithverify.methods import RefineMode

# Kinds measured by the attacks alone: they can join any run at their eps.
_ATTACK_ONLY = frozenset({"min_agreement", "min_robust_accuracy", "max_mean_emp_lb"})
_NEEDS_ROBUSTNESS = frozenset({"min_agreement", "min_robust_accuracy"})


@dataclass(frozen=True)
class RunSpec:
    """What one certify run computes. ``delta`` is set only when the MILP refines toward it."""

    eps: float
    bounds: tuple[str, ...] = ("crown",)
    refine: RefineMode = RefineMode.NONE  # which points the exact methods refine
    delta: float | None = None
    solver: str = "auto"
    milp_timeout_s: float = 60.0

    def describe(self) -> str:
        text = f"eps {self.eps:g}, {'+'.join(self.bounds)}"
        if self.refine is RefineMode.UNDECIDED:
            text += f", delta {self.delta:g} with MILP refinement ({self.solver}, {self.milp_timeout_s:g} s/point)"
        elif self.refine is RefineMode.ALL:
            text += f", MILP on every point ({self.solver}, {self.milp_timeout_s:g} s/point)"
        return text


@dataclass
class RunPlan:
    spec: RunSpec
    checks: list[str]  # names of the checks measured on this run
    robustness: bool = False  # agreement and robust accuracy (PGD-50) are wanted


def _spec_of(check: CheckConfig) -> RunSpec:
    assert check.eps is not None
    if check.milp:
        return RunSpec(check.eps, check.bounds, RefineMode.ALL, None, check.solver, check.milp_timeout_s)
    if check.refine:
        return RunSpec(
            check.eps, check.bounds, RefineMode.UNDECIDED, check.delta, check.solver, check.milp_timeout_s
        )
    # Screening alone: verdicts for any delta follow from EmpLB and FaithUB, so delta is not part of the run.
    return RunSpec(check.eps, check.bounds)


def plan_runs(config: GateConfig) -> list[RunPlan]:
    """One run per distinct :class:`RunSpec`, in the order the checks first ask for it.

    Checks measured by the attacks alone (agreement, robust accuracy, EmpLB) join a run at their eps, a
    screening-only one where there is one, so that they never cost a run of their own.
    """
    plans: dict[RunSpec, RunPlan] = {}
    for check in config.checks:
        if check.eps is None or check.kind in _ATTACK_ONLY:
            continue
        spec = _spec_of(check)
        plans.setdefault(spec, RunPlan(spec, [])).checks.append(check.name)
    for check in config.checks:
        if check.kind not in _ATTACK_ONLY:
            continue
        assert check.eps is not None
        at_eps = [p for p in plans.values() if p.spec.eps == check.eps]
        host = next((p for p in at_eps if p.spec.refine is RefineMode.NONE), at_eps[0] if at_eps else None)
        if host is None:
            host = plans.setdefault(RunSpec(check.eps), RunPlan(RunSpec(check.eps), []))
        host.checks.append(check.name)
        host.robustness = host.robustness or check.kind in _NEEDS_ROBUSTNESS
    # Run in eps order: a time budget then spends itself on the cheaper, smaller radii first.
    return sorted(plans.values(), key=lambda p: (p.spec.eps, p.spec.refine is not RefineMode.NONE))
