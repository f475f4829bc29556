"""The shipped example pair: it loads, matches onnxruntime, and reaches the accuracies on its card."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from faithverify.data import load_dataset
from faithverify.onnx_io import run_onnxruntime
from faithverify.pair import load_pair
from tests.conftest import SHIPPED


def card_accuracy(model: str) -> float:
    """The clean test accuracy the card states for ``teacher`` or ``student``, as a fraction."""
    text = (SHIPPED / "CARD.md").read_text()
    match = re.search(rf"^\| {model} \([^)]*\) \| ([0-9.]+)% \|", text, flags=re.MULTILINE)
    assert match, f"no clean accuracy for {model} in CARD.md"
    return float(match.group(1)) / 100


def test_pair_loads_and_matches_onnxruntime(shipped_pair_paths: tuple[Path, Path]) -> None:
    pair = load_pair(*shipped_pair_paths)
    assert pair.input_shape == (784,) and pair.num_classes == 10
    assert pair.teacher.max_abs_diff < 1e-4 and pair.student.max_abs_diff < 1e-4


def test_sample_is_the_first_mnist_test_images(shipped_pair_paths: tuple[Path, Path]) -> None:
    sample = load_dataset(SHIPPED / "sample.npz")
    assert sample.x.shape == (200, 784) and sample.x.dtype == np.float32
    assert sample.x.min() >= 0.0 and sample.x.max() <= 1.0
    teacher, student = shipped_pair_paths
    for path in (teacher, student):
        accuracy = (run_onnxruntime(path, sample.x).argmax(1) == sample.y).mean()
        assert accuracy >= 0.9


@pytest.mark.parametrize(("model", "file"), [("teacher", "teacher.onnx"), ("student", "student-fd.onnx")])
def test_full_test_accuracy_matches_the_card(data_root: Path, model: str, file: str) -> None:
    test = load_dataset("mnist", split="test", data_root=data_root)
    predictions = run_onnxruntime(SHIPPED / file, test.x.reshape(len(test.x), -1)).argmax(1)
    assert (predictions == test.y).mean() == pytest.approx(card_accuracy(model), abs=0.0001)
    full = load_dataset(SHIPPED / "sample.npz")
    np.testing.assert_array_equal(full.x, test.x[:200].reshape(200, -1))
