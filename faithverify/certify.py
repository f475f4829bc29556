"""The certification pipeline: for each eps and batch of points, attack (EmpLB), bound (FaithUB), decide,
refine with exact methods where asked, record.

One pass, no back and forth (docs/design.md): clean outputs by onnxruntime -> attack witness, re-checked by
onnxruntime -> logit-difference bounds per network and screening method -> eq. 5-6, then the coupled bound ->
robustness attacks -> with ``delta``, a verdict; the refinement stage (:mod:`faithverify.refine`: branch and
bound and the MILP, then the coupled bound) only sees the points screening leaves undecided (or every point,
for the paper's all-pairs FaithUB), after a stronger attack -> records streamed to the results file as each
point is finished.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import torch

from faithverify.attack import PGDConfig, faithfulness_attack, input_box, robustness_attacks
from faithverify.bounds.bounder import BoundMethod, PairBounder, resolve_device
from faithverify.bounds.crown import LayerBounds
from faithverify.bounds.milp import Solver
from faithverify.bounds.portfolio import Refiner
from faithverify.bounds.softmax import LogitDiffBounds, faithfulness_from_logit_bounds
from faithverify.errors import SoundnessViolation
from faithverify.executors import Executor, ExecutorSpec, open_executor
from faithverify.methods import RefineMode, Stage, refinement_stage
from faithverify.network import PiecewiseLinearNetwork
from faithverify.pair import Pair
from faithverify.refine import RefineResult, refine_point
from faithverify.results import EXACT_GAP, PointResult, Refinement
from faithverify.threads import torch_threads
from faithverify.verdict import Verdict, decide

# A witness's onnxruntime gap may exceed the bound only by float32 evaluation noise; anything more means a bug,
# and the run stops rather than report an unsound bound.
SOUNDNESS_SLACK = 1e-6


# A config field with this metadata does not change what a record says (a record carries its own eps; batching
# and parallelism only change how fast). Every other field is written into the results file's header and must
# match on --resume.
NOT_IN_RECORDS = {"in_records": False}


@dataclass(frozen=True)
class CertifyConfig:
    eps: Sequence[float] = field(metadata=NOT_IN_RECORDS)
    methods: Sequence[BoundMethod] = (BoundMethod.IBP, BoundMethod.CROWN)
    pgd: PGDConfig = field(default_factory=PGDConfig)
    # The attack on points headed for the refinement stage (their seconds of budget dwarf it).
    pgd_refine: PGDConfig = field(default_factory=lambda: PGDConfig(steps=200, restarts=8, classes=5))
    robustness: bool = True  # robust accuracy and distillation agreement (needs labels)
    robustness_steps: int = 50
    # Points are attacked with their own random streams and bounded independently: the batch changes nothing
    # but the last bit of a float64 bound.
    batch_size: int = field(default=250, metadata=NOT_IN_RECORDS)
    device: str = "auto"
    alpha_iterations: int = 20
    domain: tuple[float, float] = (0.0, 1.0)
    delta: float | None = None  # threshold for a verdict per point
    refine_mode: RefineMode = RefineMode.UNDECIDED
    refiners: tuple[Refiner, ...] = (Refiner.BAB, Refiner.MILP)  # the exact methods of the refinement stage
    solver: Solver = Solver.AUTO  # the MILP's solver
    milp_timeout: float = 60.0  # seconds of refinement per point
    # With RefineMode.ALL, also refine points whose worst gap is already known (FaithUB - EmpLB <= EXACT_GAP):
    # their FaithUB can fall by at most that, so by default they keep their budget; on for the paper's eq. 4-6
    # with exact bounds on every point (benchmarks/paper/reproduce.py).
    refine_known: bool = False
    jobs: int = field(default=1, metadata=NOT_IN_RECORDS)  # processes for the refinement stage
    # Where refinements run with jobs: None, a local pool; "local", "auto" or an address, Ray (executors.py).
    ray: str | None = field(default=None, metadata=NOT_IN_RECORDS)

    @property
    def executor(self) -> ExecutorSpec:
        return ExecutorSpec(jobs=self.jobs, ray=self.ray)

    def record_settings(self) -> dict[str, Any]:
        """Every setting that decides a record's values, flat (``pgd.steps``) and in JSON types: derived from the
        fields themselves, so a new field is checked on ``--resume`` without anyone remembering to add it."""
        settings = _flat_settings(self)
        settings["device"] = resolve_device(self.device).type  # what ran, not what was asked for
        return settings

    @property
    def refine_key(self) -> Stage:
        """The name of the refinement stage's bound in a record (``bab``, ``milp`` or ``bab+milp``)."""
        return refinement_stage(self.refiners)

    def refines(self, verdict: Verdict | None, known: bool = False) -> bool:
        """Whether a point with this screening verdict goes to the refinement stage; ``known``: its FaithUB
        already meets its EmpLB (an exact point, whose budget is better left unspent)."""
        if self.refine_mode is RefineMode.ALL:
            return self.refine_known or not known
        return self.refine_mode is RefineMode.UNDECIDED and verdict is Verdict.UNKNOWN


