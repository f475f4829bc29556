"""How far the EmpLB attack is from saturation on one point: the default attack beside much stronger ones.

Runs :func:`faithverify.attack.faithfulness_attack` on one point of a pair with the default settings and with
more classes, restarts and steps, re-checks every witness with onnxruntime and prints a table. A value that stops
growing with the effort says the point's worst gap is likely near it (an attack can only ever find a lower
bound), which tells whether an undecided point lacks a proof or a counterexample.

    python benchmarks/strong_attack.py --teacher old-pair/teacher.onnx --student old-pair/student-fd.onnx \\
        --index 7 --eps 0.05
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

from faithverify.attack import faithfulness_attack, input_box
from faithverify.attack_config import PGDConfig
from faithverify.pair import load_pair

REPO = Path(__file__).resolve().parents[1]
EFFORTS = (  # (steps, restarts, classes, seed)
    (100, 2, 3, 0),  # the default
    (300, 50, 10, 1),
    (1000, 100, 10, 2),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, default=REPO / "models/mnist/teacher.onnx")
    parser.add_argument("--student", type=Path, default=REPO / "models/mnist/student-fd.onnx")
    parser.add_argument(
        "--points", type=Path, default=None, help="npz with x (default: the teacher's sample.npz)"
    )
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pair = load_pair(args.teacher, args.student)
    sample = np.load(args.points or args.teacher.parent / "sample.npz")
    x0 = sample["x"][args.index : args.index + 1]
    domain = tuple(float(v) for v in sample["domain"]) if "domain" in sample else (0.0, 1.0)
    lower, upper = input_box(x0, args.eps, domain)  # type: ignore[arg-type]
    rows = []
    for steps, restarts, classes, seed in EFFORTS:
        config = PGDConfig(steps=steps, restarts=restarts, classes=classes, seed=seed)
        began = time.perf_counter()
        result = faithfulness_attack(
            pair.teacher.module, pair.student.module, x0, lower, upper, config, args.eps
        )
        seconds = time.perf_counter() - began
        checked = float(np.abs(pair.gap_onnxruntime(result.witness.astype(np.float32))).max())
        rows.append(
            f"| {steps} | {restarts} | {classes} | {checked:.5f} | {int(result.gap_class[0])} | {seconds:.1f} |"
        )
        print(rows[-1], flush=True)
    text = "\n".join(
        [
            f"Point {args.index} of `{args.teacher.parent.name}`, eps {args.eps:g}; {platform.machine()} CPU, 1 "
            f"thread. Command: `python benchmarks/strong_attack.py {' '.join(sys.argv[1:])}`",
            "",
            "| APGD steps | restarts | classes | gap (onnxruntime) | class | seconds |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
