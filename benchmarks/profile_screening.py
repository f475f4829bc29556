"""Where CROWN screening spends its time on one device: cProfile of FaithUB for a large batch of the shipped
MNIST pair (with CUDA_LAUNCH_BLOCKING=1 on a GPU, so that kernel time lands on the Python call that launched it).

    CUDA_LAUNCH_BLOCKING=1 python benchmarks/profile_screening.py --device cuda --points 100000
    python benchmarks/profile_screening.py --method alpha-crown --points 100 --eps 0.0308 \
        --out benchmarks/results/profile_alpha_crown.md
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch

from faithverify.attack import input_box
from faithverify.bounds.bounder import BoundMethod, PairBounder
from faithverify.pair import load_pair

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--method", default="crown")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write the profile here (markdown)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pair = load_pair(REPO / "models/mnist/teacher.onnx", REPO / "models/mnist/student-fd.onnx")
    x = np.load(REPO / "models/mnist/sample.npz")["x"]
    x = np.concatenate([x] * (-(-args.points // len(x))))[: args.points]
    lo, hi = input_box(x, args.eps)
    bounder = PairBounder(pair, torch.device(args.device))
    method = BoundMethod(args.method)
    bounder.faith_ub(lo[:100], hi[:100], method)
    start = time.perf_counter()
    profile = cProfile.Profile()
    profile.enable()
    bounder.faith_ub(lo, hi, method)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    profile.disable()
    rate = args.points / (time.perf_counter() - start)
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
    # Paths of this machine stay out of a recorded profile.
    table = (
        out.getvalue().replace(str(REPO) + "/", "").replace(str(Path(torch.__file__).parents[1]) + "/", "")
    )
    print(f"{rate:.0f} points/s\n{table}")
    if args.out is not None:
        args.out.write_text(
            f"# Profile of {args.method} screening ({args.points} points, eps {args.eps:g}, {args.device}, "
            f"{args.threads} thread(s))\n\nCommand: `python benchmarks/profile_screening.py "
            f"{' '.join(sys.argv[1:])}`\n\n{rate:.0f} points/s (under cProfile)\n\n```\n{table}```\n"
        )


if __name__ == "__main__":
    main()
