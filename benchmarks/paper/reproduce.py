"""Reproduce the paper's Tables 1, 2 and 6 and Figures 3-4 from the shipped models of one dataset, with the
paper's numbers beside ours.

For the dataset's teacher and each of its four students (SD, ARD, RSLAD, FD) it runs the certify pipeline over
the paper's eps grid and writes, under ``benchmarks/paper/results/``:

- ``<dataset>.md``: Table 1 (empirical distillation agreement, Def. 3), Table 2 (EmpLB and FaithUB), Table 6
  (PGD-50 robust accuracy), each as ours, the paper's and the difference, with the sample sizes; and a check of
  the paper's qualitative claims on our numbers;
- ``<dataset>-emplb.png`` and ``<dataset>-faithub.png``: the paper's Figures 3 and 4 (EmpLB and FaithUB
  histograms, the four students side by side, one row per eps).

Table 2 has three FaithUB columns: CROWN through eq. 4-6 on the first ``--n`` test points; and, on a random
sample of ``--exact-n`` of them (seed 0), the paper's own bound (eq. 4-6 on exact per-network bounds: branch and
bound and the MILP, ``--exact-timeout`` seconds per point, a stopped search contributing its sound bound) and our
tightest (the same, with the coupled bound).

Per-point results stream to ``out/paper/`` (``--resume`` continues an interrupted run).

    FAITHVERIFY_DATA_ROOT=../shared/data python benchmarks/paper/reproduce.py --dataset mnist --n 1000
    python benchmarks/paper/reproduce.py --dataset cifar10 --n 1000 --exact-n 50 --exact-timeout 30 --resume
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import time
from dataclasses import dataclass
from pathlib import Path

# isort: off
import faithverify  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY before OpenMP starts)

# isort: on
import numpy as np
import torch

from faithverify.attack import PGDConfig
from faithverify.bounds.bounder import BoundMethod
from faithverify.bounds.portfolio import Refiner
from faithverify.certify import CertifyConfig, RefineMode, certify
from faithverify.data import fit_to_input_shape, load_dataset
from faithverify.executors import connect_ray
from faithverify.pair import load_pair
from faithverify.results import EpsSummary, PointResult, ResultsFile, read_results, summarize
from faithverify.train import paper_numbers as paper
from faithverify.train.recipes import STUDENT_METHODS, get_recipe

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "paper" / "results"
LABELS = {"sd": "SD", "ard": "ARD", "rslad": "RSLAD", "fd": "FD"}


@dataclass
class StudentRun:
    method: str
    points: list[PointResult]
    rows: list[EpsSummary]
    seconds: float
    exact: list[PointResult] | None = None  # the exact-bound sample (refinement of every point)
    exact_seconds: float = 0.0


def eps_scale(dataset: str) -> float:
    """Pixels per unit of the paper's radii for this dataset's models (their recipes' normalisation std)."""
    return get_recipe(f"{dataset}/teacher").eps_scale


def eps_label(dataset: str, eps: float) -> str:
    """A pixel radius as the paper writes it (its units), with the pixel value where they differ."""
    scale = eps_scale(dataset)
    theirs = eps / scale
    text = f"{theirs:g}" if dataset == "mnist" else f"{round(theirs * 255)}/255"
    return text if scale == 1.0 else f"{text} ({eps:.4g} px)"


def paper_cell(row: dict[float, float | None], dataset: str, eps: float) -> float | None:
    """The paper's value at the pixel radius ``eps`` (its tables are keyed by radii in its own units)."""
    scale = eps_scale(dataset)
    return next((v for k, v in row.items() if abs(k * scale - eps) < 1e-9), None)


def _certify_to_file(
    pair, x: np.ndarray, y: np.ndarray | None, indices: np.ndarray, config: CertifyConfig, out: Path,
    settings: dict[str, object], args: argparse.Namespace,
) -> tuple[list[PointResult], float]:  # fmt: skip
    results = ResultsFile(out, settings, resume=args.resume)
    started = time.perf_counter()
    try:
        certify(pair, x, y, config, indices=indices, done=set(results.done), on_batch=results.write,
                progress=not args.quiet)  # fmt: skip
    finally:
        results.close()
    _, points = read_results(out)
    return points, time.perf_counter() - started


def run_student(
    dataset: str,
    method: str,
    x: np.ndarray,
    y: np.ndarray,
    eps_grid: tuple[float, ...],
    args: argparse.Namespace,
) -> StudentRun:
    models = REPO / "models" / dataset
    teacher, student = models / "teacher.onnx", models / f"student-{method}.onnx"
    pair = load_pair(teacher, student)
    xs = fit_to_input_shape(x, pair.input_shape)
    common = {
        "teacher_sha256": hashlib.sha256(teacher.read_bytes()).hexdigest(),
        "student_sha256": hashlib.sha256(student.read_bytes()).hexdigest(),
    }
    config = CertifyConfig(
        eps=list(eps_grid), methods=(BoundMethod.CROWN,), pgd=PGDConfig(), robustness=True,
        batch_size=args.batch_size, device="auto",
    )  # fmt: skip
    out = REPO / "out" / "paper" / f"{dataset}-{method}.jsonl"
    settings = {**common, "n": len(x), "methods": ["crown"], "pgd": str(config.pgd)}
    points, seconds = _certify_to_file(pair, xs, y, np.arange(len(x)), config, out, settings, args)
    run = StudentRun(method, points, summarize(points), seconds)
    if args.exact_n > 0 and method in args.exact_students:
        # The paper's bound on a random sample: exact per-network bounds (BaB, MILP) and eq. 4-6, plus ours.
        sample = np.sort(
            np.random.default_rng(0).choice(len(x), size=min(args.exact_n, len(x)), replace=False)
        )
        config = CertifyConfig(
            eps=list(eps_grid), methods=(BoundMethod.CROWN, BoundMethod.ALPHA_CROWN, BoundMethod.COUPLED),
            pgd=PGDConfig(), robustness=False, device="auto", refine_mode=RefineMode.ALL,
            refiners=(Refiner.BAB, Refiner.MILP), milp_timeout=args.exact_timeout, jobs=args.jobs, ray=args.ray,
            refine_known=True,  # the paper's eq. 4-6 on exact bounds for every point, known ones too
        )  # fmt: skip
        out = REPO / "out" / "paper" / f"{dataset}-{method}-exact.jsonl"
        settings = {**common, "sample": sample.tolist(), "timeout": args.exact_timeout, "refine": "bab+milp"}
        run.exact, run.exact_seconds = _certify_to_file(
            pair, xs[sample], None, sample, config, out, settings, args
        )
    return run


def _ms(v: float, std: float) -> str:
    return f"{v:.3f} ± {std:.3f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def by_eps(run: StudentRun) -> dict[float, EpsSummary]:
    return {r.eps: r for r in run.rows}


VACUOUS = 0.99  # a mean FaithUB above this says nothing: every student's bound is near 1 at that eps


def claims(runs: dict[str, StudentRun], eps_grid: tuple[float, ...]) -> list[str]:
    """The paper's qualitative claims, checked on means per eps. FaithUB claims count only the eps where some
    student's mean FaithUB is informative (below VACUOUS)."""

    def mean(method: str, e: float, what: str) -> float:
        if what == "exact":  # the paper's own bound (eq. 4-6 on exact per-network bounds) on the sample
            return _exact_summary(runs[method].exact or [], e)[0]
        r = by_eps(runs[method])[e]
        return {"ub": r.faith_ub.mean, "lb": r.emp_lb.mean, "agree": r.agreement}[what]

    def verdict(pred, grid) -> str:  # type: ignore[no-untyped-def]
        held = [e for e in grid if pred(e)]
        skipped = len(eps_grid) - len(grid)
        text = f"holds at {len(held)} of {len(grid)} eps"
        return text + (f" ({skipped} eps left out: every FaithUB there is vacuous)" if skipped else "")

    informative = tuple(e for e in eps_grid if min(mean(m, e, "ub") for m in runs) < VACUOUS)
    out = []
    adversarial = [m for m in ("ard", "rslad", "fd") if m in runs]
    if "sd" in runs and adversarial:
        below = lambda what: lambda e: all(mean(m, e, what) < mean("sd", e, what) for m in adversarial)  # noqa: E731
        out.append(
            f"Adversarial students (ARD, RSLAD, FD) have a lower mean EmpLB than SD: {verdict(below('lb'), eps_grid)}."
        )
        out.append(f"... and a lower mean FaithUB than SD: {verdict(below('ub'), informative)}.")
        higher = lambda e: all(mean(m, e, "agree") > mean("sd", e, "agree") for m in adversarial)  # noqa: E731
        out.append(f"... and a higher distillation agreement than SD: {verdict(higher, eps_grid)}.")
    if "fd" in runs and len(runs) > 1:
        others = [m for m in runs if m != "fd"]
        lowest = lambda what: lambda e: all(mean("fd", e, what) < mean(m, e, what) for m in others)  # noqa: E731
        out.append(f"FD has the lowest mean EmpLB of the four students: {verdict(lowest('lb'), eps_grid)}.")
        out.append(
            f"FD has the lowest mean FaithUB of the four students: {verdict(lowest('ub'), informative)}."
        )
        if all(runs[m].exact for m in runs):
            sampled = tuple(e for e in eps_grid if min(mean(m, e, "exact") for m in runs) < VACUOUS)
            out.append(
                "... and the lowest mean of the paper's own bound (eq. 4-6 on exact bounds, the sample): "
                f"{verdict(lowest('exact'), sampled)}."
            )
    return out


def histograms(dataset: str, runs: dict[str, StudentRun], eps_grid: tuple[float, ...], what: str) -> Path:
    """The paper's Figures 3 (EmpLB) and 4 (FaithUB): one row per eps, the students side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(runs)
    fig, axes = plt.subplots(
        len(eps_grid),
        len(methods),
        figsize=(2.6 * len(methods), 1.9 * len(eps_grid)),
        sharex=True,
        squeeze=False,
    )
    bins = np.linspace(0, 1, 26)
    for row, eps in enumerate(eps_grid):
        for col, method in enumerate(methods):
            ax = axes[row][col]
            values = [
                p.emp_lb if what == "emplb" else p.faith_ub for p in runs[method].points if p.eps == eps
            ]
            ax.hist(values, bins=bins, color="#3182bd" if what == "emplb" else "#e6550d")
            if row == 0:
                ax.set_title(LABELS[method])
            if col == 0:
                ax.set_ylabel(f"eps {eps_label(dataset, eps)}")
    label = "EmpLB (attack)" if what == "emplb" else "FaithUB (CROWN, eq. 4-6)"
    for ax in axes[-1]:
        ax.set_xlabel(label)
    fig.suptitle(f"{dataset}: {label} per point")
    fig.tight_layout()
    path = RESULTS / f"{dataset}-{what}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _vs(ours: float, theirs: float | None, scale: float = 1.0, digits: int = 3, unit: str = "") -> list[str]:
    """[ours, paper, difference] as table cells."""
    if theirs is None:
        return [f"{scale * ours:.{digits}f}{unit}", "?", "-"]
    return [
        f"{scale * ours:.{digits}f}{unit}",
        f"{theirs:.{digits}f}{unit}",
        f"{scale * ours - theirs:+.{digits}f}",
    ]


def _work_per_point(points: list[PointResult] | None) -> float:
    """Mean seconds of work per point over all its stages (batch stages amortised), read from the records, so
    a resumed run reports the same figure as one that ran straight through."""
    if not points:
        return float("nan")
    return float(np.mean([sum(p.seconds.values()) for p in points]))


def _exact_summary(points: list[PointResult], eps: float) -> tuple[float, float, int, int]:
    """Mean eq. 4-6 bound with exact per-network bounds, mean of our tightest, points out of time, points."""
    at = [p for p in points if p.eps == eps and p.milp is not None]
    if not at:
        return float("nan"), float("nan"), 0, 0
    eq6 = float(np.mean([min(float(p.milp.eq6), p.bounds.get("crown", 1.0)) for p in at]))
    best = float(np.mean([p.faith_ub for p in at]))
    timed = sum(1 for p in at if p.milp and p.milp.timed_out)
    return eq6, best, timed, len(at)


def report(
    dataset: str, runs: dict[str, StudentRun], eps_grid: tuple[float, ...], n: int, total: float,
    args: argparse.Namespace,
) -> str:  # fmt: skip
    methods = list(runs)
    labels = [eps_label(dataset, e) for e in eps_grid]

    def paper_at(
        numbers: dict[str, dict[str, dict[float, float | None]]], model: str, e: float
    ) -> float | None:
        return paper_cell(numbers[dataset][model], dataset, e)

    t1_rows = []
    for m in methods:
        s = by_eps(runs[m])
        for e, lab in zip(eps_grid, labels, strict=True):
            t1_rows.append(
                [
                    LABELS[m],
                    lab,
                    *_vs(s[e].agreement, paper_at(paper.AGREEMENT, m, e), 100, 1, "%"),
                ]
            )
    t1 = table(["student", "eps", "ours", "paper", "diff"], t1_rows)
    t2_rows = []
    for m in methods:
        s = by_eps(runs[m])
        for e, lab in zip(eps_grid, labels, strict=True):
            eq6, best, timed, size = _exact_summary(runs[m].exact or [], e)
            theirs = paper_at(paper.FAITH_UB, m, e)
            t2_rows.append([
                LABELS[m], lab, *_vs(s[e].emp_lb.mean, paper_at(paper.EMP_LB, m, e)),
                f"{s[e].faith_ub.mean:.3f} ± {s[e].faith_ub.std:.3f}",
                "-" if not size else f"{eq6:.3f} ({timed}/{size} out of time)",
                "-" if not size else f"{best:.3f}",
                f"{theirs:.3f}" if theirs is not None else "?",
                "-" if not size or theirs is None else f"{eq6 - theirs:+.3f} / {best - theirs:+.3f}",
            ])  # fmt: skip
    t2 = table(
        ["student", "eps", "EmpLB ours", "paper", "diff", f"FaithUB CROWN (n={n})",
         "FaithUB eq. 4-6, exact bounds (sample)", "FaithUB ours, tightest (sample)", "paper FaithUB",
         "diff (eq. 4-6 / tightest)"],
        t2_rows,
    )  # fmt: skip
    first = by_eps(runs[methods[0]])
    t6_rows = [
        [
            "teacher",
            "clean",
            *_vs(first[eps_grid[0]].teacher_accuracy, paper.CLEAN[dataset]["teacher"], 100, 1, "%"),
        ]
    ]
    for e, lab in zip(eps_grid, labels, strict=True):
        t6_rows.append(
            [
                "teacher",
                lab,
                *_vs(
                    first[e].teacher_robust_accuracy,
                    paper_at(paper.ROBUST, "teacher", e),
                    100,
                    1,
                    "%",
                ),
            ]
        )
    for m in methods:
        s = by_eps(runs[m])
        t6_rows.append(
            [LABELS[m], "clean", *_vs(s[eps_grid[0]].student_accuracy, paper.CLEAN[dataset][m], 100, 1, "%")]
        )
        for e, lab in zip(eps_grid, labels, strict=True):
            t6_rows.append(
                [
                    LABELS[m],
                    lab,
                    *_vs(
                        s[e].student_robust_accuracy,
                        paper_at(paper.ROBUST, m, e),
                        100,
                        1,
                        "%",
                    ),
                ]
            )
    t6 = table(["model", "eps", "ours", "paper", "diff"], t6_rows)
    timing = ", ".join(
        f"{LABELS[m]} {runs[m].seconds / 60:.1f} + {runs[m].exact_seconds / 60:.1f} min" for m in methods
    )
    exact_work = ", ".join(
        f"{LABELS[m]} {_work_per_point(runs[m].exact):.1f} s" for m in methods if runs[m].exact
    )
    # A resumed run's clock misses the records it read back; the per-point work below does not.
    clock = "" if args.resume else f"; screening + exact sample per student: {timing}"
    resumed = " in this run (`--resume`: it read back earlier records)" if args.resume else ""
    per_point = (
        f" (mean seconds per point over all its stages, from the records: {exact_work})" if exact_work else ""
    )
    cards = []
    for m in ("teacher", *methods):
        r = get_recipe(f"{dataset}/{m}")
        cards.append(f"`{r.arch}` {m}: {r.describe_method()}")
    sample = (
        f"a random sample of {args.exact_n} of them (seed 0), for {', '.join(LABELS[m] for m in args.exact_students)}"
        if args.exact_n
        else "no sample"
    )
    command = (
        f"benchmarks/paper/reproduce.py --dataset {dataset} --n {n} --exact-n {args.exact_n} "
        f"--exact-timeout {args.exact_timeout:g} --jobs {args.jobs} --exact-students {' '.join(args.exact_students)}"
    )
    text = f"""# {dataset}: the paper's tables on the shipped models, beside the paper's

Generated by `{command}` ({platform.machine()} CPU, torch {torch.__version__}; {total / 60:.1f} min
in all{resumed}{clock}). Points: the first {n} test images, every eps of the paper's grid; {sample} for the exact
bounds{per_point}. EmpLB is our attack (one objective per class and sign, APGD
steps, restarts), re-checked with onnxruntime. Robust accuracy and agreement use the paper's PGD-50 (step
2.5 eps / 50), so they are upper bounds. The paper's numbers are copied from its tables; "?" marks a cell our
copy of the paper does not show.

