"""Screening throughput and tightness on the shipped MNIST pair: every screening method side by side, the
native engine against auto_LiRPA (the independent reference), on the CPU or a GPU.

    python benchmarks/screening_throughput.py                          # CPU; writes results/screening_throughput.md
    python benchmarks/screening_throughput.py --device cuda --points 50000 --batch-sizes 1000 10000 50000 \\
        --out benchmarks/results/screening_throughput_gpu.md

Each row bounds every logit difference of both networks (90 rows each) for all points and turns them into
FaithUB (eq. 4-6); "points/s" counts pairs of networks. The "max |Δd|" column compares the native CROWN's
logit-difference lower bounds with auto_LiRPA's CROWN on the same points (they implement the same bound).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from faithverify.attack import input_box
from faithverify.bounds.bounder import BoundMethod, Engine, PairBounder
from faithverify.data import load_dataset
from faithverify.pair import load_pair

REPO = Path(__file__).resolve().parents[1]


def points(n: int) -> tuple[np.ndarray, str]:
    root = os.environ.get("FAITHVERIFY_DATA_ROOT")
    if root and (Path(root) / "mnist").is_dir():
        data = load_dataset("mnist", data_root=root)
        x = data.x.reshape(len(data.x), -1)
        reps = -(-n // len(x))
        return np.concatenate([x] * reps)[:n], f"the first {n} MNIST test images (repeated past 10,000)"
    sample = load_dataset(REPO / "models" / "mnist" / "sample.npz")
    reps = -(-n // len(sample.x))
    return np.concatenate([sample.x] * reps)[:n], f"{n} points: models/mnist/sample.npz repeated"


def _timed_run(
    bounder: PairBounder, lo: np.ndarray, hi: np.ndarray, method: BoundMethod, batch: int
) -> tuple[float, np.ndarray]:
    """Seconds to compute FaithUB for every box in batches (device work included), and the values."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    values = [
        bounder.faith_ub(lo[s : s + batch], hi[s : s + batch], method) for s in range(0, len(lo), batch)
    ]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, np.concatenate(values)


def _row(eps: float, name: str, n: int, batch: int, rate: float, mean: float, diff: str) -> str:
    # "points": mean FaithUB compares across rows only where it is the same (the slow rows bound fewer).
    return f"| {eps:g} | {name} | {n} | {batch} | {rate:.0f} | {mean:.4f} | {diff} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.025, 0.05, 0.1])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 250, 1000])
    parser.add_argument("--alpha-points", type=int, default=200, help="points for alpha-CROWN (it is slower)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-auto-lirpa", action="store_true", help="skip the auto_LiRPA reference rows")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "screening_throughput.md"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pair = load_pair(REPO / "models/mnist/teacher.onnx", REPO / "models/mnist/student-fd.onnx")
    x, source = points(args.points)
    # alpha-CROWN runs at most 20 iterations everywhere: the native default stops early once converged
    # (bounder.ALPHA_MIN_GAIN), "native, 20 fixed" and auto_LiRPA run all 20.
    engines = {
        "native": PairBounder(pair, device),
        "native, 20 fixed": PairBounder(pair, device, alpha_min_gain=None),
    }
    if not args.no_auto_lirpa:
        engines["auto_LiRPA"] = PairBounder(pair, device, engine=Engine.AUTO_LIRPA)
    runs = [
        (BoundMethod.IBP, "native"),
        (BoundMethod.CROWN, "native"),
        (BoundMethod.ALPHA_CROWN, "native"),
        (BoundMethod.ALPHA_CROWN, "native, 20 fixed"),
        (BoundMethod.COUPLED, "native"),
        (BoundMethod.CROWN, "auto_LiRPA"),
        (BoundMethod.ALPHA_CROWN, "auto_LiRPA"),
    ]
    # Warm-up: the first call of each path pays one-off costs (allocator, kernels, auto_LiRPA's set-up).
    lo_w, hi_w = input_box(x[:8], args.eps[0])
    for method, engine in runs:
        if engine in engines:
            engines[engine].faith_ub(lo_w, hi_w, method)

    rows = []
    for eps in args.eps:
        lo, hi = input_box(x, eps)
        reference = None
        if "auto_LiRPA" in engines:
            reference = engines["auto_LiRPA"].logit_bounds(lo[:1000], hi[:1000], BoundMethod.CROWN)
        for method, engine in runs:
            if engine not in engines:
                continue
            slow = method is BoundMethod.ALPHA_CROWN or engine == "auto_LiRPA"
            n = min(len(x), args.alpha_points) if slow else len(x)
            for batch in args.batch_sizes:
                if batch > n:
                    continue
                bounder = engines[engine]
                seconds, values = _timed_run(bounder, lo[:n], hi[:n], method, batch)
                diff = "-"
                if method is BoundMethod.CROWN and engine == "native" and reference is not None:
                    mine = bounder.logit_bounds(lo[:1000], hi[:1000], BoundMethod.CROWN)
                    diff = f"{max(float(np.abs(mine[k].lower - reference[k].lower).max()) for k in range(2)):.1e}"
                rows.append(
                    (eps, f"{method.value} ({engine})", n, batch, n / seconds, float(values.mean()), diff)
                )
                print(_row(*rows[-1]), flush=True)

    lines = [
        "| eps | method | points | batch | points/s | mean FaithUB | max abs diff of d_ij vs auto_LiRPA CROWN |"
    ]
    lines.append("|---|---|---|---|---|---|---|")
    lines += [_row(*row) for row in rows]
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.machine()} CPU, {args.threads} threads"
    )
    report = (
        "# Screening throughput on the shipped MNIST pair\n\n"
        f"Points: {source}. Device: {where}; torch {torch.__version__}. "
        f"Command: `python benchmarks/screening_throughput.py {' '.join(sys.argv[1:])}`.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)


if __name__ == "__main__":
    main()
