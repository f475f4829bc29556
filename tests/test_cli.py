"""The command line as a user runs it: results, summaries, resume, and every bad input (exit 2, one line)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner, Result
from onnx import helper

from faithverify.cli import main
from faithverify.pair import load_pair
from tests.conftest import export_onnx, random_mlp

FAST = ["--attack-steps", "5", "--restarts", "1", "--quiet", "--device", "cpu"]


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    paths = {
        "teacher": export_onnx(random_mlp(0, [12, 16, 16, 4]), torch.zeros(1, 12), d / "t.onnx"),
        "student": export_onnx(random_mlp(1, [12, 8, 4]), torch.zeros(1, 12), d / "s.onnx"),
        "wide_input": export_onnx(random_mlp(2, [13, 8, 4]), torch.zeros(1, 13), d / "w.onnx"),
        "three_classes": export_onnx(random_mlp(3, [12, 8, 3]), torch.zeros(1, 12), d / "c.onnx"),
    }
    rng = np.random.default_rng(0)
    np.savez(d / "points.npz", x=rng.random((10, 12), dtype=np.float32), y=rng.integers(0, 4, 10))
    np.savez(d / "bad_points.npz", x=rng.random((10, 7), dtype=np.float32), y=rng.integers(0, 4, 10))
    paths["data"], paths["bad_data"] = d / "points.npz", d / "bad_points.npz"
    return paths


def expect_bad_input(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_certify_writes_records_and_summary(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    result = invoke(
        "certify",
        models["teacher"],
        models["student"],
        "--data",
        models["data"],
        "--eps",
        "0.01",
        "--eps",
        "0.05",
        "--out",
        out,
        "--csv",
        tmp_path / "s.csv",
        *FAST,
    )
    assert result.exit_code == 0, result.output
    assert "| eps |" in result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["kind"] == "header"
    points = [line for line in lines if line["kind"] == "point"]
    assert len(points) == 20
    for p in points:
        assert 0 <= p["emp_lb"] <= p["faith_ub"] <= 1
        assert p["faith_ub"] == min(p["bounds"].values())
        assert p["agreement"] in (True, False)
    assert (tmp_path / "s.csv").read_text().startswith("eps,n,")


def test_resume_computes_only_what_is_missing(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    base = ["certify", models["teacher"], models["student"], "--data", models["data"], "--out", out, *FAST]
    assert invoke(*base, "--eps", "0.02", "--n", "4").exit_code == 0
    first = out.read_text().splitlines()
    # A run killed mid-line leaves a torn last line; resume drops it and recomputes that point.
    out.write_text("\n".join(first) + "\n" + first[-1][: len(first[-1]) // 2])
    result = invoke(*base, "--eps", "0.02", "--n", "6", "--resume", "--json")
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[: len(first)] == first
    assert len(lines) == 1 + 6
    summary = json.loads(result.output)
    assert summary[0]["n"] == 6


def test_resume_refuses_other_settings(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    base = [
        "certify",
        models["teacher"],
        models["student"],
        "--data",
        models["data"],
        "--out",
        out,
        "--n",
        "2",
    ]
    assert invoke(*base, "--eps", "0.02", *FAST).exit_code == 0
    before = out.read_text()
    result = invoke(*base, "--eps", "0.02", "--resume", "--bounds", "ibp", *FAST)
    expect_bad_input(result, "other settings", "methods")
    assert out.read_text() == before


def test_pair_writes_a_graph_that_reproduces_both_models(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sub" / "pair.onnx"
    result = invoke("pair", models["teacher"], models["student"], "-o", out)
    assert result.exit_code == 0, result.output
    paired = onnx.load(str(out))
    assert [o.name for o in paired.graph.output] == ["z_t", "z_s", "gap"]
    import onnxruntime as ort

    x = np.random.default_rng(1).random((5, 12), dtype=np.float32)
    z_t, z_s, gap = ort.InferenceSession(str(out)).run(None, {"x": x})
    pair = load_pair(models["teacher"], models["student"])
    np.testing.assert_allclose(
        z_t, pair.teacher.module.double()(torch.from_numpy(x).double()).numpy(), atol=1e-5
    )
    e_t, e_s = np.exp(z_t - z_t.max(1, keepdims=True)), np.exp(z_s - z_s.max(1, keepdims=True))
    expected = e_t / e_t.sum(1, keepdims=True) - e_s / e_s.sum(1, keepdims=True)
    np.testing.assert_allclose(gap, expected, atol=1e-6)


@pytest.mark.parametrize("eps", ["-0.1", "nan", "inf"])
def test_bad_eps(models: dict[str, Path], eps: str) -> None:
    result = invoke("certify", models["teacher"], models["student"], "--data", models["data"], "--eps", eps)
    expect_bad_input(result, "eps")


def test_missing_empty_truncated_and_non_onnx_files(models: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.onnx"
    raw = models["teacher"].read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    for bad in (tmp_path / "missing.onnx", empty, truncated, text):
        result = invoke("certify", bad, models["student"], "--data", models["data"], "--eps", "0.1")
        expect_bad_input(result, bad.name)


def test_unsupported_operator_names_op_and_node(models: dict[str, Path], tmp_path: Path) -> None:
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT, [12, 4], np.ones(48, dtype=np.float32))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="dense"),
            helper.make_node("Sigmoid", ["h"], ["y"], name="squash_layer"),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 12])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
        [w],
    )
    path = tmp_path / "sigmoid.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    result = invoke("certify", models["teacher"], path, "--data", models["data"], "--eps", "0.1")
    expect_bad_input(result, "Sigmoid", "squash_layer")


def test_mismatched_pairs(models: dict[str, Path]) -> None:
    result = invoke(
        "certify", models["teacher"], models["wide_input"], "--eps", "0.1", "--data", models["data"]
    )
    expect_bad_input(result, "input shape")
    result = invoke("pair", models["teacher"], models["three_classes"], "-o", "never.onnx")
    expect_bad_input(result, "class counts")
    assert not Path("never.onnx").exists()


def test_data_that_does_not_fit_the_model(models: dict[str, Path]) -> None:
    result = invoke(
        "certify", models["teacher"], models["student"], "--data", models["bad_data"], "--eps", "0.1"
    )
    expect_bad_input(result)


def test_output_path_that_cannot_be_written(models: dict[str, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    for target in (tmp_path, blocker / "r.jsonl"):
        result = invoke(
            "certify",
            models["teacher"],
            models["student"],
            "--data",
            models["data"],
            "--eps",
            "0.1",
            "--out",
            target,
            *FAST,
        )
        expect_bad_input(result, "cannot write")


def test_no_data_and_no_sample(models: dict[str, Path]) -> None:
    result = invoke("certify", models["teacher"], models["student"], "--eps", "0.1")
    expect_bad_input(result, "sample.npz")


def test_summary_of_a_results_file(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    base = [
        "certify",
        models["teacher"],
        models["student"],
        "--data",
        models["data"],
        "--out",
        out,
        "--n",
        "3",
    ]
    assert invoke(*base, "--eps", "0.02", *FAST).exit_code == 0
    result = invoke("summary", out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["n"] == 3
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("{not json\n")
    expect_bad_input(invoke("summary", garbage), "line 1")


@pytest.mark.parametrize("delta", ["-0.1", "1.5", "nan"])
def test_bad_delta(models: dict[str, Path], delta: str) -> None:
    result = invoke("certify", models["teacher"], models["student"], "--data", models["data"], "--eps", "0.1",
                    "--delta", delta)  # fmt: skip
    expect_bad_input(result, "delta")


# At eps 0.2 the attack and CROWN leave delta 0.11 undecided on these models: the MILP stage runs.
@pytest.mark.parametrize(("eps", "delta"), [("0.05", "0.1"), ("0.2", "0.11")])
def test_delta_gives_verdicts_in_records_and_summary(
    models: dict[str, Path], tmp_path: Path, eps: str, delta: str
) -> None:
    out = tmp_path / "r.jsonl"
    result = invoke(
        "certify", models["teacher"], models["student"], "--data", models["data"], "--eps", eps, "--n", "4",
        "--delta", delta, "--solver", "highs", "--timeout", "20", "--out", out, *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "certified / violated / unknown" in result.output
    points = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    assert len(points) == 4 and all(p["verdict"] in ("certified", "violated", "unknown") for p in points)
    refined = [p for p in points if p.get("milp")]
    if refined:  # the summary line accounts for every refinement the records show
        decided = sum(1 for p in refined if p["decided_by"] == p["milp"]["refiners"])
        assert f"Refinement: {len(refined)} points refined" in result.output
        assert f"; {decided} decided, " in result.output
    else:
        assert "Refinement:" not in result.output