## Table 1: empirical distillation agreement (Def. 3)

Share of points where teacher and student agree at x0 and PGD on the student finds no disagreement in the ball.

{t1}

## Table 2: EmpLB and FaithUB (means)

The true worst-case gap of each point lies between its EmpLB and FaithUB. "eq. 4-6, exact bounds" is the
paper's own bound: exact per-network logit-difference bounds (branch and bound, then the MILP, within
{args.exact_timeout:g} s per point; a search that runs out of time contributes its sound bound, never an
incumbent) through eq. 4-6; "tightest" adds the coupled bound (`faithverify/bounds/coupled.py`).

{t2}

## Table 6: clean and robust accuracy (PGD-50) on the same {n} points

{t6}

## Figures 3 and 4

![EmpLB histograms]({dataset}-emplb.png)

![FaithUB histograms]({dataset}-faithub.png)

## The paper's qualitative claims on these models

""" + "\n".join(f"- {c}" for c in claims(runs, eps_grid))
    text += "\n\n## Models\n\n" + "\n".join(f"- {c}" for c in cards) + "\n"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("mnist", "fashion-mnist", "cifar10"), required=True)
    parser.add_argument("--n", type=int, default=1000, help="test points (the first n)")
    parser.add_argument("--methods", nargs="+", default=list(STUDENT_METHODS), choices=STUDENT_METHODS)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--exact-n", type=int, default=200, help="points in the exact-bound sample (0: none)")
    parser.add_argument("--exact-timeout", type=float, default=10.0, help="refinement seconds per point")
    parser.add_argument("--jobs", type=int, default=1, help="processes for the exact bounds")
    parser.add_argument(
        "--ray", default=None, metavar="ADDRESS",
        help="run the exact bounds' points as Ray tasks: local (this machine, --jobs CPUs), auto, or an address",
    )  # fmt: skip
    parser.add_argument(
        "--exact-students", nargs="+", default=list(STUDENT_METHODS), choices=STUDENT_METHODS,
        help="students that get the exact-bound sample (default: all)",
    )  # fmt: skip
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.ray is not None:
        # One connection for the whole run: every certify call below joins it (faithverify.executors).
        connect_ray(args.ray, args.jobs)

    # The paper's grid on the models' pixel inputs (its MNIST and Fashion-MNIST radii are normalised units).
    recipe = get_recipe(f"{args.dataset}/teacher")
    eps_grid = tuple(recipe.pixel_eps(e) for e in recipe.eval_eps)
    test = load_dataset(args.dataset, "test", data_root=args.data_root)
    n = min(args.n, len(test.x))
    x, y = test.x[:n], test.y[:n]
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs = {}
    for method in args.methods:
        print(f"{args.dataset} {method}: {n} points x {len(eps_grid)} eps", flush=True)
        runs[method] = run_student(args.dataset, method, x, y, eps_grid, args)
    total = time.perf_counter() - started
    for what in ("emplb", "faithub"):
        histograms(args.dataset, runs, eps_grid, what)
    path = RESULTS / f"{args.dataset}.md"
    path.write_text(report(args.dataset, runs, eps_grid, n, total, args))
    print(path.read_text())


if __name__ == "__main__":
    main()
