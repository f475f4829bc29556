"""``export-robustness``: one classifier's local robustness as a VNN-COMP suite that ``bench`` answers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from faithverify.cli import main
from faithverify.errors import DataError
from faithverify.onnx_io import run_onnxruntime
from faithverify.vnn.bench import read_instances
from faithverify.vnn.export import ball
from faithverify.vnn.instance import parse_result
from faithverify.vnn.robustness_export import (
    INSTANCES,
    MODEL,
    check_labels,
    export_robustness_suite,
    load_classifier,
    robustness_property,
)
from faithverify.vnn.vnnlib import read_vnnlib
from tests.conftest import export_onnx, random_mlp

INPUTS, CLASSES = 12, 4


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small MLP and four labelled points: 0 and 2 labelled as the model predicts, 1 and 3 not."""
    d = tmp_path_factory.mktemp("robust")
    net = export_onnx(random_mlp(0, [INPUTS, 16, 16, CLASSES]), torch.zeros(1, INPUTS), d / "net.onnx")
    x = np.random.default_rng(0).random((4, INPUTS), dtype=np.float32)
    predicted = run_onnxruntime(str(net), x).argmax(axis=1)
    y = predicted.copy()
    y[[1, 3]] = (predicted[[1, 3]] + 1) % CLASSES
    np.savez(d / "points.npz", x=x, y=y)
    return net, d / "points.npz"


def _export(classifier: tuple[Path, Path], out: Path, *extra: str) -> str:
    net, data = classifier
    argv = ["export-robustness", str(net), "--data", str(data), "-o", str(out), *extra]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    return result.output


def test_files_read_back_as_the_box_and_unsafe_rows(classifier: tuple[Path, Path], tmp_path: Path) -> None:
    net, data = classifier
    points = np.load(data)
    out = tmp_path / "suite"
    line = _export(classifier, out, "--eps", "0.05", "--eps", "0.6", "--timeout", "7")
    assert "8 instances (4 points x 2 eps)" in line and "2 of 4 points misclassified" in line

    instances = read_instances(out / INSTANCES)
    assert len(instances) == 8 and all(i.timeout == 7 for i in instances)
    assert all(i.onnx == out / MODEL for i in instances)
    with open(out / INSTANCES, newline="") as handle:
        assert all(len(row) == 3 and not Path(row[0]).is_absolute() for row in csv.reader(handle))
    for k, (x0, label) in enumerate(zip(points["x"], points["y"], strict=True)):
        for eps in (0.05, 0.6):
            prop = read_vnnlib(out / "vnnlib" / f"robust_{k:05d}_eps_{eps!r}.vnnlib")
            assert prop.input_boxes == [ball(x0, eps)]  # clipped to [0, 1]: eps 0.6 reaches both ends
            assert np.all(prop.input_boxes[0].lower >= 0) and np.all(prop.input_boxes[0].upper <= 1)
            rows = sorted((tuple(c.a[0]), float(c.b[0])) for c in prop.unsafe)
            expected = []
            for j in range(CLASSES):
                if j != label:
                    a = np.zeros(CLASSES)
                    a[label], a[j] = 1.0, -1.0  # Y_label - Y_j <= 0, i.e. Y_j >= Y_label
                    expected.append((tuple(a), 0.0))
            assert all(len(c.b) == 1 for c in prop.unsafe) and rows == sorted(expected)
            # At x0 the property says what the model says: unsafe iff the label does not win.
            logits = run_onnxruntime(str(net), x0[None])[0]
            assert prop.is_unsafe(logits) == (int(np.argmax(logits)) != int(label))


def test_exported_model_has_batch_one_and_the_same_logits(
    classifier: tuple[Path, Path], tmp_path: Path
) -> None:
    net, data = classifier
    _export(classifier, tmp_path / "suite", "--eps", "0.01")
    model = onnx.load(str(tmp_path / "suite" / MODEL))
    for value in (model.graph.input[0], model.graph.output[0]):
        assert value.type.tensor_type.shape.dim[0].dim_value == 1
    x = np.load(data)["x"]
    np.testing.assert_array_equal(run_onnxruntime(model, x), run_onnxruntime(str(net), x))