def _flat_settings(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        if not f.metadata.get("in_records", True):
            continue
        value = getattr(obj, f.name)
        if is_dataclass(value) and not isinstance(value, type):
            out.update(_flat_settings(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = _json_value(value)
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


@dataclass
class PendingRefinement:
    """A point that screening left undecided (or that asks for the all-pairs MILP), with what the MILP needs."""

    record: PointResult
    lower: np.ndarray  # flat box
    upper: np.ndarray
    x0: np.ndarray  # flat
    teacher: LogitDiffBounds  # [1, C, C], the tightest screening bounds
    student: LogitDiffBounds
    witness: np.ndarray  # the best witness so far, in the model's input shape


def _slice(b: LogitDiffBounds, k: int) -> LogitDiffBounds:
    return LogitDiffBounds(lower=b.lower[k : k + 1], upper=b.upper[k : k + 1])


def _check_sound(index: int, eps: float, emp_lb: float, faith_ub: float, method: str) -> None:
    if emp_lb > faith_ub + SOUNDNESS_SLACK:
        raise SoundnessViolation(
            f"point {index}, eps {eps}: witness gap {emp_lb:.8f} exceeds the {method} bound {faith_ub:.8f}; "
            "please report this"
        )


def certify_batch(
    pair: Pair,
    bounder: PairBounder,
    indices: np.ndarray,
    x0: np.ndarray,
    labels: np.ndarray | None,
    eps: float,
    config: CertifyConfig,
    device: torch.device,
    on_stage: Callable[[str], None] | None = None,
) -> tuple[list[PointResult], list[PendingRefinement]]:
    """Attack and screening for one batch at one eps: finished records, and the points left for the MILP.
    ``on_stage`` hears the name of each stage as it starts (the progress bar shows it)."""
    stage = on_stage or (lambda _name: None)
    n = len(indices)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    clean = pair.outputs_onnxruntime(x0)
    lower, upper = input_box(x0, eps, config.domain)
    teacher, student = bounder.teacher, bounder.student
    stage("attack")
    with torch_threads(1):
        attack = faithfulness_attack(
            teacher, student, x0, lower, upper, config.pgd, eps, device=device, keys=indices
        )
    witness_gap = np.abs(pair.gap_onnxruntime(attack.witness))
    clean_gap = np.abs(clean["gap"])
    # x0 is in the box too: the larger of the two re-checked gaps is the lower bound.
    use_witness = witness_gap.max(axis=1) >= clean_gap.max(axis=1)
    emp_gaps = np.where(use_witness[:, None], witness_gap, clean_gap)
    witnesses = np.where(use_witness.reshape(-1, *[1] * (x0.ndim - 1)), attack.witness, x0.astype(np.float32))
    seconds["attack"] = time.perf_counter() - clock

    ubs: dict[str, np.ndarray] = {}
    tightest: tuple[LogitDiffBounds, LogitDiffBounds] | None = None
    layers: tuple[LayerBounds, LayerBounds] | None = None
    per_network = [m for m in config.methods if m is not BoundMethod.COUPLED]
    if BoundMethod.COUPLED in config.methods and all(m is BoundMethod.IBP for m in per_network):
        per_network.append(BoundMethod.CROWN)  # the coupled bound starts from linear bounds of each network
    for method in per_network:
        stage(method.value)
        clock = time.perf_counter()
        (t_bounds, t_layers), (s_bounds, s_layers) = bounder.logit_bounds_with_layers(lower, upper, method)
        if method in config.methods:
            ubs[method.value] = faithfulness_from_logit_bounds(t_bounds, s_bounds).value
        if t_layers is not None and s_layers is not None:
            layers = (t_layers, s_layers)  # the later method's (alpha-CROWN after CROWN): the tighter
        tightest = (
            (t_bounds, s_bounds)
            if tightest is None
            else (tightest[0].intersect(t_bounds), tightest[1].intersect(s_bounds))
        )
        seconds[method.value] = time.perf_counter() - clock
    if BoundMethod.COUPLED in config.methods and tightest is not None and layers is not None:
        stage(BoundMethod.COUPLED.value)
        clock = time.perf_counter()
        anchors = [
            torch.from_numpy(np.asarray(x0, np.float64)),
            torch.from_numpy(witnesses.astype(np.float64)),
        ]
        coupled = bounder.coupled(lower, upper, tightest, layers, anchors)
        ubs[BoundMethod.COUPLED.value] = coupled.value
        seconds[BoundMethod.COUPLED.value] = time.perf_counter() - clock

    robust = None
    if config.robustness and labels is not None:
        stage("robustness")
        clock = time.perf_counter()
        with torch_threads(1):
            robust = robustness_attacks(
                teacher,
                student,
                x0,
                labels,
                lower,
                upper,
                eps,
                config.robustness_steps,
                config.pgd.seed,
                device,
                keys=indices,
            )
        seconds["robustness"] = time.perf_counter() - clock

    stacked = np.stack([ubs[m.value] for m in config.methods])
    best = stacked.argmin(axis=0)
    # The points headed for the refinement stage get a much stronger attack first: it may decide them at once
    # (a witness above delta), and otherwise tells the refinement what is reachable.
    heading = [
        k for k in range(n)
        if config.refines(
            decide(float(emp_gaps[k].max()), float(stacked[best[k], k]), config.delta)
            if config.delta is not None else None
        )
    ]  # fmt: skip
    if heading:
        stage(f"attack on {len(heading)} to refine")
        clock = time.perf_counter()
        sel = np.array(heading)
        with torch_threads(1):
            strong = faithfulness_attack(
                teacher,
                student,
                x0[sel],
                lower[sel],
                upper[sel],
                config.pgd_refine,
                eps,
                device=device,
                keys=indices[sel],
            )
        strong_gap = np.abs(pair.gap_onnxruntime(strong.witness))
        better = strong_gap.max(axis=1) > emp_gaps[sel].max(axis=1)
        emp_gaps[sel[better]] = strong_gap[better]
        witnesses[sel[better]] = strong.witness[better]
        seconds["attack"] += time.perf_counter() - clock
    finished, pending = [], []
    for k in range(n):
        emp_lb = float(emp_gaps[k].max())
        faith_ub = float(stacked[best[k], k])
        method = config.methods[best[k]].value
        _check_sound(int(indices[k]), eps, emp_lb, faith_ub, method)
        record = PointResult(
            index=int(indices[k]),
            eps=float(eps),
            label=None if labels is None else int(labels[k]),
            teacher_pred=int(clean["z_t"][k].argmax()),
            student_pred=int(clean["z_s"][k].argmax()),
            clean_gap=float(clean_gap[k].max()),
            emp_lb=emp_lb,
            emp_lb_class=int(emp_gaps[k].argmax()),
            faith_ub=faith_ub,
            faith_ub_method=method,
            bounds={m: float(v[k]) for m, v in ubs.items()},
            teacher_robust=None if robust is None else bool(robust.teacher_robust[k]),
            student_robust=None if robust is None else bool(robust.student_robust[k]),
            agreement=None if robust is None else bool(robust.agreement[k]),
            seconds={stage: t / n for stage, t in seconds.items()},
        )
        verdict = decide(emp_lb, faith_ub, config.delta) if config.delta is not None else None
        if config.refines(verdict, known=faith_ub - emp_lb <= EXACT_GAP) and tightest is not None:
            pending.append(
                PendingRefinement(
                    record, lower[k].reshape(-1), upper[k].reshape(-1), x0[k].reshape(-1),
                    _slice(tightest[0], k), _slice(tightest[1], k), witnesses[k],
                )
            )  # fmt: skip
            continue
        if verdict is not None:
            record.verdict = verdict
            record.decided_by = _decider(verdict, method)
            if verdict is Verdict.VIOLATED:
                record.witness = witnesses[k].reshape(-1).tolist()
        finished.append(record)
    return finished, pending


def _decider(verdict: Verdict, bound_method: str) -> Stage | None:
    """The stage a verdict owes itself to: the attack's witness, or the bound that certified."""
    if verdict is Verdict.VIOLATED:
        return Stage.ATTACK
    return Stage(bound_method) if verdict is Verdict.CERTIFIED else None


# --- the refinement stage -------------------------------------------------------------------------------------


def _refine_task(
    forms: tuple[PiecewiseLinearNetwork, PiecewiseLinearNetwork],
    args: tuple[PendingRefinement, CertifyConfig],
) -> RefineResult:
    """One point's refinement, as an executor task (in a pool or Ray worker, or here): the networks are the
    executor's shared value, sent once per worker."""
    item, config = args
    return _refine(forms, item, config)


def _refine(
    forms: tuple[PiecewiseLinearNetwork, PiecewiseLinearNetwork],
    item: PendingRefinement,
    config: CertifyConfig,
) -> RefineResult:
    return refine_point(
        forms[0], forms[1], item.lower, item.upper, item.teacher, item.student, item.x0,
        delta=None if config.refine_mode is RefineMode.ALL else config.delta, solver=config.solver,
        refiners=config.refiners, device=str(resolve_device(config.device)), time_budget=config.milp_timeout,
        solve_limit=config.milp_timeout / 4, starts=item.witness.reshape(1, -1),
    )  # fmt: skip


def finish_refinement(
    pair: Pair, item: PendingRefinement, result: RefineResult, config: CertifyConfig
) -> PointResult:
    """Fold the refinement's result into the point's record: its bound, its witnesses (re-checked by
    onnxruntime), the verdict."""
    key = config.refine_key
    record = replace(item.record, bounds=dict(item.record.bounds), seconds=dict(item.record.seconds))
    record.bounds[key] = result.faith_ub
    if result.faith_ub < record.faith_ub:
        record.faith_ub, record.faith_ub_method = result.faith_ub, key
    witness = item.witness
    if result.witnesses:
        candidates = np.stack(result.witnesses).reshape(len(result.witnesses), *pair.input_shape)
        candidates = np.clip(
            candidates, item.lower.reshape(pair.input_shape), item.upper.reshape(pair.input_shape)
        )
        gaps = np.abs(pair.gap_onnxruntime(candidates.astype(np.float32)))
        k = int(gaps.max(axis=1).argmax())
        if gaps[k].max() > record.emp_lb and _inside(candidates[k], item):
            record.emp_lb, record.emp_lb_class = float(gaps[k].max()), int(gaps[k].argmax())
            witness = candidates[k].astype(np.float32)
    _check_sound(record.index, record.eps, record.emp_lb, record.faith_ub, record.faith_ub_method)
    record.milp = Refinement(
        faith_ub=result.faith_ub,
        solves=result.solves,
        exact=result.exact,
        timed_out=result.timed_out,
        out_of_reach=result.out_of_reach,
        solver=result.solver,
        refiners=key,
        eq6=result.eq6,
        coupled=result.coupled,
        won="coupled" if result.coupled is not None and result.coupled < result.eq6 else "eq6",
        searched=result.searched,
    )
    record.seconds[key] = result.seconds
    if config.delta is not None:
        verdict = decide(record.emp_lb, record.faith_ub, config.delta)
        record.verdict = verdict
        decided_by = _decider(verdict, record.faith_ub_method)
        if verdict is Verdict.VIOLATED and witness is not item.witness:
            decided_by = key  # an incumbent of the refinement was the witness
        record.decided_by = decided_by
        if verdict is Verdict.VIOLATED:
            record.witness = np.asarray(witness, dtype=np.float32).reshape(-1).tolist()
    return record


def _inside(x: np.ndarray, item: PendingRefinement) -> bool:
    flat = x.reshape(-1).astype(np.float32).astype(np.float64)
    return bool(np.all(flat >= item.lower) and np.all(flat <= item.upper))


def _show_stage(bar: Any, eps: float, name: str) -> None:
    bar.set_postfix(eps=eps, stage=name)


def certify(
    pair: Pair,
    x: np.ndarray,
    labels: np.ndarray | None,
    config: CertifyConfig,
    indices: np.ndarray | None = None,
    done: set[tuple[int, float]] | None = None,
    on_batch: Callable[[list[PointResult]], None] | None = None,
    progress: bool = True,
) -> list[PointResult]:
    """Run the pipeline over points ``x`` (in the model's input shape) and every eps of ``config``.

    ``done`` lists ``(index, eps)`` already computed (``--resume``); ``on_batch`` receives finished records as
    they come (the results file writer): a batch's screened points at once, then each refined point.
    """
    from tqdm.auto import tqdm

    if indices is None:
        indices = np.arange(len(x))
    done = done or set()
    device = resolve_device(config.device)
    bounder = PairBounder(pair, device, config.alpha_iterations)
    todo = [
        (eps, np.array([k for k, i in enumerate(indices) if (int(i), float(eps)) not in done], dtype=int))
        for eps in config.eps
    ]
    total = sum(len(t) for _, t in todo)
    out: list[PointResult] = []
    # Refinements run as executor tasks (here, a local pool or Ray: faithverify.executors) while the driver goes
    # on screening the next batch; the executor starts on the first point that needs it (a run that refines
    # nothing starts no pool and no Ray), and results are folded into records here, on the driver, as they come.
    executor: Executor | None = None
    waiting: dict[Hashable, PendingRefinement] = {}
    submitted = 0  # the key of the next task

    def emit(records: list[PointResult]) -> None:
        out.extend(records)
        if on_batch is not None and records:
            on_batch(records)
        bar.update(len(records))

    def collect(wait: bool) -> None:
        if executor is None:
            return
        for key, result in executor.results(wait=wait):
            emit([finish_refinement(pair, waiting.pop(key), result, config)])

    try:
        with tqdm(total=total, desc="certify", unit="pt", disable=not progress, dynamic_ncols=True) as bar:
            for eps, positions in todo:
                bar.set_postfix(eps=eps)
                for start in range(0, len(positions), config.batch_size):
                    chunk = positions[start : start + config.batch_size]
                    finished, pending = certify_batch(
                        pair, bounder, indices[chunk], x[chunk], None if labels is None else labels[chunk],
                        float(eps), config, device,
                        on_stage=partial(_show_stage, bar, eps),
                    )  # fmt: skip
                    emit(finished)
                    if pending and executor is None:
                        executor = open_executor(_refine_task, bounder.forms, config.executor)
                    for item in pending:
                        assert executor is not None
                        waiting[submitted] = item
                        executor.submit(submitted, (item, config))
                        submitted += 1
                    collect(wait=False)
            if waiting:
                bar.set_postfix(stage=f"{config.refine_key} on {len(waiting)} points")
            collect(wait=True)
    finally:
        # On an interrupt or error: outstanding tasks are cancelled (the records already written stay).
        if executor is not None:
            executor.close()
    return out
