#!/usr/bin/env bash
# VNN-COMP harness hook: prepare_instance.sh v1 <category> <onnx> <vnnlib>
# Checks that faithverify can take the instance (loads the ONNX file with every operator, parses the property)
# and warms the import caches. Exit code 0 = ready; non-zero = the tool cannot run this instance.
set -euo pipefail
if [ "$#" -ne 4 ] || [ "$1" != "v1" ]; then
    echo "usage: $0 v1 <category> <onnx> <vnnlib>" >&2
    exit 1
fi
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck disable=SC1091
[ -f "$here/../.venv/bin/activate" ] && . "$here/../.venv/bin/activate"
python - "$3" "$4" <<'PY'
import sys, tempfile
from pathlib import Path
from faithverify.vnn.bench import plain_onnx
from faithverify.vnn.instance import query_from_instance
from faithverify.vnn.vnnlib import read_vnnlib

with tempfile.TemporaryDirectory() as scratch:
    query_from_instance(plain_onnx(Path(sys.argv[1]), Path(scratch)), read_vnnlib(sys.argv[2]))
PY
