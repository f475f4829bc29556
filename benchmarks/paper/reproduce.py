"""Reproduce the paper's Tables 1, 2 and 6 and Figures 3-4 from the shipped models of one dataset.

For the dataset's teacher and each of its four students (SD, ARD, RSLAD, FD) it runs the certify pipeline on
test points over the paper's eps grid and writes, under ``benchmarks/paper/results/``:

- ``<dataset>.md``: Table 1 (empirical distillation agreement, Def. 3), Table 2 (EmpLB and FaithUB, mean ± std),
  Table 6 (PGD-50 robust accuracy of the teacher and each student), and a check of the paper's qualitative
  claims against these numbers;
- ``<dataset>-emplb.png`` and ``<dataset>-faithub.png``: histograms of EmpLB and FaithUB per eps and student
  (the paper's Figures 3 and 4).

Per-point results stream to ``out/paper/<dataset>-<method>.jsonl`` (``--resume`` continues an interrupted run).

    FAITHVERIFY_DATA_ROOT=../shared/data python benchmarks/paper/reproduce.py --dataset mnist --n 1000
    python benchmarks/paper/reproduce.py --dataset cifar10 --n 1000 --resume
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
from faithverify.certify import CertifyConfig, certify
from faithverify.data import fit_to_input_shape, load_dataset
from faithverify.pair import load_pair
from faithverify.results import EpsSummary, PointResult, ResultsFile, read_results, summarize
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


def eps_label(dataset: str, eps: float) -> str:
    if dataset == "mnist":
        return f"{eps:g}"
    return f"{round(eps * 255)}/255"


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
    config = CertifyConfig(
        eps=list(eps_grid),
        methods=(BoundMethod.CROWN,),
        pgd=PGDConfig(steps=args.attack_steps, restarts=args.restarts, seed=0),
        robustness=True,
        batch_size=args.batch_size,
        device="auto",
    )
    out = REPO / "out" / "paper" / f"{dataset}-{method}.jsonl"
    settings = {
        "teacher": teacher.name,
        "student": student.name,
        "teacher_sha256": hashlib.sha256(teacher.read_bytes()).hexdigest(),
        "student_sha256": hashlib.sha256(student.read_bytes()).hexdigest(),
        "n": len(x),
        "attack_steps": args.attack_steps,
        "restarts": args.restarts,
        "methods": ["crown"],
    }
    results = ResultsFile(out, settings, resume=args.resume)
    started = time.perf_counter()
    try:
        certify(
            pair,
            xs,
            y,
            config,
            done=set(results.done),
            on_batch=results.write,
            progress=not args.quiet,
        )
    finally:
        results.close()
    seconds = time.perf_counter() - started
    _, points = read_results(out)
    return StudentRun(method, points, summarize(points), seconds)


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
    return out


def histograms(dataset: str, runs: dict[str, StudentRun], eps_grid: tuple[float, ...], what: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(eps_grid), figsize=(3.2 * len(eps_grid), 3.0), sharey=True)
    bins = np.linspace(0, 1, 26)
    for ax, eps in zip(np.atleast_1d(axes), eps_grid, strict=True):
        for method, run in runs.items():
            values = [p.emp_lb if what == "emplb" else p.faith_ub for p in run.points if p.eps == eps]
            ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=LABELS[method])
        ax.set_title(f"eps {eps_label(dataset, eps)}")
        ax.set_xlabel("EmpLB" if what == "emplb" else "FaithUB (CROWN)")
    np.atleast_1d(axes)[0].set_ylabel("points")
    np.atleast_1d(axes)[-1].legend(fontsize=8)
    fig.suptitle(f"{dataset}: {'EmpLB (PGD)' if what == 'emplb' else 'FaithUB (CROWN)'} per point")
    fig.tight_layout()
    path = RESULTS / f"{dataset}-{what}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def report(
    dataset: str, runs: dict[str, StudentRun], eps_grid: tuple[float, ...], n: int, total: float
) -> str:
    methods = list(runs)
    eps_cols = [eps_label(dataset, e) for e in eps_grid]
    t1 = table(
        ["student", *eps_cols],
        [[LABELS[m], *(f"{100 * by_eps(runs[m])[e].agreement:.1f}%" for e in eps_grid)] for m in methods],
    )
    t2_rows = []
    for m in methods:
        s = by_eps(runs[m])
        t2_rows.append([LABELS[m], "EmpLB", *(_ms(s[e].emp_lb.mean, s[e].emp_lb.std) for e in eps_grid)])
        t2_rows.append(["", "FaithUB", *(_ms(s[e].faith_ub.mean, s[e].faith_ub.std) for e in eps_grid)])
    t2 = table(["student", "bound", *eps_cols], t2_rows)
    first = by_eps(runs[methods[0]])
    t6_rows = [["teacher", f"{100 * first[eps_grid[0]].teacher_accuracy:.1f}%"]]
    t6_rows[0] += [f"{100 * first[e].teacher_robust_accuracy:.1f}%" for e in eps_grid]
    for m in methods:
        s = by_eps(runs[m])
        t6_rows.append(
            [LABELS[m], f"{100 * s[eps_grid[0]].student_accuracy:.1f}%"]
            + [f"{100 * s[e].student_robust_accuracy:.1f}%" for e in eps_grid]
        )
    t6 = table(["model", "clean", *eps_cols], t6_rows)
    timing = ", ".join(f"{LABELS[m]} {runs[m].seconds / 60:.1f} min" for m in methods)
    cards = []
    for m in ("teacher", *methods):
        r = get_recipe(f"{dataset}/{m}")
        cards.append(f"`{r.arch}` {m}: {r.describe_method()}")
    text = f"""# {dataset}: the paper's tables on the shipped models

Generated by `benchmarks/paper/reproduce.py --dataset {dataset} --n {n}` ({platform.machine()} CPU, torch
{torch.__version__}; {total / 60:.1f} min in all: {timing}). The first {n} test images, every eps of the paper's
grid. FaithUB is CROWN's sound bound through eq. 4-6 (no MILP); EmpLB is PGD on the softmax gap (50 steps, 3
restarts), re-checked with onnxruntime. Robust accuracy and agreement use 50-step PGD (step 2.5 eps / 50), so
they are upper bounds. The paper's own numbers are not reproduced beside ours: no copy of its tables is
available offline to this project, and its models differ from ours (see the model cards).

## Table 1: empirical distillation agreement (Def. 3)

Share of points where teacher and student agree at x0 and PGD on the student finds no disagreement in the ball.

{t1}

## Table 2: EmpLB and FaithUB (mean ± std)

The true worst-case gap of each point lies between its EmpLB and FaithUB.

{t2}

## Table 6: robust accuracy (PGD-50)

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
    parser.add_argument("--attack-steps", type=int, default=50)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    eps_grid = get_recipe(f"{args.dataset}/teacher").eval_eps
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
    path.write_text(report(args.dataset, runs, eps_grid, n, total))
    print(path.read_text())


if __name__ == "__main__":
    main()
