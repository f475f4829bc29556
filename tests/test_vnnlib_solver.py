"""``faithverify-vnnlib verify`` on the shapes and theories VNN-LIB 2.0 allows: networks without a batch axis,
outputs of any shape, independent inputs, constraints across inputs, strict comparisons, VNN-LIB 1.0 files.
Every ``sat`` assignment is re-run through onnxruntime here; every ``unsat`` is one a grid search agrees with.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from faithverify.onnx_io import load_model, run_onnxruntime
from faithverify.vnn.solver_cli import main

REPO = Path(__file__).resolve().parents[1]
FLOAT = onnx.TensorProto.FLOAT


def _model(
    nodes: list[onnx.NodeProto], x: list[int], y: list[int], inits: Sequence[np.ndarray] = ()
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", FLOAT, x)],
        [helper.make_tensor_value_info("y", FLOAT, y)],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), f"c{k}") for k, v in enumerate(inits)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _save(tmp: Path, name: str, model: onnx.ModelProto) -> Path:
    path = tmp / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def _verify(tmp: Path, query: str, *networks: str) -> list[str]:
    (tmp / "q.vnnlib").write_text(query)
    argv = ["verify", str(tmp / "q.vnnlib"), "--timeout", "20"]
    for item in networks:
        argv += ["--network", item]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return result.stdout.splitlines()


def _values(lines: list[str], header: str, n: int) -> np.ndarray:
    k = lines.index(header)
    return np.array([float(v) for v in lines[k + 1 : k + 1 + n]])


def net_decl(name: str, x: str, xs: str, y: str, ys: str, dtype: str = "float32") -> str:
    return (
        f"(declare-network {name} (declare-input {x} {dtype} [{xs}]) (declare-output {y} {dtype} [{ys}]))\n"
    )


V2 = "(vnnlib-version <2.0>)\n"


def test_a_network_without_batch_axis(tmp_path: Path) -> None:
    # y = relu(x - 1), x in [0, 3]^2: y[0] reaches 2 but never 2.5.
    path = _save(
        tmp_path,
        "relu",
        _model(
            [helper.make_node("Sub", ["x", "c0"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
            [2],
            [2],
            [np.ones(2)],
        ),
    )
    model = load_model(path, any_shape=True)
    assert not model.batched and model.input_shape == (2,) and model.num_classes == 2
    head = (
        V2
        + net_decl("N", "X", "2", "Y", "2")
        + "(assert (and (>= X[0] 0.0) (<= X[0] 3.0) (>= X[1] 0.0) (<= X[1] 3.0)))\n"
    )
    assert _verify(tmp_path, head + "(assert (>= Y[0] 2.5))\n", f"N={path}") == ["unsat"]
    lines = _verify(tmp_path, head + "(assert (>= Y[0] 1.5))\n", f"N={path}")
    assert lines[0] == "sat" and lines[1] == "X float32 [2]"
    x = _values(lines, "X float32 [2]", 2)
    assert run_onnxruntime(path, x[None].astype(np.float32), batched=False)[0, 0] >= 1.5


def test_conv_and_maxpool_outputs_of_any_shape(tmp_path: Path) -> None:
    # A 2x2 all-ones convolution of a 3x3 image in [0, 1], then a 2x2 max-pool with stride 1: [1,1,1,1].
    conv = helper.make_node("Conv", ["x", "c0"], ["h"], kernel_shape=[2, 2])
    pool = helper.make_node("MaxPool", ["h"], ["y"], kernel_shape=[2, 2])
    path = _save(tmp_path, "conv", _model([conv, pool], [1, 1, 3, 3], [1, 1, 1, 1], [np.ones((1, 1, 2, 2))]))
    box = " ".join(f"(>= X[0,0,{i},{j}] 0.0) (<= X[0,0,{i},{j}] 1.0)" for i in range(3) for j in range(3))
    head = V2 + net_decl("N", "X", "1,1,3,3", "Y", "1,1,1,1") + f"(assert (and {box}))\n"
    assert _verify(tmp_path, head + "(assert (>= Y[0,0,0,0] 4.5))\n", f"N={path}") == ["unsat"]
    lines = _verify(tmp_path, head + "(assert (>= Y[0,0,0,0] 3.5))\n", f"N={path}")
    assert lines[0] == "sat" and _values(lines, "Y float32 [1,1,1,1]", 1)[0] >= 3.5


def test_a_transpose_of_the_leading_axis(tmp_path: Path) -> None:
    # [1, 2] -> [2, 1]: the leading 1 is no batch axis here; the whole tensor is one sample.
    path = _save(
        tmp_path, "t", _model([helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])], [1, 2], [2, 1])
    )
    head = (
        V2
        + net_decl("N", "X", "1,2", "Y", "2,1")
        + "(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0) (>= X[0,1] 2.0) (<= X[0,1] 3.0)))\n"
    )
    assert _verify(tmp_path, head + "(assert (>= Y[0,0] 1.5))\n", f"N={path}") == ["unsat"]
    assert _verify(tmp_path, head + "(assert (>= Y[1,0] 2.5))\n", f"N={path}")[0] == "sat"


def test_networks_with_independent_inputs_and_equal_to(tmp_path: Path) -> None:
    path = _save(tmp_path, "relu", _model([helper.make_node("Relu", ["x"], ["y"])], [1], [1]))
    decls = (
        V2
        + net_decl("N1", "X", "1", "Y", "1")
        + "(declare-network N2 (equal-to N1) (declare-input X2 float32 [1]) (declare-output Y2 float32 [1]))\n"
    )
    box = "(assert (and (>= X[0] 0.0) (<= X[0] 1.0) (>= X2[0] 2.0) (<= X2[0] 3.0)))\n"
    assert _verify(tmp_path, decls + box + "(assert (<= Y2[0] Y[0]))\n", f"N1={path}") == ["unsat"]
    lines = _verify(tmp_path, decls + box + "(assert (>= (- Y2[0] Y[0]) 2.5))\n", f"N1={path}")
    assert lines[0] == "sat"
    x, x2 = _values(lines, "X float32 [1]", 1)[0], _values(lines, "X2 float32 [1]", 1)[0]
    assert 0 <= x <= 1 and 2 <= x2 <= 3 and x2 - x >= 2.5


def test_linear_constraints_across_inputs_and_outputs(tmp_path: Path) -> None:
    path = _save(tmp_path, "id", _model([helper.make_node("Relu", ["x"], ["y"])], [1, 2], [1, 2]))
    head = (
        V2
        + net_decl("N", "X", "1,2", "Y", "1,2")
        + "(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0) (>= X[0,1] 0.0) (<= X[0,1] 1.0)))\n"
    )
    assert _verify(tmp_path, head + "(assert (>= (+ X[0,0] X[0,1]) 2.5))\n", f"N={path}") == ["unsat"]
    # An output above the input it comes from: never, for a ReLU of a non-negative input. Rows that mix the
    # network's outputs with its inputs are bounded by intervals (sound, loose): not sat, at best unsat.
    assert _verify(tmp_path, head + "(assert (>= (- Y[0,0] X[0,0]) 0.25))\n", f"N={path}")[0] != "sat"
    lines = _verify(
        tmp_path, head + "(assert (>= (+ X[0,0] X[0,1]) 1.5))\n(assert (>= Y[0,1] 0.8))\n", f"N={path}"
    )
    x = _values(lines, "X float32 [1,2]", 2)
    assert lines[0] == "sat" and x.sum() >= 1.5 and x[1] >= 0.8


def test_strict_comparisons_need_a_strict_witness(tmp_path: Path) -> None:
    # relu(x) < 0 never holds; its closure relu(x) <= 0 does (at x <= 0): no sat, and no sound unsat either.
    path = _save(tmp_path, "relu", _model([helper.make_node("Relu", ["x"], ["y"])], [1], [1]))
    head = V2 + net_decl("N", "X", "1", "Y", "1") + "(assert (and (>= X[0] -1.0) (<= X[0] 1.0)))\n"
    assert _verify(tmp_path, head + "(assert (< Y[0] 0.0))\n", f"N={path}") == ["unknown"]
    assert _verify(tmp_path, head + "(assert (<= Y[0] 0.0))\n", f"N={path}")[0] == "sat"


def test_real_arithmetic_is_not_answered_by_float_underflow(tmp_path: Path) -> None:
    # softmax(x)[0] underflows to 0.0 in floats at x = (-1000, 1000), but is positive over the reals.
    path = _save(tmp_path, "sm", _model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [2], [2]))
    head = V2 + net_decl("N", "X", "2", "Y", "2", "real")
    box = "(assert (and (>= X[0] -1000.0) (<= X[0] 1000.0) (>= X[1] -1000.0) (<= X[1] 1000.0)))\n"
    assert _verify(tmp_path, head + box + "(assert (<= Y[0] 0.0))\n", f"N={path}") == ["unknown"]


def test_vnnlib_1_queries(tmp_path: Path) -> None:
    path = _save(tmp_path, "relu", _model([helper.make_node("Relu", ["x"], ["y"])], [1, 2], [1, 2]))
    head = "".join(f"(declare-const {v} Real)\n" for v in ("X_0", "X_1", "Y_0", "Y_1"))
    box = "(assert (>= X_0 -1.0))\n(assert (<= X_0 1.0))\n(assert (>= X_1 0.0))\n(assert (<= X_1 1.0))\n"
    assert _verify(tmp_path, head + box + "(assert (>= Y_0 1.5))\n", f"any={path}") == ["unsat"]
    lines = _verify(tmp_path, head + box + "(assert (>= Y_0 0.5))\n", f"any={path}")
    assert lines[0] == "sat" and _values(lines, "X real [2]", 2)[0] >= 0.5


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("vnntest") is None, reason="needs vnnlib-satisfactory (pip install)"
)
def test_vnnlib_satisfactory_conformance(tmp_path: Path) -> None:
    """The suite's claimed tests (a few categories, to stay short): no wrong answer, no crash, a verdict each."""
    out = tmp_path / "table.md"
    script = REPO / "benchmarks" / "vnnlib_conformance.py"
    only = [
        "relu",
        "add",
        "sub",
        "reshape",
        "conv",
        "maxpool",
        "network_multiple",
        "arithmetic_lin",
        "softmax",
    ]
    done = subprocess.run(
        [sys.executable, str(script), "--timeout", "20", "--out", str(out), "--only", *only],
        capture_output=True,
        text=True,
        timeout=900,
    )
    # The script exits 1 on any wrong answer, crash or answer without a verdict line.
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert out.read_text().startswith("# VNN-LIB 2.0 conformance")


