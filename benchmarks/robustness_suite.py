"""`bench` on a local-robustness suite exported from a shipped classifier: solved counts and times per radius.

    python benchmarks/robustness_suite.py                      # MNIST teacher, 20 points, paper eps 0.1 0.2 0.3
    python benchmarks/robustness_suite.py --points 15 --timeout 20
    python benchmarks/robustness_suite.py --no-paper-units --eps 0.01 0.03 --work suite/   # pixel radii, keep files

The suite is what `faithverify export-robustness` writes (the same function: one instance per point and eps,
unsafe iff another class's logit reaches the label's), and it is run by the function behind `faithverify bench`
(one process, instances one after another). The table shows, per eps, the instances, the sat / unsat / unknown /
timeout / error counts, the share solved (sat or unsat), the mean and median seconds per instance (loading
included, as bench counts them) and which stage decided the solved ones (bench's `stage` column).

The shipped MNIST models read [0, 1] pixels; the paper's radii are on normalised pixels. With `--paper-units`
(the default) each eps is multiplied by the model card's normalisation std, as `benchmarks/gap.py` does.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from faithverify.bounds.milp import Solver
from faithverify.data import select_points
from faithverify.train.run import eps_scale
from faithverify.vnn.bench import run_suite
from faithverify.vnn.engine import Answer, Outcome
from faithverify.vnn.robustness_export import (
    INSTANCES,
    RobustnessSuite,
    export_robustness_suite,
    load_classifier,
)

REPO = Path(__file__).resolve().parents[1]
STAGES = ("attack", "crown", "milp")
SOLVED = (Outcome.SAT, Outcome.UNSAT)


@dataclass(frozen=True)
class EpsRow:
    """The bench results of one radius."""

    eps: float  # in the model's input units (pixels)
    label: str  # how the table names the radius
    counts: Counter[str]  # outcome -> instances
    stages: Counter[str]  # stage that decided the solved instances -> instances
    seconds: list[float]

    @property
    def instances(self) -> int:
        return len(self.seconds)

    @property
    def solved(self) -> int:
        return sum(self.counts[o.value] for o in SOLVED)


def summarize(eps: float, label: str, answers: Sequence[Answer]) -> EpsRow:
    counts = Counter(a.outcome.value for a in answers)
    stages = Counter(a.stage for a in answers if a.outcome in SOLVED)
    return EpsRow(eps, label, counts, stages, [a.seconds for a in answers])


def table(rows: Sequence[EpsRow]) -> list[str]:
    head = "| eps | instances | sat | unsat | unknown | timeout | error | solved | mean s | median s | decided by |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        counts = " | ".join(str(r.counts[o.value]) for o in Outcome)
        share = r.solved / r.instances if r.instances else 0.0
        decided = ", ".join(f"{s} {r.stages[s]}" for s in (*STAGES, *sorted(set(r.stages) - set(STAGES))))
        mean = statistics.fmean(r.seconds) if r.seconds else float("nan")
        median = statistics.median(r.seconds) if r.seconds else float("nan")
        lines.append(
            f"| {r.label} | {r.instances} | {counts} | {share:.0%} | {mean:.2f} | {median:.2f} | {decided} |"
        )
    return lines


def run_bench(
    suite_dir: Path, suite: RobustnessSuite, solver: Solver, milp: bool
) -> dict[float, list[Answer]]:
    """Every instance through bench's own runner, answers grouped by eps (printed as they finish)."""
    eps_of = {str((suite_dir / i.vnnlib).resolve()): i.eps for i in suite.instances}
    by_eps: dict[float, list[Answer]] = {i.eps: [] for i in suite.instances}
    summary = suite_dir / "results.csv"
    for inst, answer in run_suite(
        suite_dir / INSTANCES, summary, suite_dir / "results", solver=solver, milp=milp
    ):
        assert answer is not None  # a fresh summary: nothing is skipped
        by_eps[eps_of[str(inst.vnnlib.resolve())]].append(answer)
        print(
            f"{inst.vnnlib.name}: {answer.outcome.value} ({answer.stage}) in {answer.seconds:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    return by_eps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models/mnist/teacher.onnx")
    parser.add_argument(
        "--data",
        default=str(REPO / "models/mnist/sample.npz"),
        help="dataset name, folder or .npz (labelled)",
    )
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument(
        "--paper-units",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--eps in the paper's units, scaled to the model's pixel input by its card's recipe",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per instance")
    parser.add_argument("--solver", choices=[s.value for s in Solver], default=Solver.AUTO.value)
    parser.add_argument("--no-milp", action="store_true", help="attack and CROWN only")
    parser.add_argument("--work", type=Path, default=None, help="keep the suite and bench's files here")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/robustness_suite.md")
    args = parser.parse_args()

    # One torch thread, as the other benchmarks: the attack runs on one anyway, and the machine may be shared.
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    scale = eps_scale(args.model) if args.paper_units else 1.0
    grid = [e * scale for e in args.eps]
    model = load_classifier(args.model)
    points = select_points(
        args.data,
        model.input_shape,
        data_root=args.data_root,
        count=args.points,
        num_classes=model.num_classes,
    )
    with tempfile.TemporaryDirectory() as scratch:
        suite_dir = args.work or Path(scratch)
        started = time.perf_counter()
        suite = export_robustness_suite(
            model, points.x, points.labels, points.indices, grid, suite_dir, timeout=args.timeout
        )
        by_eps = run_bench(suite_dir, suite, Solver(args.solver), not args.no_milp)
        wall = time.perf_counter() - started

    rows = []
    for eps, answers in by_eps.items():
        label = f"{eps / scale:g} ({eps:.4g} px)" if scale != 1.0 else f"{eps:g}"
        rows.append(summarize(eps, label, answers))
    lines = table(rows)
    print("\n".join(lines))

    name = args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model.name
    units = (
        f"the paper's units (times the card's std {scale:g} for the model's pixels)"
        if args.paper_units
        else "pixels"
    )
    header = [
        "# `bench` on a local-robustness suite",
        "",
        f"Model: `{name}`; {suite.n_points} points of `{Path(args.data).name}` ({len(suite.misclassified)} "
        f"misclassified at x0: their instances are sat at every eps); eps in {units}; unsafe iff another class's "
        f"logit reaches the label's. Per-instance timeout {args.timeout:g} s, solver {args.solver}"
        f"{', no MILP' if args.no_milp else ''}; one process, instances one after another; machine "
        f"{platform.machine()}, {os.cpu_count()} CPUs (load average {load:.1f} at the start), torch "
        f"{torch.__version__}, 1 torch thread. Export and bench took {wall:.0f} s in all.",
        "",
        f"Command: `python benchmarks/robustness_suite.py {' '.join(sys.argv[1:])}`",
        "",
        "Seconds are per instance, loading included (as `bench` counts them); `decided by` is the stage that "
        "answered the solved instances (`bench`'s `stage` column).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join([*header, *lines, ""]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
