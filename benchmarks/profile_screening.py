"""Where CROWN screening spends its time on one device: cProfile of FaithUB for a large batch of the shipped
MNIST pair (with CUDA_LAUNCH_BLOCKING=1 on a GPU, so that kernel time lands on the Python call that launched it).

    CUDA_LAUNCH_BLOCKING=1 python benchmarks/profile_screening.py --device cuda --points 100000
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
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
    args = parser.parse_args()
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
    print(f"{args.points / (time.perf_counter() - start):.0f} points/s")
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
    print(out.getvalue())


if __name__ == "__main__":
    main()