def test_a_1d_convolution(tmp_path: Path) -> None:
    # Conv over [1, 1, 5] with kernel 3, padding 1, stride 2: outputs at positions 0, 2, 4 -> [1, 1, 3].
    conv = helper.make_node("Conv", ["x", "c0"], ["y"], kernel_shape=[3], pads=[1, 1], strides=[2])
    path = _save(tmp_path, "conv1d", _model([conv], [1, 1, 5], [1, 1, 3], [np.array([[[1.0, 2.0, 3.0]]])]))
    model = load_model(path, any_shape=True)  # checked against onnxruntime on load
    assert model.input_shape == (1, 5) and model.num_classes == 3
    box = " ".join(f"(>= X[0,0,{i}] 0.0) (<= X[0,0,{i}] 1.0)" for i in range(5))
    head = V2 + net_decl("N", "X", "1,1,5", "Y", "1,1,3") + f"(assert (and {box}))\n"
    # Y[0,0,1] = x1 + 2 x2 + 3 x3 <= 6.
    assert _verify(tmp_path, head + "(assert (>= Y[0,0,1] 6.5))\n", f"N={path}") == ["unsat"]
    assert _verify(tmp_path, head + "(assert (>= Y[0,0,1] 5.5))\n", f"N={path}")[0] == "sat"


