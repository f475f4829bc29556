"""certify --delta on the local executors against Ray on this machine, same workload, one run (issue 16).

    python benchmarks/ray_scaling.py                          # MNIST pair, 30 points, eps 0.05 and 0.1, 1 s
    python benchmarks/ray_scaling.py --points 200 --timeout 10   # the issue's full workload (hours on 2 cores)

Rows: one process (jobs 1, the default), the local process pool (jobs 2), and Ray started on this machine only
(`--ray local`) with 1 and 2 CPUs. Each row certifies the same points at every eps with --delta (screening on the
driver, refinements as tasks); `run s` is the certify call, from the first screened batch to the last record,
with the pool's or Ray's workers started inside it (as a user's run has them); Ray's own start (`ray.init`) is
`start s`, apart. `overhead` is the row's run time against the pool with the same number of workers, per
refined point. Every row must give the same verdicts (checked).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# isort: off
import faithverify  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY before OpenMP starts)

# isort: on
import numpy as np

from faithverify.attack_config import PGDConfig
from faithverify.certify import CertifyConfig, certify
from faithverify.executors import connect_ray, import_ray
from faithverify.methods import BoundMethod
from faithverify.pair import load_pair
from faithverify.results import PointResult

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    name: str
    workers: int
    ray: bool
    start: float = 0.0
    run: float = 0.0
    refined: int = 0
    points: int = 0
    verdicts: tuple[tuple[int, float, str | None], ...] = ()


def run_row(row: Row, pair, x: np.ndarray, args: argparse.Namespace) -> Row:  # type: ignore[no-untyped-def]
    config = CertifyConfig(
        eps=list(args.eps), methods=(BoundMethod.CROWN, BoundMethod.COUPLED), pgd=PGDConfig(), robustness=False,
        device="cpu", delta=args.delta, milp_timeout=args.timeout, jobs=row.workers,
        ray="local" if row.ray else None,
    )  # fmt: skip
    if row.ray:
        clock = time.perf_counter()
        connect_ray("local", row.workers)  # the certify call below joins this instance
        row.start = time.perf_counter() - clock
    try:
        clock = time.perf_counter()
        points: list[PointResult] = certify(pair, x, None, config, progress=False)
        row.run = time.perf_counter() - clock
    finally:
        if row.ray:
            import_ray().shutdown()
    row.points = len(points)
    row.refined = sum(1 for p in points if p.milp)
    row.verdicts = tuple(sorted((p.index, p.eps, p.verdict) for p in points))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, default=REPO / "models/mnist/teacher.onnx")
    parser.add_argument("--student", type=Path, default=REPO / "models/mnist/student-fd.onnx")
    parser.add_argument("--points", type=int, default=30)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--delta", type=float, default=0.3)
    parser.add_argument("--timeout", type=float, default=1.0, help="refinement seconds per point")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ray_scaling.md")
    args = parser.parse_args()

    pair = load_pair(args.teacher, args.student)
    x = np.load(args.teacher.parent / "sample.npz")["x"][: args.points]
    rows = [
        Row("one process (jobs 1)", 1, ray=False),
        Row("local pool (jobs 2)", 2, ray=False),
        Row("Ray local, 1 CPU", 1, ray=True),
        Row("Ray local, 2 CPUs", 2, ray=True),
    ]
    for row in rows:
        run_row(row, pair, x, args)
        print(f"{row.name}: {row.run:.1f} s, {row.refined} refined", flush=True)
    if len({r.verdicts for r in rows}) != 1:
        # A refinement stopped by its time limit may end one way in one row and another way in the next.
        print("note: the rows' verdicts differ (time-limited refinements)", flush=True)
    base = {r.workers: r for r in rows if not r.ray}
    lines = [
        "| executor | workers | points x eps | refined | start s | run s | points/s | overhead vs local |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = base[r.workers]
        overhead = "-"
        if r.ray:
            per_task = (r.run - ref.run) / max(r.refined, 1)
            overhead = (
                f"{100 * (r.run - ref.run) / ref.run:+.1f}% ({per_task * 1000:+.0f} ms per refined point)"
            )
        lines.append(
            f"| {r.name} | {r.workers} | {r.points} | {r.refined} | {r.start:.1f} | {r.run:.1f} | "
            f"{r.points / r.run:.2f} | {overhead} |"
        )
    same = "the same verdicts in every row" if len({r.verdicts for r in rows}) == 1 else "verdicts differ"
    text = "\n".join([
        "# certify --delta: local executors against Ray on one machine",
        "",
        f"Pair `{args.teacher.name}` / `{args.student.name}` ({args.teacher.parent.name}); the first {len(x)} "
        f"points of its `sample.npz` at eps {', '.join(f'{e:g}' for e in args.eps)}; delta {args.delta:g}; "
        f"{args.timeout:g} s of refinement per point; {platform.machine()} CPU, {_cores()} cores; {same}. "
        f"Command: `python benchmarks/ray_scaling.py {' '.join(sys.argv[1:])}`",
        "",
        *lines,
        "",
    ])  # fmt: skip
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


def _cores() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    main()
