#!/usr/bin/env bash
# VNN-COMP harness hook: run_instance.sh v1 <category> <onnx> <vnnlib> <result_file> <timeout>
# Writes the competition's result file: sat with the counterexample ((X_0 v) ... (Y_k v)), unsat, timeout or
# unknown. Every counterexample is re-checked with onnxruntime before it is written.
set -euo pipefail
if [ "$#" -ne 6 ] || [ "$1" != "v1" ]; then
    echo "usage: $0 v1 <category> <onnx> <vnnlib> <result_file> <timeout>" >&2
    exit 1
fi
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck disable=SC1091
[ -f "$here/../.venv/bin/activate" ] && . "$here/../.venv/bin/activate"
faithverify verify-instance "$3" "$4" --result "$5" --timeout "$6"
