"""Branch and bound on one device: domains bounded per second and the bound reached in a fixed time, on the
shipped MNIST teacher's hardest logit differences (each point's predicted class against the runner-up).

    python benchmarks/bab_throughput.py                                   # CPU
    python benchmarks/bab_throughput.py --device cuda --batch 2048 --out benchmarks/results/bab_throughput_gpu.md
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from faithverify.attack import input_box
from faithverify.bounds.bab import BabSettings, NetworkBaB
from faithverify.bounds.torchnet import BoundNetwork
from faithverify.pair import load_pair

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--points", type=int, default=5)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, nargs="+", default=[256])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bab_throughput.md")
    args = parser.parse_args()

    torch.set_num_threads(1)
    pair = load_pair(REPO / "models/mnist/teacher.onnx", REPO / "models/mnist/student-fd.onnx")
    x = np.load(REPO / "models/mnist/sample.npz")["x"][: args.points]
    logits = pair.outputs_onnxruntime(x)["z_t"]
    net = BoundNetwork.of(pair.teacher.network, args.device)
    lines = [
        "| point | batch | domains | domains/s | bound | best found | exact |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in range(len(x)):
        top, second = np.argsort(logits[k])[::-1][:2]
        weights = np.zeros(len(logits[k]))
        weights[second], weights[top] = 1.0, -1.0  # max z_second - z_top: the margin's worst case
        lower, upper = input_box(x[k : k + 1], args.eps)
        for batch in args.batch:
            bab = NetworkBaB(net, lower[0], upper[0], settings=BabSettings(batch=batch))
            r = bab.search(weights, time_limit=args.seconds)
            lines.append(
                f"| {k} | {batch} | {r.domains} | {r.domains / r.seconds:.0f} | {r.bound:.4f} | {r.best:.4f} "
                f"| {r.exact} |"
            )
            print(lines[-1], flush=True)
    where = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"{platform.machine()} CPU, 1 thread"
    )
    text = "\n".join([
        "# Branch and bound throughput",
        "",
        f"Device: {where}; torch {torch.__version__}; eps {args.eps:g}; {args.seconds:g} s per problem. "
        f"Command: `python benchmarks/bab_throughput.py {' '.join(sys.argv[1:])}`",
        "",
        *lines,
        "",
    ])  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