def test_unbounded_inputs_give_counterexamples_only(tmp_path: Path) -> None:
    # y = relu(x); X[0,1] has no bounds at all: a counterexample is found in a finite box inside the region.
    path = _save(tmp_path, "relu", _model([helper.make_node("Relu", ["x"], ["y"])], [1, 2], [1, 2]))
    head = V2 + net_decl("N", "X", "1,2", "Y", "1,2") + "(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0)))\n"
    lines = _verify(tmp_path, head + "(assert (>= Y[0,1] 3.0))\n", f"N={path}")
    assert lines[0] == "sat" and _values(lines, "X float32 [1,2]", 2)[1] >= 3.0
    # Never unsat: relu(X[0,1]) <= -1 is impossible, but the region is unbounded and bounds see a clipped box.
    assert _verify(tmp_path, head + "(assert (<= Y[0,1] -1.0))\n", f"N={path}") == ["unknown"]


@pytest.mark.parametrize(
    ("nodes", "x", "y", "inits"),
    [
        # Batched ([1, ...]) and whole-tensor inputs; every model is checked against onnxruntime as it loads.
        ([helper.make_node("Slice", ["x", "c0", "c1", "c2"], ["y"])], [1, 3, 4], [1, 3, 3], [[1], [4], [2]]),
        ([helper.make_node("Slice", ["x", "c0", "c1", "c2", "c3"], ["y"])], [5], [2], [[4], [0], [0], [-2]]),
        ([helper.make_node("Gather", ["x", "c0"], ["y"], axis=1)], [1, 4], [1, 3], [np.array([3, 0, -1])]),
        ([helper.make_node("Gather", ["x", "c0"], ["y"], axis=0)], [2, 3], [1, 3], [np.array([1])]),
        ([helper.make_node("Unsqueeze", ["x", "c0"], ["y"])], [1, 3], [1, 3, 1], [[-1]]),
        ([helper.make_node("Squeeze", ["x", "c0"], ["y"])], [1, 3, 1], [1, 3], [[2]]),
        ([helper.make_node("Neg", ["x"], ["y"])], [3], [3], []),
    ],
)
def test_selections_match_onnxruntime(
    tmp_path: Path, nodes: list[onnx.NodeProto], x: list[int], y: list[int], inits: list[list[int]]
) -> None:
    consts = [np.asarray(v, dtype=np.int64) for v in inits]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", FLOAT, x)],
        [helper.make_tensor_value_info("y", FLOAT, y)],
        [numpy_helper.from_array(v, f"c{k}") for k, v in enumerate(consts)],
    )
    path = _save(tmp_path, "sel", helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    model = load_model(path, any_shape=True)
    assert model.num_classes == int(np.prod(y)) and model.max_abs_diff == 0.0
