"""How many points `certify --delta` decides, and which stage decides them (issue 14's "at most 10% unknown").

    python benchmarks/delta_decisions.py                       # MNIST pair, 50 points, eps 0.1, delta 0.3, 10 s
    python benchmarks/delta_decisions.py --eps 0.05 --delta 0.1 0.2 --points 100
    python benchmarks/delta_decisions.py --paper-units --eps 0.1 0.15     # the paper's radii, mapped to pixels

For each (eps, delta): certified / violated / unknown, the stage that decided each point, how the refinements
ended (decided, given up as out of reach of every sound bound, out of time) and the refinement's median time.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from faithverify.attack_config import PGDConfig
from faithverify.certify import CertifyConfig, certify
from faithverify.methods import BoundMethod
from faithverify.pair import load_pair
from faithverify.train.run import eps_scale

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, default=REPO / "models/mnist/teacher.onnx")
    parser.add_argument("--student", type=Path, default=REPO / "models/mnist/student-fd.onnx")
    parser.add_argument("--points", type=int, default=50)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1])
    parser.add_argument("--delta", type=float, nargs="+", default=[0.3])
    parser.add_argument(
        "--paper-units",
        action="store_true",
        help="--eps in the paper's units: scaled to the models' pixel input by the teacher card's recipe",
    )
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "delta_decisions.md")
    args = parser.parse_args()

    torch.set_num_threads(1)
    pair = load_pair(args.teacher, args.student)
    x = np.load(args.teacher.parent / "sample.npz")["x"][: args.points]
    lines = [
        "| eps | delta | certified / violated / unknown | decided by | refined: decided / out of reach / out of "
        "time | refinement s (median) | total s |",
        "|---|---|---|---|---|---|---|",
    ]
    open_rows = [
        "| eps | delta | point | EmpLB | eq. 6 | coupled (after its search) | coupled terms searched | ended |",
        "|---|---|---|---|---|---|---|---|",
    ]
    scale = eps_scale(args.teacher)
    for paper_eps in args.eps:
        eps = paper_eps * scale if args.paper_units else paper_eps
        label = f"{eps / scale:g} ({eps:.4g} px)" if scale != 1.0 else f"{eps:g}"
        for delta in args.delta:
            config = CertifyConfig(
                eps=[eps], methods=(BoundMethod.CROWN, BoundMethod.COUPLED), pgd=PGDConfig(), robustness=False,
                device="cpu", delta=delta, milp_timeout=args.timeout,
            )  # fmt: skip
            start = time.perf_counter()
            points = certify(pair, x, None, config, progress=False)
            total = time.perf_counter() - start
            counts = [sum(p.verdict == v for p in points) for v in ("certified", "violated", "unknown")]
            by: dict[str, int] = {}
            for p in points:
                if p.decided_by:
                    by[p.decided_by] = by.get(p.decided_by, 0) + 1
            refined = [p for p in points if p.milp]
            decided = sum(p.verdict != "unknown" for p in refined)
            reach = sum(bool(p.milp and p.milp.out_of_reach) for p in refined)
            timed = sum(bool(p.milp and p.milp.timed_out) for p in refined)
            key = config.refine_key
            median = statistics.median(p.seconds.get(key, 0.0) for p in refined) if refined else 0.0
            lines.append(
                f"| {label} | {delta:g} | {' / '.join(map(str, counts))} | "
                f"{', '.join(f'{k} {n}' for k, n in sorted(by.items(), key=lambda kv: -kv[1]))} | "
                f"{decided} / {reach} / {timed} of {len(refined)} | {median:.1f} | {total:.0f} |"
            )
            print(lines[-1], flush=True)
            for p in refined:
                if p.verdict != "unknown" or p.milp is None:
                    continue
                m = p.milp
                ended = "out of reach" if m.out_of_reach else "out of time" if m.timed_out else "-"
                coupled = "-" if m.coupled is None else f"{m.coupled:.4f}"
                open_rows.append(
                    f"| {label} | {delta:g} | {p.index} | {p.emp_lb:.4f} | {m.eq6:.4f} | {coupled} | {m.searched} "
                    f"| {ended} |"
                )
    text = "\n".join([
        "# certify --delta: which points are decided, and by what",
        "",
        f"Pair `{args.teacher.name}` / `{args.student.name}` ({args.teacher.parent.name}); the first {len(x)} points "
        f"of its `sample.npz`; {args.timeout:g} s of refinement per point; {platform.machine()} CPU, 1 thread. "
        f"Command: `python benchmarks/delta_decisions.py {' '.join(sys.argv[1:])}`",
        "",
        *lines,
        "",
        "The points left unknown after their refinement (EmpLB below delta, every bound above it):",
        "",
        *open_rows,
        "",
    ])  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
