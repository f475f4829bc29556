"""Bad input to ``faithverify-vnnlib``: malformed VNN-LIB 1.0 / 2.0 queries, unusable ONNX files and misused
options exit 2 with one line naming the problem (and print no verdict: nothing was decided); a well-formed query
outside what the engine decides is answered ``unknown`` with the reason on stderr, never without a verdict."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from faithverify.vnn.solver_cli import main as vnnlib_main
from tests.faults.harness import OK, Fault, Workspace, check, run

HEAD2 = """(vnnlib-version <2.0>)
(declare-network N
    (declare-input X float32 [1,2])
    (declare-output Y float32 [1,2])
)
"""
BOX2 = "(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0) (>= X[0,1] 0.0) (<= X[0,1] 1.0)))\n"
GOOD2 = HEAD2 + BOX2 + "(assert (>= Y[0,0] 100.0))\n"
HEAD1 = (
    "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
)
BOX1 = "(assert (>= X_0 0.0))\n(assert (<= X_0 1.0))\n(assert (>= X_1 0.0))\n(assert (<= X_1 1.0))\n"
GOOD1 = HEAD1 + BOX1 + "(assert (>= Y_0 100.0))\n"


def _gemm(inputs: int, outputs: int, in_shape: list[int] | None = None) -> onnx.ModelProto:
    """A small real network: ``Gemm`` from ``[1, inputs]`` to ``[1, outputs]``."""
    w = numpy_helper.from_array(np.arange(inputs * outputs, dtype=np.float32).reshape(inputs, outputs), "w")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, in_shape or [1, inputs])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, outputs])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    d = tmp_path_factory.mktemp("vnnlib-faults")
    onnx.save(_gemm(2, 2), str(d / "net.onnx"))
    onnx.save(_gemm(3, 2), str(d / "three_in.onnx"))
    onnx.save(_gemm(2, 3), str(d / "three_out.onnx"))
    return Workspace(
        {"net": d / "net.onnx", "three_in": d / "three_in.onnx", "three_out": d / "three_out.onnx"}
    )


def _file(name: str, content: str | bytes) -> Callable[[Path, Workspace], Mapping[str, Path]]:
    def make(tmp: Path, _ws: Workspace) -> dict[str, Path]:
        path = tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return {"q": path}

    return make


def _files(**contents: str | bytes) -> Callable[[Path, Workspace], Mapping[str, Path]]:
    def make(tmp: Path, _ws: Workspace) -> dict[str, Path]:
        out = {}
        for key, content in contents.items():
            name = f"{key}.onnx" if key != "q" else "query.vnnlib"
            path = tmp / name
            path.write_bytes(content.encode() if isinstance(content, str) else content)
            out[key] = path
        return out

    return make


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode())


def fault(id: str, argv: list[str], fragments: list[str], make: object = None, exit_code: int = 2) -> Fault:
    return Fault(id, argv, fragments, exit_code, make, program=vnnlib_main)  # type: ignore[arg-type]


V = ["verify", "{q}", "--network", "N={net}"]

CASES = [
    # --- the query file
    fault("query-missing", ["verify", "{tmp}/none.vnnlib", "--network", "N={net}"], ["none.vnnlib", "no such file"]),
    fault("query-directory", ["verify", "{tmp}", "--network", "N={net}"], ["not a file"]),
    fault("query-binary", V, ["q.vnnlib", "not a text file"], _file("q.vnnlib", b"\xff\xfe\x00\x81garbage")),
    fault("query-corrupt-gzip", V, ["q.vnnlib.gz", "corrupt gzip"], _file("q.vnnlib.gz", b"\x1f\x8b\x08garbage")),
    # --- VNN-LIB 2.0, malformed
    fault("v2-unbalanced", V, ["line 7", "unbalanced parentheses"], _file("q.vnnlib", HEAD2 + BOX2 + "(assert (>= Y[0,0] 1.0)\n")),
    fault("v2-exponent", V, ["line 7", "without an exponent"], _file("q.vnnlib", HEAD2 + BOX2 + "(assert (>= Y[0,0] 1e-05))\n")),
    fault("v2-undeclared-variable", V, ["line 7", "undeclared variable"], _file("q.vnnlib", HEAD2 + BOX2 + "(assert (>= Z[0,0] 1.0))\n")),
    fault("v2-index-out-of-range", V, ["line 7", "out of bounds"], _file("q.vnnlib", HEAD2 + BOX2 + "(assert (>= Y[0,5] 1.0))\n")),
    fault("v2-too-few-indices", V, ["line 7"], _file("q.vnnlib", HEAD2 + BOX2 + "(assert (>= Y[0] 1.0))\n")),
    fault("v2-no-network", V, ["q.vnnlib"], _file("q.vnnlib", "(vnnlib-version <2.0>)\n(assert (>= X[0] 1.0))\n")),
    fault("v2-network-twice", V, ["q.vnnlib"], _file("q.vnnlib", HEAD2 + HEAD2.split("\n", 1)[1] + BOX2)),
    fault("v2-type-mismatch-between-networks", V, ["type mismatch"], _file("q.vnnlib", HEAD2 + "(declare-network M (equal-to N)\n (declare-input X2 float16 [1,2]) (declare-output Y2 float16 [1,2]))\n" + BOX2)),
    fault("v2-assert-not-a-formula", V, ["q.vnnlib", "line 7"], _file("q.vnnlib", HEAD2 + BOX2 + "(assert Y[0,0])\n")),
    fault("v2-empty-file", V, ["q.vnnlib", "empty"], _file("q.vnnlib", "")),
    fault("v2-blank-gzip", V, ["q.vnnlib.gz", "empty"], _file("q.vnnlib.gz", _gz("  \n"))),
    # --- VNN-LIB 1.0, malformed
    fault("v1-unbalanced", V, ["line 9", "unbalanced parentheses"], _file("q.vnnlib", HEAD1 + BOX1 + "(assert (>= Y_0 1.0)\n")),
    fault("v1-unknown-variable", V, ["line 9", "unknown variable"], _file("q.vnnlib", HEAD1 + BOX1 + "(assert (>= Z_0 1.0))\n")),
    fault("v1-undeclared", V, ["line 9", "undeclared variable Y_7"], _file("q.vnnlib", HEAD1 + BOX1 + "(assert (>= Y_7 1.0))\n")),
    fault("v1-sort-int", V, ["line 1", "only Real"], _file("q.vnnlib", HEAD1.replace("X_0 Real", "X_0 Int") + BOX1)),
    fault("v1-declared-twice", V, ["line 5", "declared twice"], _file("q.vnnlib", HEAD1 + "(declare-const Y_1 Real)\n" + BOX1)),
    fault("v1-gap-in-inputs", V, ["X_2 is declared but X_1 is not"], _file("q.vnnlib", HEAD1.replace("X_1", "X_2") + BOX1.replace("X_1", "X_2"))),
    fault("v1-unknown-command", V, ["line 5", "unknown command"], _file("q.vnnlib", HEAD1 + "(declare-sort S 0)\n" + BOX1)),
    fault("v1-assert-two-formulas", V, ["line 9", "exactly one formula"], _file("q.vnnlib", HEAD1 + BOX1 + "(assert (>= Y_0 1.0) (<= Y_1 2.0))\n")),
    fault("v1-unknown-operator", V, ["line 9", "unknown operator"], _file("q.vnnlib", HEAD1 + BOX1 + "(assert (>= (exp Y_0) 1.0))\n")),
    fault("v1-no-outputs", V, ["no output variables"], _file("q.vnnlib", HEAD1.replace("(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n", "") + BOX1)),
    fault("v1-close-without-open", V, ["line 9", "')' without a matching '('"], _file("q.vnnlib", HEAD1 + BOX1 + ")\n")),
    fault("v1-gzip", V, ["line 9", "unbalanced"], _file("q.vnnlib.gz", _gz(HEAD1 + BOX1 + "(assert (>= Y_0 1.0)\n"))),
    # --- --network options
    fault("network-none", ["verify", "{q}"], ["no --network", "N"], _file("q.vnnlib", GOOD2)),
    fault("network-extra", [*V, "--network", "M={net}"], ["M", "no such network is declared"], _file("q.vnnlib", GOOD2)),
    fault("network-no-equals", ["verify", "{q}", "--network", "{net}"], ["NAME=PATH"], _file("q.vnnlib", GOOD2)),
    fault("network-twice", [*V, "--network", "N={net}"], ["given twice"], _file("q.vnnlib", GOOD2)),
    fault("network-v1-two", [*V, "--network", "M={net}"], ["one network"], _file("q.vnnlib", GOOD1)),
    # --- the ONNX files
    fault("onnx-missing", ["verify", "{q}", "--network", "N={tmp}/none.onnx"], ["none.onnx", "no such file"], _file("q.vnnlib", GOOD2)),
    fault("onnx-empty", ["verify", "{q}", "--network", "N={bad}"], ["bad.onnx", "empty"], _files(q=GOOD2, bad=b"")),
    fault("onnx-garbage", ["verify", "{q}", "--network", "N={bad}"], ["bad.onnx", "not a readable ONNX model"], _files(q=GOOD2, bad=b"\x08\x07garbage\xff" * 8)),
    fault("onnx-text", ["verify", "{q}", "--network", "N={bad}"], ["bad.onnx"], _files(q=GOOD2, bad=GOOD2)),
    fault("onnx-inputs-differ", ["verify", "{q}", "--network", "N={three_in}"], ["three_in.onnx", "takes 3 input values", "[1, 2]"], _file("q.vnnlib", GOOD2)),
    fault("onnx-outputs-differ", ["verify", "{q}", "--network", "N={three_out}"], ["three_out.onnx", "gives 3 outputs"], _file("q.vnnlib", GOOD2)),
    fault("onnx-v1-sizes-differ", ["verify", "{q}", "--network", "N={three_in}"], ["takes 3 input values"], _file("q.vnnlib", GOOD1)),
    # --- options
    fault("timeout-zero", [*V, "--timeout", "0"], ["--timeout"], _file("q.vnnlib", GOOD2)),
    fault("timeout-text", [*V, "--timeout", "soon"], ["--timeout"], _file("q.vnnlib", GOOD2)),
    fault("verify-no-query", ["verify"], ["missing argument"]),
    fault("supports-unknown-capability", ["supports", "--everything"], ["unknown capability", "--everything"]),
]  # fmt: skip


@pytest.mark.parametrize("fault", CASES, ids=str)
def test_vnnlib_fault(fault: Fault, ws: Workspace, tmp_path: Path) -> None:
    result = check(fault, ws, tmp_path)
    assert result.stdout.strip() not in ("sat", "unsat", "unknown", "timed-out"), result.output


# Well-formed questions the engine does not decide: `unknown`, the reason on stderr, exit 0.
UNKNOWN = [
    # y0 = 2 x1 reaches 1000 for x1 = 500: a clipped search box finds nothing, and its unsat proves nothing.
    ("unbounded-input", HEAD2 + "(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0)))\n(assert (>= Y[0,0] 1000.0))\n", "net", "unbounded"),
    ("non-linear", HEAD2 + BOX2 + "(assert (>= (* Y[0,0] Y[0,1]) 1.0))\n", "net", "non-linear"),
    ("not-equal", HEAD2 + BOX2 + "(assert (!= Y[0,0] 1.0))\n", "net", "!= is not supported"),
    ("empty-box", HEAD2 + BOX2 + "(assert (>= X[0,0] 2.0))\n(assert (>= Y[0,0] 1.0))\n", "net", "empty range"),
    ("version-3", GOOD2.replace("<2.0>", "<3.0>"), "net", "version 3.0"),
    ("hidden-node", HEAD2.replace("(declare-output", "(declare-hidden H float32 [1,2] \"h\")\n    (declare-output") + BOX2, "net", "no hidden"),
    ("float16", GOOD2.replace("float32", "float16"), "net", "float16"),
    ("sigmoid", GOOD2, "sigmoid", "Sigmoid"),
    ("two-input-onnx", GOOD2, "two_inputs", "exactly one"),
    ("int-output", HEAD2.replace("Y float32", "Y int64") + BOX2, "net", "int64"),
]  # fmt: skip


def _sigmoid() -> onnx.ModelProto:
    model = _gemm(2, 2)
    model.graph.node.append(helper.make_node("Sigmoid", ["y"], ["z"]))
    model.graph.output[0].name = "z"
    return model


def _two_inputs() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x2"], ["y"])],
        "two",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2]),
            helper.make_tensor_value_info("x2", onnx.TensorProto.FLOAT, [1, 2]),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize(
    ("text", "network", "fragment"), [u[1:] for u in UNKNOWN], ids=[u[0] for u in UNKNOWN]
)
def test_well_formed_but_undecided_queries_answer_unknown(
    text: str, network: str, fragment: str, ws: Workspace, tmp_path: Path
) -> None:
    query = tmp_path / "q.vnnlib"
    query.write_text(text)
    path = ws.paths.get(network)
    if path is None:
        path = tmp_path / f"{network}.onnx"
        onnx.save({"sigmoid": _sigmoid, "two_inputs": _two_inputs}[network](), str(path))
    result = run(vnnlib_main, ["verify", str(query), "--network", f"N={path}", "--timeout", "10"])
    assert result.exit_code == OK and result.stdout == "unknown\n", result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert any(fragment.lower() in line.lower() for line in lines), result.stderr
