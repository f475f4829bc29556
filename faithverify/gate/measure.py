"""What each check measures, and whether the measurement holds against its threshold.

A measurement is a value with the counts behind it (``(0.85, "17 of 20 points certified")``), or None where the
data cannot give one (no labels); :func:`judge` turns it into a :class:`~faithverify.gate.results.CheckResult`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from faithverify.gate.config import BUDGET_CHECK, CheckConfig, format_value
from faithverify.gate.plan import RunSpec
from faithverify.gate.results import FAIL, NOT_EVALUATED, PASS, CheckResult
from faithverify.methods import RefineMode

if TYPE_CHECKING:
    from faithverify.pair import Pair
    from faithverify.results import PointResult


def clean_predictions(pair: Pair, x: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Teacher's and student's predictions at the points, by onnxruntime (the reference evaluator)."""
    parts = [pair.outputs_onnxruntime(x[k : k + batch_size]) for k in range(0, len(x), batch_size)]
    return {
        "teacher": np.concatenate([p["z_t"].argmax(axis=1) for p in parts]),
        "student": np.concatenate([p["z_s"].argmax(axis=1) for p in parts]),
    }


def clean_accuracy(preds: np.ndarray, labels: np.ndarray | None) -> tuple[float, str] | None:
    """The share of predictions that match the labels, with its counts; None without labels."""
    if labels is None:
        return None
    hits = int(np.sum(preds == labels))
    return hits / len(labels), f"{hits} of {len(labels)} points classified correctly"


def _share(flags: Sequence[bool], what: str) -> tuple[float, str] | None:
    if not flags:
        return None
    return sum(flags) / len(flags), f"{sum(flags)} of {len(flags)} points {what}"


def measure(
    check: CheckConfig, records: Sequence[PointResult], spec: RunSpec
) -> tuple[tuple[float, str] | None, str]:
    """The measured value (with its counts) of one check on a run's records; or None and why not."""
    from faithverify.verdict import decide

    kind = check.kind
    if kind == "max_mean_faith_ub":
        values = [p.faith_ub for p in records]
        return (float(np.mean(values)), f"max {max(values):.4f} over {len(values)} points"), ""
    if kind == "max_mean_emp_lb":
        values = [p.emp_lb for p in records]
        return (float(np.mean(values)), f"max {max(values):.4f} over {len(values)} points"), ""
    if kind in ("min_certified_share", "max_violated_share"):
        assert check.delta is not None
        if spec.refine is RefineMode.UNDECIDED:
            verdicts = [str(p.verdict) for p in records]
        else:
            verdicts = [decide(p.emp_lb, p.faith_ub, check.delta).value for p in records]
        counts = {v: verdicts.count(v) for v in ("certified", "violated", "unknown")}
        target = "certified" if kind == "min_certified_share" else "violated"
        flags = [v == target for v in verdicts]
        share = _share(flags, target)
        if share is None:
            return None, "no points"
        rest = ", ".join(f"{counts[v]} {v}" for v in counts if v != target)
        return (share[0], f"{share[1]} ({rest})"), ""
    if kind == "min_agreement":
        flags = [bool(p.agreement) for p in records if p.agreement is not None]
        return _share(flags, "in agreement"), "needs labels"
    if kind == "min_robust_accuracy":
        attr = "teacher_robust" if check.model == "teacher" else "student_robust"
        flags = [bool(getattr(p, attr)) for p in records if getattr(p, attr) is not None]
        return _share(flags, "robust"), "needs labels"
    raise AssertionError(f"unhandled kind {kind}")


def judge(
    check: CheckConfig,
    measurement: tuple[float, str] | None,
    why_missing: str | None,
    seconds: float,
    run: int | None = None,
) -> CheckResult:
    """The outcome of ``check`` from its measurement: pass or fail, or not evaluated (and why) without one."""
    spec = check.spec
    comparison = spec.comparison
    base = CheckResult(
        check.name, check.kind, check.threshold, comparison, check.parameters(), NOT_EVALUATED, run=run,
        seconds=seconds,
    )  # fmt: skip
    if measurement is None or math.isnan(measurement[0]):
        base.detail = f"could not be measured: {why_missing or 'the data has no labels'}"
        base.message = f"{spec.what} {base.detail}"
        return base
    value, detail = measurement
    holds = value <= check.threshold if spec.upper else value >= check.threshold
    base.status, base.measured, base.detail = (PASS if holds else FAIL), value, detail
    where = ", ".join(
        f"{k} {format_value(v)}" for k, v in check.parameters().items() if k in ("eps", "delta", "model")
    )
    relation = comparison if holds else (">" if spec.upper else "<")
    base.message = f"{spec.what} {value:.4f} {relation} {check.threshold:g}" + (
        f" at {where}" if where else ""
    )
    return base


def unevaluated(check: CheckConfig, why: str) -> CheckResult:
    """The outcome of a check that was never measured (its run was skipped), with why."""
    return CheckResult(
        check.name, check.kind, check.threshold, check.spec.comparison, check.parameters(), NOT_EVALUATED,
        detail=why, message=f"not evaluated: {why}",
    )  # fmt: skip


def judge_budget(budget: float, total: float) -> CheckResult:
    """The check that ``time_budget_s`` adds: the whole gate took at most ``budget`` seconds."""
    holds = total <= budget
    return CheckResult(
        BUDGET_CHECK, "time_budget_s", budget, "<=", {}, PASS if holds else FAIL, measured=total,
        detail="seconds for the whole gate",
        message=f"the gate took {total:.1f} s, {'within' if holds else 'over'} its budget of {budget:g} s",
        seconds=0.0,
    )  # fmt: skip
