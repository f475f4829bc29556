"""What limits the joint MILP of one coupled term on one point: the softmax relaxation or the ReLU branching,
and how much the per-network logit-difference bounds it is built on matter.

For one point, radius and term ``sigma_cls(z_a) - sigma_cls(z_b)`` (``--above`` names network a) it builds the
joint MILP (bounds/milp/coupled_term.py) twice: on alpha-CROWN's logit-difference bounds, and on those with the
term's row (``z_j - z_cls`` for every j, both networks) solved by each network's own MILP within
``--row-timeout`` seconds per bound. Each model is then solved once per ``--time``; the table gives the sound
bound, the relaxed objective at the solver's best solution and the term's true value there (float64). A
relaxed objective near the true value with a bound far above both says the softmax relaxation is tight where
the solver looks, and what is left is the branching over ReLUs. ``--floor`` adds solves with the floor row at
each level given (backends.py: the search prunes below the level; the bound is never below it), side by side
with the solve without one ("-").

    python benchmarks/joint_term_diagnosis.py --teacher T.onnx --student S.onnx --index 7 --eps 0.05 \\
        --above student --cls 9 --time 60 300
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

# isort: off
import faithverify  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY before OpenMP starts)

# isort: on
import numpy as np
import torch

from faithverify.bounds.bounder import NetworkBounder
from faithverify.bounds.milp.coupled_term import CoupledTermMILP
from faithverify.bounds.milp.model import NetworkMILP
from faithverify.bounds.milp.tighten import MilpTightening
from faithverify.bounds.softmax import LogitDiffBounds, faithfulness_from_logit_bounds
from faithverify.methods import BoundMethod
from faithverify.pair import load_pair

REPO = Path(__file__).resolve().parents[1]


def row_solved(milp: NetworkMILP, base: LogitDiffBounds, cls: int, limit: float) -> LogitDiffBounds:
    """``base`` with row ``cls`` (``z_j - z_cls``) and column ``cls`` tightened by the network's MILP."""
    up, lo = base.upper[0].copy(), base.lower[0].copy()
    for j in range(milp.num_classes):
        if j == cls:
            continue
        up[cls, j] = min(up[cls, j], milp.max_logit_diff(cls, j, time_limit=limit).bound)  # max z_j - z_cls
        up[j, cls] = min(up[j, cls], milp.max_logit_diff(j, cls, time_limit=limit).bound)  # max z_cls - z_j
        lo[j, cls], lo[cls, j] = max(lo[j, cls], -up[cls, j]), max(lo[cls, j], -up[j, cls])
    return LogitDiffBounds(lower=lo[None], upper=up[None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, default=REPO / "models/mnist/teacher.onnx")
    parser.add_argument("--student", type=Path, default=REPO / "models/mnist/student-fd.onnx")
    parser.add_argument(
        "--points", type=Path, default=None, help="npz with x (default: the teacher's sample.npz)"
    )
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--above", choices=("teacher", "student"), default="teacher")
    parser.add_argument(
        "--cls", type=int, default=None, help="class (default: eq. 6's largest on the MILP rows)"
    )
    parser.add_argument("--row-timeout", type=float, default=10.0)
    parser.add_argument("--time", type=float, nargs="+", default=[60.0])
    parser.add_argument(
        "--milp-tightening", type=float, nargs=2, default=None, metavar=("LAYERS", "SECONDS"),
        help="per-neuron MILPs in the deepest LAYERS ReLU layers, SECONDS per neuron, before the row solves",
    )  # fmt: skip
    parser.add_argument(
        "--floor", type=float, nargs="*", default=[], help="levels for solves with a floor (and one without)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    pair = load_pair(args.teacher, args.student)
    sample = np.load(args.points or args.teacher.parent / "sample.npz")
    x0 = sample["x"][args.index].astype(np.float64).reshape(-1)
    low, high = (float(v) for v in sample["domain"]) if "domain" in sample else (0.0, 1.0)
    lower, upper = np.clip(x0 - args.eps, low, high), np.clip(x0 + args.eps, low, high)
    bodies = [m.module.flat_body() for m in (pair.teacher, pair.student)]
    milps, crown, tight, row_seconds, build_seconds = [], [], [], [], []
    cls = args.cls
    for body in bodies:
        bounder = NetworkBounder(body, len(x0), pair.num_classes)
        crown.append(
            bounder.logit_diff_bounds(
                torch.from_numpy(lower[None]), torch.from_numpy(upper[None]), BoundMethod.ALPHA_CROWN
            )
        )
        began = time.perf_counter()
        tightening = None
        if args.milp_tightening is not None:
            layers, seconds = args.milp_tightening
            tightening = MilpTightening(int(layers), seconds, seconds_per_layer=1e9)
        milps.append(NetworkMILP(body, lower, upper, milp_tightening=tightening))
        build_seconds.append(time.perf_counter() - began)
    if cls is None:
        cls = int(faithfulness_from_logit_bounds(*crown).argmax_class[0])
    for milp, base in zip(milps, crown, strict=True):
        began = time.perf_counter()
        tight.append(row_solved(milp, base, cls, args.row_timeout))
        row_seconds.append(time.perf_counter() - began)

    direction = 0 if args.above == "teacher" else 1
    rows = []
    for name, diffs in (("alpha-CROWN", crown), (f"row {cls} by MILP", tight)):
        joint = CoupledTermMILP(*milps, (diffs[0], diffs[1]))
        eq6 = float(faithfulness_from_logit_bounds(*diffs).per_class[0, cls])
        for limit in args.time:
            for floor in [None, *args.floor]:
                r = joint.term(direction, cls, time_limit=limit, below=floor, start=x0)
                incumbent = "-" if r.incumbent is None else f"{r.incumbent:.4f}"
                level = "-" if floor is None else f"{floor:g}"
                rows.append(
                    f"| {name} | {eq6:.4f} | {level} | {limit:g} | {r.bound:.4f} | {incumbent} | {r.reachable:.4f} "
                    f"| {r.status} |"
                )
                print(rows[-1], flush=True)
    binaries = [m.num_binaries for m in milps]
    text = "\n".join(
        [
            f"Point {args.index} of `{args.teacher.parent.name}/{args.points.name if args.points else 'sample.npz'}`,"
            f" eps {args.eps:g}, term sigma_{cls}({args.above}) - sigma_{cls}(other); binaries after "
            f"{'LP and MILP' if args.milp_tightening else 'LP'} tightening: teacher {binaries[0]}, student "
            f"{binaries[1]} (building the models: {build_seconds[0]:.0f} s and {build_seconds[1]:.0f} s); "
            f"row {cls} by each network's MILP "
            f"({args.row_timeout:g} s per bound): teacher {row_seconds[0]:.0f} s, student {row_seconds[1]:.0f} s. "
            f"{platform.machine()} CPU, 1 thread. Command: `python benchmarks/joint_term_diagnosis.py "
            f"{' '.join(sys.argv[1:])}`",
            "",
            "| logit-difference bounds | eq. 6 on this class | floor | seconds | joint MILP bound | relaxed objective "
            "at its best solution | term's true value there | status |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
