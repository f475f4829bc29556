"""Screening throughput and tightness on the shipped MNIST pair: IBP, CROWN and alpha-CROWN side by side,
at several batch sizes, against the plain auto_LiRPA call on the paired graph as the baseline.

    python benchmarks/screening_throughput.py                 # writes benchmarks/results/screening_throughput.md

The baseline is what a first user of auto_LiRPA would write: one BoundedModule over the paired logits
``[z_t, z_s]`` (float32, the library default), one specification matrix with all 180 ordered-pair rows of both
networks, lower and upper bounds, gradients on. faithverify's path bounds each network on its own, computes
lower bounds only (upper bounds follow from ``ub(z_j - z_i) = -lb(z_i - z_j)``), under ``no_grad`` and in float64.
The "max |Δd|" column compares every logit-difference lower bound with the baseline's.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from faithverify.attack import input_box
from faithverify.bounds.bounder import BoundMethod, NetworkBounder, ordered_pairs
from faithverify.bounds.lirpa_compat import import_auto_lirpa
from faithverify.bounds.softmax import LogitDiffBounds, faithfulness_from_logit_bounds
from faithverify.data import load_dataset
from faithverify.pair import load_pair

REPO = Path(__file__).resolve().parents[1]


class PairedLogits(nn.Module):
    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        super().__init__()
        self.teacher, self.student = teacher, student

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.teacher(x), self.student(x)], dim=1)


def paired_spec(c: int) -> torch.Tensor:
    rows = []
    for offset in (0, c):
        for i, j in ordered_pairs(c):
            row = torch.zeros(2 * c)
            row[offset + j], row[offset + i] = 1.0, -1.0
            rows.append(row)
    return torch.stack(rows)


def points(n: int) -> tuple[np.ndarray, str]:
    root = os.environ.get("FAITHVERIFY_DATA_ROOT")
    if root and (Path(root) / "mnist").is_dir():
        data = load_dataset("mnist", data_root=root)
        return data.x[:n].reshape(n, -1), f"first {n} MNIST test images"
    sample = load_dataset(REPO / "models" / "mnist" / "sample.npz")
    x = np.resize(sample.x.reshape(len(sample.x), -1), (n, 784))
    return x, f"the {len(sample.x)} shipped sample images, repeated to {n}"


def _time_breakdown(bounders: list[NetworkBounder], lo: torch.Tensor, hi: torch.Tensor, batch: int) -> str:
    """Seconds in the intermediate-bound passes (undecided neurons only) against the final 90-row pass."""
    profiler = cProfile.Profile()
    profiler.enable()
    start = time.perf_counter()
    for b in bounders:
        b.logit_diff_bounds(lo, hi, BoundMethod.CROWN, batch_size=batch)
    total = time.perf_counter() - start
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    intermediate = sum(v[3] for k, v in stats.items() if k[2] == "_tighten_unstable")
    rows = [
        ("intermediate bounds (undecided neurons only, lower and upper in one pass)", intermediate),
        ("final pass (90 ordered-pair rows per network) and bookkeeping", total - intermediate),
    ]
    lines = ["| stage | seconds | share |", "|---|---|---|"]
    lines += [f"| {name} | {sec:.3f} | {100 * sec / total:.0f}% |" for name, sec in rows]
    return "\n".join(lines) + (
        "\n\nInside each pass nearly all the time is dense float64 matrix products; the largest is |A·W_0|, "
        "rows x 784 per point, needed to concretise over the clipped input box."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.025, 0.05, 0.1])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 250, 1000])
    parser.add_argument("--alpha-points", type=int, default=100, help="points for alpha-CROWN (it is slow)")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "screening_throughput.md"
    )
    args = parser.parse_args()

    al = import_auto_lirpa()
    pair = load_pair(REPO / "models/mnist/teacher.onnx", REPO / "models/mnist/student-fd.onnx")
    c = pair.num_classes
    x, source = points(args.points)
    rows_out = []
    nets = (pair.teacher.module.flat_body(), pair.student.module.flat_body())
    engines = {
        "native": [NetworkBounder(net, 784, c) for net in nets],
        "auto_LiRPA": [NetworkBounder(net, 784, c, engine="auto_lirpa") for net in nets],
    }
    bounders = engines["native"]
    plain = al.BoundedModule(
        PairedLogits(*(m.module for m in (pair.teacher, pair.student))), torch.zeros(1, 784)
    )
    spec = paired_spec(c)
    pairs = ordered_pairs(c)
    idx_i = np.array([i for i, _ in pairs])
    idx_j = np.array([j for _, j in pairs])
    profile_text = ""
    # Warm-up: the first call of each path pays one-off costs (allocator, auto_LiRPA's lazy set-up, the
    # plain call's tracing); without this the first eps's rows measure them instead of the bound.
    lo_w, hi_w = (torch.from_numpy(b) for b in input_box(x[:50], args.eps[0]))
    for method in (BoundMethod.IBP, BoundMethod.CROWN, BoundMethod.ALPHA_CROWN):
        for engine in engines.values():
            for b in engine:
                b.logit_diff_bounds(lo_w[:5], hi_w[:5], method)
    warm = al.BoundedTensor(
        ((lo_w + hi_w) / 2).float(),
        al.PerturbationLpNorm(norm=float("inf"), x_L=lo_w.float(), x_U=hi_w.float()),
    )
    plain.compute_bounds(x=(warm,), C=spec.unsqueeze(0).expand(len(lo_w), -1, -1), method="CROWN")

    for eps in args.eps:
        lo, hi = input_box(x, eps)
        lo_t, hi_t = torch.from_numpy(lo), torch.from_numpy(hi)

        # Baseline: the plain call.
        ptb = al.PerturbationLpNorm(norm=float("inf"), x_L=lo_t.float(), x_U=hi_t.float())
        bx = al.BoundedTensor(((lo_t + hi_t) / 2).float(), ptb)
        start = time.perf_counter()
        lb, _ub = plain.compute_bounds(x=(bx,), C=spec.unsqueeze(0).expand(len(x), -1, -1), method="CROWN")
        plain_seconds = time.perf_counter() - start
        lb = lb.detach().double().numpy()
        ref = []
        for k in range(2):
            d = np.zeros((len(x), c, c))
            d[:, idx_i, idx_j] = lb[:, k * len(pairs) : (k + 1) * len(pairs)]
            ref.append(d)
        ref_ub = faithfulness_from_logit_bounds(
            LogitDiffBounds.from_lower(ref[0]), LogitDiffBounds.from_lower(ref[1])
        )
        rows_out.append(
            (
                eps,
                "plain auto_LiRPA CROWN (paired, f32)",
                len(x),
                len(x) / plain_seconds,
                float(ref_ub.value.mean()),
                0.0,
            )
        )

        runs = [
            (BoundMethod.IBP, "auto_LiRPA"),
            (BoundMethod.CROWN, "auto_LiRPA"),
            (BoundMethod.CROWN, "native"),
            (BoundMethod.ALPHA_CROWN, "auto_LiRPA"),
        ]
        for method, engine in runs:
            n = args.alpha_points if method is BoundMethod.ALPHA_CROWN else len(x)
            for batch in args.batch_sizes:
                if batch > n:
                    continue
                start = time.perf_counter()
                d = [
                    b.logit_diff_bounds(lo_t[:n], hi_t[:n], method, batch_size=batch) for b in engines[engine]
                ]
                seconds = time.perf_counter() - start
                faith = faithfulness_from_logit_bounds(*d).value
                diff = (
                    max(float(np.abs(d[k].lower - ref[k][:n]).max()) for k in range(2))
                    if method is BoundMethod.CROWN
                    else None
                )
                name = f"faithverify {method.value} ({engine}, per network, lower only, f64)"
                rows_out.append((eps, name, batch, n / seconds, float(faith.mean()), diff))
        if eps == args.eps[0]:
            profile_text = _time_breakdown(bounders, lo_t, hi_t, max(args.batch_sizes))

    header = "| eps | method | batch | points/s | mean FaithUB | CROWN: max abs diff of d_ij lower bounds vs plain |"
    lines = [header, "|---|---|---|---|---|---|"]
    for eps, name, batch, rate, mean, diff in rows_out:
        shown = "-" if diff is None else f"{diff:.1e}"
        lines.append(f"| {eps:g} | {name} | {batch} | {rate:.0f} | {mean:.4f} | {shown} |")
    table = "\n".join(lines)
    report = (
        f"# Screening throughput on the shipped MNIST pair\n\n"
        f"Points: {source}. Machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}. "
        f"Command: `python benchmarks/screening_throughput.py`.\n\n{table}\n\n"
        f"## Where the time goes (native CROWN, both networks, {len(x)} points, eps {args.eps[0]:g})\n\n"
        f"{profile_text}\n"
    )
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
