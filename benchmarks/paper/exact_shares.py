"""How often the reproduction's exact sample pins a point's worst gap, and how often the coupled bound wins.

Reads the per-point records that ``reproduce.py`` wrote for the exact-bound sample (``out/paper/<dataset>-
<student>-exact.jsonl``) and writes ``results/exact_shares.md``: per eps, the sample size, the mean of the
paper's eq. 4-6 on the refined per-network bounds, of our tightest FaithUB and of EmpLB, the share of points
known to within 0.01 and 0.001 (FaithUB - EmpLB), the points where the coupled bound is below eq. 4-6, and
the points whose search ran out of its budget (the per-point budget is a column: it differs between runs).

    python benchmarks/paper/exact_shares.py                      # every exact sample found under out/paper/

The records are not in git, and a run on one dataset should not erase another's rows: rows of samples whose
records are not given (or not found) are kept from the file as it was.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np

from faithverify.results import read_results
from faithverify.train.recipes import get_recipe

REPO = Path(__file__).resolve().parents[2]


def rows(path: Path) -> list[str]:
    dataset = path.name.split("-exact")[0].rsplit("-", 1)[0]
    scale = get_recipe(f"{dataset}/teacher").eps_scale
    settings, points = read_results(path)
    timeout = settings.get("timeout")
    budget = f"{timeout:g}" if isinstance(timeout, int | float) else "?"
    by_eps = collections.defaultdict(list)
    for p in points:
        by_eps[p.eps].append(p)
    out = []
    for eps, ps in sorted(by_eps.items()):
        ub = np.array([p.faith_ub for p in ps])
        lb = np.array([p.emp_lb for p in ps])
        eq6 = np.array([min(float(p.milp.eq6), p.bounds.get("crown", 1.0)) for p in ps if p.milp])
        coupled = sum(
            1 for p in ps if p.milp and p.faith_ub < min(float(p.milp.eq6), p.bounds.get("crown", 1.0))
        )
        timed = sum(1 for p in ps if p.milp and p.milp.timed_out)
        out.append(
            f"| {path.stem} | {eps / scale:.4g} ({eps:.4g} px) | {len(ps)} | {budget} | {eq6.mean():.4f} "
            f"| {ub.mean():.4f} | {lb.mean():.4f} | {np.mean(ub - lb <= 0.01):.0%} "
            f"| {np.mean(ub - lb <= 1e-3):.0%} | {coupled} | {timed} |"
        )
    return out


def _kept_rows(path: Path) -> dict[str, list[str]]:
    """The table rows of an earlier ``exact_shares.md``, by sample."""
    kept: dict[str, list[str]] = collections.defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if line.startswith("| ") and cells[0].endswith("-exact"):
                kept[cells[0]].append(line)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "paper" / "results" / "exact_shares.md"
    )
    args = parser.parse_args()
    files = args.files or sorted((REPO / "out" / "paper").glob("*-exact.jsonl"))
    lines = [
        "# The exact-bound sample: known points and coupled wins",
        "",
        "From the records of `benchmarks/paper/reproduce.py` (its exact sample; see `summary.md` for the run); "
        "regenerate with `python benchmarks/paper/exact_shares.py`. eps in the paper's units, pixels in brackets.",
        "",
        "| sample | eps | n | s per point | eq. 4-6 | tightest | EmpLB | known within 0.01 | within 0.001 "
        "| coupled below eq. 4-6 | out of time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fresh = {f.stem: rows(f) for f in files}
    for sample, kept in _kept_rows(args.out).items():
        fresh.setdefault(sample, kept)
    for sample in sorted(fresh):
        lines += fresh[sample]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
