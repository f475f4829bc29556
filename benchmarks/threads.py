"""OpenMP wait policy and thread count, with and without another busy process on the machine.

    python benchmarks/threads.py        # writes benchmarks/results/threads.md

Each cell runs in a fresh process (the wait policy is read when torch loads): CROWN bounds of the shipped pair
on its 200 sample points at eps 0.025, and the EmpLB attack (PGD-50, 3 restarts) on the same points.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MEASURE = """
import json, time, torch
from faithverify.attack import PGDConfig, faithfulness_attack, input_box
from faithverify.bounds.bounder import BoundMethod
from faithverify.bounds.bounder import PairBounder
from faithverify.data import load_dataset
from faithverify.pair import load_pair
torch.set_num_threads({threads})
pair = load_pair("models/mnist/teacher.onnx", "models/mnist/student-fd.onnx")
x = load_dataset("models/mnist/sample.npz").x
bounder = PairBounder(pair, torch.device("cpu"))
lo, hi = input_box(x, 0.025)
bounder.faith_ub(lo[:10], hi[:10], BoundMethod.CROWN)
start = time.perf_counter(); bounder.faith_ub(lo, hi, BoundMethod.CROWN); crown = time.perf_counter() - start
start = time.perf_counter()
faithfulness_attack(bounder.teacher, bounder.student, x, lo, hi, PGDConfig(), 0.025)
attack = time.perf_counter() - start
print(json.dumps({{"crown": crown, "attack": attack}}))
"""


def _burn(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def measure(policy: str, threads: int) -> dict[str, float]:
    env = dict(os.environ, OMP_WAIT_POLICY=policy)
    out = subprocess.run(
        [sys.executable, "-c", MEASURE.format(threads=threads)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    rows = []
    for busy in (False, True):
        burner = None
        if busy:
            burner = multiprocessing.Process(target=_burn, args=(time.time() + 600,))
            burner.start()
        try:
            for policy in ("ACTIVE", "PASSIVE"):
                for threads in (1, 2):
                    r = measure(policy, threads)
                    rows.append((busy, policy, threads, r["crown"], r["attack"]))
        finally:
            if burner is not None:
                burner.terminate()
    lines = [
        "| another busy process | OMP_WAIT_POLICY | torch threads | CROWN, 200 points (s) | PGD attack (s) |"
    ]
    lines.append("|---|---|---|---|---|")
    lines += [f"| {'yes' if b else 'no'} | {p} | {t} | {c:.3f} | {a:.3f} |" for b, p, t, c, a in rows]
    report = (
        "# OpenMP wait policy and threads\n\n"
        f"Machine: {os.cpu_count()} cores. Command: `python benchmarks/threads.py`.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    print(report)
    (REPO / "benchmarks" / "results" / "threads.md").write_text(report)


if __name__ == "__main__":
    main()
