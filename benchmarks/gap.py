"""The gap between FaithUB and EmpLB, method by method, side by side in one run (issues 14 and 15).

    python benchmarks/gap.py                                     # shipped MNIST FD pair, 50 points, eps 0.1
    python benchmarks/gap.py --points 200 --eps 0.025 0.05 0.1 --timeout 10 --jobs 2
    python benchmarks/gap.py --paper-units --eps 0.1 0.15     # the paper's radii (normalised), mapped to pixels
    python benchmarks/gap.py --teacher models/fashion-mnist/teacher.onnx --student ... --data ...

Every method runs `certify` on the same points (the same attack, so EmpLB differs only where a refinement found
a better witness); the table shows, per eps and method, the mean FaithUB, the mean best EmpLB over all methods
(one reference for everyone), the share of points whose worst case is known to within 0.01 and 0.001 (FaithUB -
best EmpLB), and the seconds per point. "best of all" takes each point's smallest FaithUB. The paper's Table 2
value (MILP, all pairs, eq. 4-6) is shown where the pair is the shipped MNIST FD pair.

Methods:
- ``crown``, ``alpha-crown``: screening only (eq. 4-6 on each network's bounds);
- ``coupled``: alpha-CROWN, then the coupled bound (bounds/coupled.py) on top;
- ``bab``, ``milp-highs``, ``milp-gurobi``: the refinement stage on every point (``--bounds bab`` /
  ``--method milp``) within ``--timeout`` seconds per point, after alpha-CROWN and the coupled bound;
- ``portfolio``: branch and bound then the MILP (the default refinement), after alpha-CROWN and coupled.

The last part runs an independent, stronger attack (float64, 4 restarts x 200 steps of plain PGD per class and
sign, its own code) and counts the points where it beats the best EmpLB by more than 1e-3.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from faithverify.attack import input_box
from faithverify.attack_config import PGDConfig
from faithverify.bounds.bounder import BoundMethod
from faithverify.bounds.milp import Solver
from faithverify.bounds.portfolio import Refiner
from faithverify.certify import CertifyConfig, RefineMode, certify
from faithverify.data import load_dataset
from faithverify.pair import Pair, load_pair
from faithverify.results import PointResult
from faithverify.train.run import eps_scale

REPO = Path(__file__).resolve().parents[1]
PAPER_FD = {0.025: 0.054, 0.05: 0.094, 0.1: 0.248, 0.15: 0.588, 0.2: 0.884}  # Table 2, MNIST, FD, FaithUB

SCREEN = (BoundMethod.CROWN,)
ALPHA = (BoundMethod.CROWN, BoundMethod.ALPHA_CROWN)
COUPLED = (*ALPHA, BoundMethod.COUPLED)
ALL = RefineMode.ALL
METHODS: dict[str, dict[str, object]] = {
    "crown": {"methods": SCREEN, "refine_mode": RefineMode.NONE},
    "alpha-crown": {"methods": ALPHA, "refine_mode": RefineMode.NONE},
    "coupled": {"methods": COUPLED, "refine_mode": RefineMode.NONE},
    "bab": {"methods": COUPLED, "refine_mode": ALL, "refiners": (Refiner.BAB,)},
    "milp-highs": {
        "methods": COUPLED,
        "refine_mode": ALL,
        "refiners": (Refiner.MILP,),
        "solver": Solver.HIGHS,
    },
    "milp-gurobi": {
        "methods": COUPLED,
        "refine_mode": ALL,
        "refiners": (Refiner.MILP,),
        "solver": Solver.GUROBI,
    },
    "portfolio": {"methods": COUPLED, "refine_mode": ALL, "refiners": (Refiner.BAB, Refiner.MILP)},
}


def run(
    pair: Pair, x: np.ndarray, eps: float, name: str, timeout: float, jobs: int
) -> tuple[list[PointResult], float]:
    config = CertifyConfig(
        eps=[eps], pgd=PGDConfig(), robustness=False, device="cpu", milp_timeout=timeout, jobs=jobs,
        **METHODS[name],  # type: ignore[arg-type]
    )  # fmt: skip
    start = time.perf_counter()
    points = certify(pair, x, None, config, progress=False)
    return sorted(points, key=lambda p: p.index), time.perf_counter() - start


def reference_attack(
    pair: Pair, x: np.ndarray, eps: float, restarts: int = 4, steps: int = 200
) -> np.ndarray:
    """An independent float64 PGD: one objective per class and sign, fixed step 2.5 eps / steps after the
    first restart at x0, the others from random points; the gap re-checked by onnxruntime."""
    teacher = pair.teacher.module.double().eval()
    student = pair.student.module.double().eval()
    lower, upper = (torch.from_numpy(b) for b in input_box(x, eps))
    x0 = torch.from_numpy(np.asarray(x, np.float64))
    c = pair.num_classes
    best = np.abs(pair.gap_onnxruntime(np.asarray(x, np.float32))).max(axis=1)
    gen = torch.Generator().manual_seed(1234)
    step = 2.5 * eps / steps
    for r in range(restarts):
        for cls in range(c):
            for sign in (1.0, -1.0):
                xs = (
                    x0.clone()
                    if r == 0
                    else lower + torch.rand(x0.shape, generator=gen, dtype=x0.dtype) * (upper - lower)
                )
                for _ in range(steps):
                    xs.requires_grad_(True)
                    gap = torch.softmax(teacher(xs), -1)[:, cls] - torch.softmax(student(xs), -1)[:, cls]
                    (g,) = torch.autograd.grad((sign * gap).sum(), xs)
                    xs = torch.minimum(torch.maximum(xs.detach() + step * g.sign(), lower), upper)
                found = np.abs(pair.gap_onnxruntime(xs.numpy().astype(np.float32))).max(axis=1)
                best = np.maximum(best, found)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, default=REPO / "models/mnist/teacher.onnx")
    parser.add_argument("--student", type=Path, default=REPO / "models/mnist/student-fd.onnx")
    parser.add_argument(
        "--data", default=str(REPO / "models/mnist/sample.npz"), help="dataset name, folder or .npz"
    )
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--points", type=int, default=50)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1])
    parser.add_argument(
        "--paper-units",
        action="store_true",
        help="--eps in the paper's units: scaled to the models' pixel input by the teacher card's recipe",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="refinement seconds per point")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--reference-attack", type=int, default=40, help="points for the independent attack (0: skip)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gap.md")
    args = parser.parse_args()

    torch.set_num_threads(1)
    pair = load_pair(args.teacher, args.student)
    data = load_dataset(args.data, "test", data_root=args.data_root)
    x = data.x[: args.points].reshape(-1, *pair.input_shape)
    shipped_fd = args.student.name == "student-fd.onnx" and args.student.parent.name == "mnist"
    scale = eps_scale(args.teacher)
    grid = [e * scale for e in args.eps] if args.paper_units else list(args.eps)

    head = (
        "| eps | method | mean FaithUB | mean EmpLB (best) | exact within 0.01 | within 0.001 | s/point | coupled won "
        "| paper FD |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    extra: list[str] = []
    for eps in grid:
        paper_eps = eps / scale  # the radius in the paper's units (the models read pixels)
        label = f"{paper_eps:g} ({eps:.4g} px)" if scale != 1.0 else f"{eps:g}"
        results: dict[str, tuple[list[PointResult], float]] = {}
        for name in args.methods:
            results[name] = run(pair, x, eps, name, args.timeout, args.jobs)
            print(f"eps {label} {name}: {results[name][1]:.0f} s", file=sys.stderr, flush=True)
        emp = np.max([[p.emp_lb for p in pts] for pts, _ in results.values()], axis=0)
        best_ub = np.min([[p.faith_ub for p in pts] for pts, _ in results.values()], axis=0)
        rows = [
            (name, np.array([p.faith_ub for p in pts]), total, pts) for name, (pts, total) in results.items()
        ]
        rows.append(("best of all", best_ub, float("nan"), []))
        for name, ub, total, pts in rows:
            won = sum(
                1
                for p in pts
                if p.faith_ub_method == "coupled" or (p.milp is not None and p.milp.won == "coupled")
            )
            theirs = next((v for k, v in PAPER_FD.items() if abs(k - paper_eps) < 1e-3), None)
            paper = f"{theirs:.3f}" if shipped_fd and theirs is not None else "-"
            per_point = "-" if np.isnan(total) else f"{total / len(x):.2f}"
            lines.append(
                f"| {label} | {name} | {ub.mean():.4f} | {emp.mean():.4f} | {np.mean(ub - emp <= 0.01):.0%} "
                f"| {np.mean(ub - emp <= 1e-3):.0%} | {per_point} | {won if pts else '-'} | {paper} |"
            )
            print(lines[-1], flush=True)
        if args.reference_attack:
            k = min(args.reference_attack, len(x))
            strong = reference_attack(pair, x[:k], eps)
            beaten = int(np.sum(strong > emp[:k] + 1e-3))
            extra.append(
                f"- eps {label}: the independent attack beat the best EmpLB by more than 1e-3 on {beaten} of {k} "
                f"points (its mean {strong.mean():.4f}, ours {emp[:k].mean():.4f})."
            )
            print(extra[-1], flush=True)

    header = [
        "# FaithUB against EmpLB, method by method",
        "",
        f"Pair: `{args.teacher.relative_to(REPO) if args.teacher.is_relative_to(REPO) else args.teacher.name}` / "
        f"`{args.student.relative_to(REPO) if args.student.is_relative_to(REPO) else args.student.name}`; "
        f"{len(x)} points of `{Path(args.data).name}`; refinement budget {args.timeout:g} s per point, "
        f"{args.jobs} process(es); machine {platform.machine()}, torch {torch.__version__}, 1 torch thread.",
        "",
        f"Command: `python benchmarks/gap.py {' '.join(sys.argv[1:])}`",
        "",
    ]
    text = "\n".join([*header, *lines, "", "Independent attack:", "", *extra, ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
