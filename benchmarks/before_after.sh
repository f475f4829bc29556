#!/usr/bin/env bash
# The screening and MILP benchmarks at an earlier commit and at the working tree, back to back on the same
# machine, the same models (this tree's shipped MNIST pair, copied into the earlier checkout) and the same
# arguments. Each commit runs its own version of the scripts, so what is compared is the product, not a script.
#
#   benchmarks/before_after.sh 01c9fdb benchmarks/results/one_engine     # issue 13: before the one-engine work
#
# Writes <out>/{screen,milp}_{before,after}.md; benchmarks/results/one_engine_before_after.md puts them in one
# table. The earlier checkout is a temporary git worktree, removed at the end.
set -euo pipefail
base="${1:?usage: before_after.sh COMMIT OUT_DIR}"
out="$(mkdir -p "${2:?usage: before_after.sh COMMIT OUT_DIR}" && cd "$2" && pwd)"
repo="$(cd "$(dirname "$0")/.." && pwd)"
tree="$(mktemp -d)/before"
git -C "$repo" worktree add --detach --quiet "$tree" "$base"
trap 'git -C "$repo" worktree remove --force "$tree"' EXIT
cp "$repo"/models/mnist/{teacher.onnx,student-fd.onnx,sample.npz} "$tree/models/mnist/"

# The screening benchmark reads the first 1000 MNIST test images (without the data it repeats sample.npz).
: "${FAITHVERIFY_DATA_ROOT:?set FAITHVERIFY_DATA_ROOT to the datasets folder}"
# One thread each: the numbers compare engines, not how well each one spreads over cores.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# The paper's MNIST eps 0.05 and 0.1 on pixels (x 0.3081): where the MILP finishes and where it times out.
screen=(--points 1000 --eps 0.0154 0.0308 --batch-sizes 100 1000 --alpha-points 100)
milp=(--points 10 --eps 0.0154 0.0308 --solvers highs gurobi --timeout 10 --sweep-eps 0.0154
    --deltas 0.05 0.1 0.2 --refine-points 0)
(cd "$tree" && PYTHONPATH="$tree" python benchmarks/screening_throughput.py "${screen[@]}" --out "$out/screen_before.md")
(cd "$repo" && python benchmarks/screening_throughput.py "${screen[@]}" --threads 1 --out "$out/screen_after.md")
(cd "$tree" && PYTHONPATH="$tree" python benchmarks/milp_refinement.py "${milp[@]}" --out "$out/milp_before.md")
(cd "$repo" && python benchmarks/milp_refinement.py "${milp[@]}" --out "$out/milp_after.md")
# The tables quote their commands: no path of this machine in them.
sed -i "s#$repo/##g; s#$tree/##g" "$out"/*.md
