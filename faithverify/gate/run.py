"""Running a gate: load the pair and the points, do the planned certify runs, measure and judge every check."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from faithverify.data import Points
from faithverify.errors import DataError
from faithverify.gate.config import DataConfig, GateConfig
from faithverify.gate.measure import (
    clean_accuracy,
    clean_predictions,
    judge,
    judge_budget,
    measure,
    unevaluated,
)
from faithverify.gate.plan import plan_runs
from faithverify.gate.results import CheckResult, GateResult, RunResult


def load_points(teacher: Path, input_shape: tuple[int, ...], data: DataConfig) -> Points:
    """The configured points, shaped for the model, checked against the domain."""
    from faithverify.data import sample_beside, select_points

    try:
        return select_points(
            sample_beside(teacher, data.source), input_shape, split=data.split, data_root=data.data_root,
            start=data.start, count=data.n, domain=data.domain,
        )  # fmt: skip
    except DataError as exc:
        raise DataError(f"[data]: {exc}") from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_gate(
    teacher: Path, student: Path, config: GateConfig, log: Callable[[str], None] | None = None
) -> GateResult:
    """Measure every check of ``config`` on the pair; ``log`` receives one line per stage."""
    from faithverify.attack import PGDConfig
    from faithverify.bounds.bounder import BoundMethod
    from faithverify.bounds.milp import Solver
    from faithverify.bounds.portfolio import Refiner
    from faithverify.certify import CertifyConfig, RefineMode, certify
    from faithverify.pair import load_pair

    say = log or (lambda _line: None)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    start = time.perf_counter()
    timings: dict[str, float] = {}
    by_name = {c.name: c for c in config.checks}
    results: dict[str, CheckResult] = {}

    def elapsed() -> float:
        return time.perf_counter() - start

    def over_budget() -> bool:
        return config.time_budget_s is not None and elapsed() > config.time_budget_s

    def skip(names: Iterable[str], why: str) -> None:
        for name in names:
            results[name] = unevaluated(by_name[name], why)

    pair = load_pair(teacher, student, domain=config.data.domain)
    points = load_points(teacher, pair.input_shape, config.data)
    timings["load_s"] = elapsed()
    say(f"loaded the pair and {len(points.x)} points from {points.source} ({timings['load_s']:.1f} s)")

    clean_checks = [c for c in config.checks if c.kind == "min_clean_accuracy"]
    if clean_checks:
        if over_budget():
            skip((c.name for c in clean_checks), _budget_spent(config))
        else:
            clock = time.perf_counter()
            preds = clean_predictions(pair, points.x, config.batch_size)
            seconds = time.perf_counter() - clock
            timings["clean_s"] = seconds
            for check in clean_checks:
                assert check.model is not None
                measured = clean_accuracy(preds[check.model], points.labels)
                results[check.name] = judge(check, measured, None, seconds / len(clean_checks))

    runs = [RunResult(p.spec, p.checks, p.robustness) for p in plan_runs(config)]
    pgd = PGDConfig(steps=config.attack.steps, restarts=config.attack.restarts, seed=config.attack.seed)
    for k, run in enumerate(runs):
        if over_budget():
            skip(run.checks, _budget_spent(config))
            say(f"run {k + 1}/{len(runs)} skipped ({run.spec.describe()}): time budget spent")
            continue
        say(f"run {k + 1}/{len(runs)}: {run.spec.describe()} on {len(points.x)} points")
        clock = time.perf_counter()
        spec = run.spec
        certify_config = CertifyConfig(
            eps=[spec.eps],
            methods=[BoundMethod(m) for m in spec.bounds],
            pgd=pgd,
            robustness=run.robustness and points.labels is not None,
            robustness_steps=config.attack.robustness_steps,
            batch_size=config.batch_size,
            device=config.device,
            domain=config.data.domain,
            delta=spec.delta,
            refine_mode=spec.refine,
            refiners=(Refiner.MILP,) if spec.refine is RefineMode.ALL else (Refiner.BAB, Refiner.MILP),
            solver=Solver(spec.solver),
            milp_timeout=spec.milp_timeout_s,
            jobs=config.jobs,
        )
        records = certify(
            pair, points.x, points.labels, certify_config, indices=points.indices, progress=False
        )
        run.seconds, run.status, run.points = time.perf_counter() - clock, "done", len(records)
        timings[f"run_{k + 1}_s"] = run.seconds
        say(f"run {k + 1}/{len(runs)} done in {run.seconds:.1f} s")
        for name in run.checks:
            check = by_name[name]
            measured, detail = measure(check, records, spec)
            results[name] = judge(check, measured, detail, run.seconds / len(run.checks), run=k)

    timings["total_s"] = elapsed()
    checks = [results[c.name] for c in config.checks]
    if config.time_budget_s is not None:
        checks.append(judge_budget(config.time_budget_s, timings["total_s"]))
    settings = {
        "config": None if config.path is None else str(config.path),
        "teacher": str(teacher),
        "student": str(student),
        "teacher_sha256": _sha256(teacher),
        "student_sha256": _sha256(student),
        "data": points.source,
        "split": config.data.split,
        "start": config.data.start,
        "points": len(points.x),
        "domain": list(config.data.domain),
        "attack": asdict(config.attack),
        "device": config.device,
        "batch_size": config.batch_size,
        "jobs": config.jobs,
        "time_budget_s": config.time_budget_s,
    }
    return GateResult(config.name, checks, runs, settings, timings, started_at)


def _budget_spent(config: GateConfig) -> str:
    return f"the time budget of {config.time_budget_s:g} s was spent before its run"