def test_bench_answers_sat_where_misclassified_and_unsat_at_eps_zero(
    classifier: tuple[Path, Path], tmp_path: Path
) -> None:
    net, _ = classifier
    out = tmp_path / "suite"
    _export(classifier, out, "--eps", "0", "--eps", "0.01", "--timeout", "20")
    summary = tmp_path / "results.csv"
    result = CliRunner().invoke(main, ["bench", str(out / INSTANCES), "--out", str(summary), "--quiet"])
    assert result.exit_code == 0, result.output
    with open(summary, newline="") as handle:
        rows = list(csv.DictReader(handle))
    outcome = {Path(r["vnnlib"]).name: r["result"] for r in rows}
    for k in (1, 3):  # misclassified at x0: sat at every radius
        assert outcome[f"robust_{k:05d}_eps_0.0.vnnlib"] == "sat"
        assert outcome[f"robust_{k:05d}_eps_0.01.vnnlib"] == "sat"
    for k in (0, 2):  # correctly classified, eps 0: the box is x0 itself
        assert outcome[f"robust_{k:05d}_eps_0.0.vnnlib"] == "unsat"
    sats = [r for r in rows if r["result"] == "sat"]
    assert len(sats) >= 4
    for r in sats:  # every counterexample, re-checked here with onnxruntime on the original model
        _, x, y = parse_result(Path(r["result_file"]).read_text())
        assert x is not None and y is not None
        prop = read_vnnlib(r["vnnlib"])
        assert prop.in_input_region(x)
        logits = run_onnxruntime(str(net), x.astype(np.float32)[None])[0]
        np.testing.assert_allclose(logits, y, rtol=0, atol=1e-6)
        assert prop.is_unsafe(logits)


def test_the_shipped_teacher_is_certified_at_eps_zero(tmp_path: Path) -> None:
    """Two points of the shipped MNIST sample, both correctly classified by the teacher: unsat at eps 0."""
    from faithverify.data import select_points
    from faithverify.vnn.bench import run_instance

    teacher = Path(__file__).resolve().parents[1] / "models" / "mnist" / "teacher.onnx"
    model = load_classifier(teacher)
    points = select_points(str(teacher.parent / "sample.npz"), model.input_shape, count=2)
    suite = export_robustness_suite(
        model, points.x, points.labels, points.indices, [0.0], tmp_path, timeout=30
    )
    assert suite.misclassified == [] and len(suite.instances) == 2
    for inst in suite.instances:
        answer = run_instance(tmp_path / inst.onnx, tmp_path / inst.vnnlib, inst.timeout)
        assert answer.outcome.value == "unsat", answer.reason


def test_labels_are_required_and_checked() -> None:
    with pytest.raises(DataError, match="no labels"):
        check_labels(None, [0, 1], 4)
    with pytest.raises(DataError, match="label 4 of point 7"):
        check_labels(np.array([0, 4]), [6, 7], 4)
    with pytest.raises(DataError, match="label -1 of point 6"):
        check_labels(np.array([-1, 0]), [6, 7], 4)
    with pytest.raises(DataError, match="whole numbers"):
        check_labels(np.array([0.5, 1.0]), [0, 1], 4)
    assert check_labels(np.array([1.0, 3.0]), [0, 1], 4).tolist() == [1, 3]


def test_property_has_one_disjunct_per_other_class() -> None:
    prop = robustness_property(ball(np.zeros(3), 0.1), 2, 5)
    assert len(prop.unsafe) == 4
    assert prop.is_unsafe(np.array([0.0, 0.0, 1.0, 1.0, 0.0]))  # a tie is unsafe
    assert not prop.is_unsafe(np.array([0.0, 0.0, 1.0, 0.9, 0.0]))
    with pytest.raises(ValueError, match="label 5"):
        robustness_property(ball(np.zeros(3), 0.1), 5, 5)
