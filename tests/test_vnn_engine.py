"""The VNN engine, suite runner and VNN-LIB 2.0 solver interface against independent answers: exact optima on
tiny networks (dense grids), PGD on an MNIST classifier, onnxruntime for every counterexample."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from faithverify.attack import input_box
from faithverify.bounds.milp import Solver
from faithverify.data import load_dataset
from faithverify.onnx_io import load_model, run_onnxruntime
from faithverify.threads import torch_threads
from faithverify.vnn.bench import read_instances, run_suite
from faithverify.vnn.engine import Outcome, Problem, verify
from faithverify.vnn.instance import parse_result, query_from_instance
from faithverify.vnn.solver_cli import main as solver_main
from faithverify.vnn.vnnlib import Box, Conjunct, Property, write_vnnlib
from tests.conftest import SHIPPED, export_onnx, random_mlp


def robustness_property(x0: np.ndarray, label: int, eps: float, classes: int = 10) -> Property:
    """VNN-COMP's local robustness: some other class scores at least the label's (``Y_label - Y_j <= 0``)."""
    lower, upper = input_box(x0[None], eps)
    unsafe = []
    for j in range(classes):
        if j != label:
            a = np.zeros((1, classes))
            a[0, label], a[0, j] = 1.0, -1.0
            unsafe.append(Conjunct(a, np.zeros(1)))
    return Property([Box(lower[0], upper[0])], unsafe)


def single_query(path: Path, prop: Property) -> Problem:
    return query_from_instance(path, prop)


# --- Tiny networks: the exact minimum over a dense grid decides the right answer -------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(
        random_mlp(3, [2, 8, 8, 3]), torch.zeros(1, 2), tmp_path_factory.mktemp("tiny") / "t.onnx"
    )


def grid_min(path: Path, row: np.ndarray, lower: np.ndarray, upper: np.ndarray, n: int = 401) -> float:
    a, b = np.meshgrid(np.linspace(lower[0], upper[0], n), np.linspace(lower[1], upper[1], n))
    xs = np.stack([a.ravel(), b.ravel()], 1).astype(np.float32)
    return float((run_onnxruntime(path, xs) @ row).min())


@pytest.mark.parametrize("offset", [-0.05, 0.05])
def test_tiny_network_answers_match_the_grid_minimum(tiny: Path, offset: float) -> None:
    """Unsafe set ``row · y <= m + offset`` with m the grid minimum of ``row · y``: sat below, unsat above."""
    lower, upper = np.array([0.2, 0.3]), np.array([0.6, 0.9])
    row = np.array([1.0, -1.0, 0.5])
    m = grid_min(tiny, row, lower, upper)
    prop = Property([Box(lower, upper)], [Conjunct(row[None], np.array([m + offset]))])
    answer = verify(single_query(tiny, prop), timeout=30, solver=Solver.HIGHS)
    if offset > 0:  # the grid shows a point inside the unsafe set
        assert answer.outcome is Outcome.SAT
        assert answer.x is not None and answer.y is not None
        assert np.all(answer.x >= lower - 1e-7) and np.all(answer.x <= upper + 1e-7)
        y = run_onnxruntime(tiny, answer.x.reshape(1, 2).astype(np.float32))[0]
        assert row @ y <= m + offset
    else:  # the true minimum is within ~1e-3 of the grid's: 0.05 below it nothing is unsafe
        assert answer.outcome is Outcome.UNSAT


def test_disjunctive_input_boxes_need_every_box_refuted(tiny: Path) -> None:
    row = np.array([1.0, -1.0, 0.5])
    safe = (np.array([0.2, 0.3]), np.array([0.6, 0.9]))
    other = (np.array([0.0, 0.0]), np.array([1.0, 1.0]))
    threshold = grid_min(tiny, row, *safe) - 0.05
    assert grid_min(tiny, row, *other) < threshold  # the wider box reaches the unsafe set
    one = Property([Box(*safe)], [Conjunct(row[None], np.array([threshold]))])
    both = Property([Box(*safe), Box(*other)], [Conjunct(row[None], np.array([threshold]))])
    assert verify(single_query(tiny, one), 30, solver=Solver.HIGHS).outcome is Outcome.UNSAT
    answer = verify(single_query(tiny, both), 30, solver=Solver.HIGHS)
    assert answer.outcome is Outcome.SAT and answer.x is not None
    assert np.all(answer.x >= other[0]) and np.all(answer.x <= other[1])


# --- MNIST robustness: no unsat where PGD finds a counterexample ----------------------------------------------


def pgd_counterexample(path: Path, x0: np.ndarray, label: int, eps: float) -> bool:
    with torch_threads(1):
        return _pgd_counterexample(path, x0, label, eps)


def _pgd_counterexample(path: Path, x0: np.ndarray, label: int, eps: float) -> bool:
    model = load_model(path).module.float()
    lo, hi = (torch.from_numpy(v.astype(np.float32)) for v in input_box(x0[None], eps))
    x = ((lo + hi) / 2).clone()
    for _ in range(100):
        x.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([label]))
        (grad,) = torch.autograd.grad(loss, x)
        x = torch.minimum(torch.maximum(x.detach() + 2.5 * eps / 100 * grad.sign(), lo), hi)
    return int(run_onnxruntime(path, x.numpy()).argmax()) != label


def test_mnist_robustness_answers_agree_with_pgd() -> None:
    sample = load_dataset(SHIPPED / "sample.npz")
    teacher = SHIPPED / "teacher.onnx"
    outcomes = []
    for index, eps in [(0, 0.02), (1, 0.05), (2, 0.1), (3, 0.15), (4, 0.2), (8, 0.1)]:
        x0, label = sample.x[index], int(sample.y[index])
        # Attack and CROWN only (no MILP): fast, and the claim under test is about soundness, not completeness.
        answer = verify(single_query(teacher, robustness_property(x0, label, eps)), timeout=10, milp=False)
        outcomes.append(answer.outcome)
        if pgd_counterexample(teacher, x0, label, eps):
            assert answer.outcome is not Outcome.UNSAT, (index, eps)
        if answer.outcome is Outcome.SAT:
            assert answer.x is not None
            lower, upper = input_box(x0[None], eps)
            assert np.all(answer.x >= lower[0] - 1e-7) and np.all(answer.x <= upper[0] + 1e-7)
            assert int(run_onnxruntime(teacher, answer.x[None]).argmax()) != label
    assert Outcome.UNSAT in outcomes and Outcome.SAT in outcomes  # both answers occur on this grid


# --- The suite runner -----------------------------------------------------------------------------------------


def sigmoid_model(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"], name="squash")], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)]), str(path))
    return path


def test_suite_writes_results_and_resumes(tiny: Path, tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    (suite / "nets").mkdir(parents=True)
    net = suite / "nets" / "tiny.onnx.gz"
    net.write_bytes(gzip.compress(tiny.read_bytes()))
    row = np.array([1.0, -1.0, 0.5])
    lower, upper = np.array([0.2, 0.3]), np.array([0.6, 0.9])
    m = grid_min(tiny, row, lower, upper)
    write_vnnlib(
        suite / "safe.vnnlib", Property([Box(lower, upper)], [Conjunct(row[None], np.array([m - 0.05]))])
    )
    write_vnnlib(
        suite / "unsafe.vnnlib.gz", Property([Box(lower, upper)], [Conjunct(row[None], np.array([m + 0.05]))])
    )
    sigmoid_model(suite / "nets" / "sigmoid.onnx")
    write_vnnlib(
        suite / "sig.vnnlib", Property([Box(lower, upper)], [Conjunct(np.eye(2)[:1], np.array([0.0]))])
    )
    (suite / "instances.csv").write_text(
        "nets/tiny.onnx.gz,safe.vnnlib,30\nnets/tiny.onnx.gz,unsafe.vnnlib.gz,30\nnets/sigmoid.onnx,sig.vnnlib,5\n"
    )
    summary, results = tmp_path / "out" / "summary.csv", tmp_path / "out" / "results"
    ran = list(run_suite(suite / "instances.csv", summary, results, solver=Solver.HIGHS))
    assert [a.outcome.value if a else None for _, a in ran] == ["unsat", "sat", "unknown"]
    rows = list(csv.DictReader(summary.open()))
    assert [r["result"] for r in rows] == ["unsat", "sat", "unknown"]
    assert "Sigmoid" in rows[2]["reason"] and "squash" in rows[2]["reason"]
    outcome, x, y = parse_result(Path(rows[1]["result_file"]).read_text())
    assert outcome == "sat" and x is not None and y is not None
    np.testing.assert_allclose(run_onnxruntime(tiny, x.reshape(1, 2).astype(np.float32))[0], y, rtol=1e-6)
    assert Path(rows[0]["result_file"]).read_text() == "unsat\n"
    # Resuming runs nothing again.
    again = list(run_suite(suite / "instances.csv", summary, results, resume=True))
    assert all(a is None for _, a in again) and len(list(csv.DictReader(summary.open()))) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.onnx,b.vnnlib\n", "expected onnx,vnnlib,timeout"),
        ("a.onnx,b.vnnlib,soon\n", "is not a number"),
        ("a.onnx,b.vnnlib,-3\n", "must be positive"),
        ("\n", "no instances"),
    ],
)
def test_bad_instances_csv_is_refused_with_its_line(tmp_path: Path, text: str, message: str) -> None:
    from faithverify.errors import DataError

    (tmp_path / "instances.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        read_instances(tmp_path / "instances.csv")


# --- The VNN-LIB 2.0 solver interface -------------------------------------------------------------------------


def two_network_query(eps: float, delta: float, x0: np.ndarray) -> str:
    lines = [
        "(vnnlib-version <2.0>)",
        "(declare-network teacher (declare-input Xt float32 [1,784]) (declare-output Yt float32 [1,10]))",
        "(declare-network student (declare-input Xs float32 [1,784]) (declare-output Ys float32 [1,10]))",
    ]
    lines.append("(assert (and " + " ".join(f"(== Xs[0,{i}] Xt[0,{i}])" for i in range(784)) + "))")
    lower, upper = input_box(x0[None], eps)
    bounds = [f"(>= Xt[0,{i}] {lower[0, i]:.9f}) (<= Xt[0,{i}] {upper[0, i]:.9f})" for i in range(784)]
    lines.append("(assert (and " + " ".join(bounds) + "))")
    # Logit outputs: the teacher's logit for class 0 exceeds the student's by delta or more.
    lines.append(f"(assert (>= (- Yt[0,0] Ys[0,0]) {delta:.6f}))")
    return "\n".join(lines) + "\n"


def test_solver_interface_on_one_and_two_network_queries(tmp_path: Path) -> None:
    sample = load_dataset(SHIPPED / "sample.npz")
    x0 = sample.x[0]
    teacher, student = SHIPPED / "teacher.onnx", SHIPPED / "student-fd.onnx"
    gap = float((run_onnxruntime(teacher, x0[None]) - run_onnxruntime(student, x0[None]))[0, 0])
    networks = ["--network", f"teacher={teacher}", "--network", f"student={student}"]
    runner = CliRunner()
    # Far above what the logit gap reaches in a tiny ball: unsat. Below the gap at x0 itself: sat.
    (tmp_path / "unsat.vnnlib").write_text(two_network_query(0.005, gap + 20.0, x0))
    result = runner.invoke(
        solver_main, ["verify", str(tmp_path / "unsat.vnnlib"), *networks, "--timeout", "30"]
    )
    assert result.exit_code == 0 and result.output.splitlines()[0] == "unsat", result.output
    (tmp_path / "sat.vnnlib").write_text(two_network_query(0.005, gap - 0.5, x0))
    result = runner.invoke(
        solver_main, ["verify", str(tmp_path / "sat.vnnlib"), *networks, "--timeout", "30"]
    )
    lines = result.output.splitlines()
    assert result.exit_code == 0 and lines[0] == "sat", result.output
    assert lines[1] == "Xt float32 [1,784]"
    x = np.array([float(v) for v in lines[2:786]], dtype=np.float32)
    zt, zs = run_onnxruntime(teacher, x[None])[0], run_onnxruntime(student, x[None])[0]
    assert zt[0] - zs[0] >= gap - 0.5
    assert np.abs(x - x0).max() <= 0.005 + 1e-7
    # One network, one output constraint: the teacher's own logit 0 above a bound it never reaches.
    one = "\n".join(
        [
            "(vnnlib-version <2.0>)",
            "(declare-network f (declare-input X float32 [1,784]) (declare-output Y float32 [1,10]))",
            "(assert (and " + " ".join(f"(>= X[0,{i}] 0.0) (<= X[0,{i}] 0.001)" for i in range(784)) + "))",
            "(assert (>= Y[0,0] 1000.0))",
        ]
    )
    (tmp_path / "one.vnnlib").write_text(one + "\n")
    result = runner.invoke(solver_main, ["verify", str(tmp_path / "one.vnnlib"), "--network", f"f={teacher}"])
    assert result.exit_code == 0 and result.output.strip() == "unsat", result.output


def test_solver_interface_errors_and_unknowns(tmp_path: Path) -> None:
    runner = CliRunner()
    query = tmp_path / "q.vnnlib"
    query.write_text(
        "(vnnlib-version <2.0>)\n(declare-network f (declare-input X float32 [1,2]) (declare-output Y float32 [1,2]))\n"
        "(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0) (>= X[0,1] 0.0) (<= X[0,1] 1.0)))\n(assert (>= Y[0,0] 2.0))\n"
    )
    result = runner.invoke(solver_main, ["verify", str(query)])
    assert result.exit_code == 2 and "no --network" in result.output
    result = runner.invoke(
        solver_main, ["verify", str(query), "--network", "f=a.onnx", "--network", "g=b.onnx"]
    )
    assert result.exit_code == 2 and "no such network is declared" in result.output
    sig = sigmoid_model(tmp_path / "sig.onnx")
    result = runner.invoke(solver_main, ["verify", str(query), "--network", f"f={sig}"])
    assert result.exit_code == 0 and result.stdout.strip() == "unknown"
    assert "Sigmoid" in result.stderr
    for capability, expected in [("--vnnlib-versions", "2.0"), ("--onnx-operators", "Gemm")]:
        result = runner.invoke(solver_main, ["supports", capability])
        assert result.exit_code == 0 and expected in result.output.split()
    assert runner.invoke(solver_main, ["supports", "--nothing"]).exit_code == 2
    assert runner.invoke(solver_main, ["--name"]).output.strip() == "faithverify"


# --- An exported pair suite agrees with certify ---------------------------------------------------------------


def test_exported_pair_suite_agrees_with_certify(
    shipped_pair_paths: tuple[Path, Path], tmp_path: Path
) -> None:
    from faithverify.cli import main

    teacher, student = (str(p) for p in shipped_pair_paths)
    runner = CliRunner()
    # Pixel radii of the paper's eps 0.1 and 0.2 on these models: certified and violated points both occur.
    common = ["--n", "8", "--eps", "0.03", "--eps", "0.06", "--delta", "0.2"]
    result = runner.invoke(main, ["export-vnn", teacher, student, *common, "-o", str(tmp_path / "suite")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "certify.jsonl"
    result = runner.invoke(
        main, ["certify", teacher, student, *common, "--no-refine", "--quiet", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    summary = tmp_path / "bench.csv"
    # Attack and CROWN only, like certify --no-refine: the same stages must give the same answers.
    bench = [
        "bench",
        str(tmp_path / "suite" / "instances.csv"),
        "--out",
        str(summary),
        "--no-milp",
        "--quiet",
    ]
    result = runner.invoke(main, bench)
    assert result.exit_code == 0, result.output

    from faithverify.results import read_results

    verdicts = {(p.index, p.eps): p.verdict for p in read_results(out)[1]}
    instances = read_instances(tmp_path / "suite" / "instances.csv")
    rows = list(csv.DictReader(summary.open()))
    assert len(rows) == len(instances) == 16
    seen = set()
    for inst, row in zip(instances, rows, strict=True):
        # File names carry the point and eps: pair_00003_eps_0.05.vnnlib
        stem = inst.vnnlib.name.removesuffix(".vnnlib")
        index, eps = int(stem.split("_")[1]), float(stem.split("_eps_")[1])
        verdict = verdicts[(index, eps)]
        seen.add(verdict)
        if verdict == "certified":
            assert row["result"] == "unsat", (stem, row)
        if verdict == "violated":
            assert row["result"] == "sat", (stem, row)
        if row["result"] == "sat":
            _, x, y = parse_result(Path(row["result_file"]).read_text())
            assert x is not None and y is not None
            gap = run_onnxruntime(
                tmp_path / "suite" / "onnx" / "pair_gap.onnx", x.reshape(1, -1).astype(np.float32)
            )
            np.testing.assert_allclose(gap[0], y, atol=1e-6)
            assert np.abs(gap).max() >= 0.2
        if row["result"] == "unsat":
            assert verdict != "violated"
    assert {"certified", "violated"} <= seen
