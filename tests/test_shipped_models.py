"""The shipped example pair: it loads, matches onnxruntime, and reaches the accuracies on its card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faithverify.data import load_dataset
from faithverify.onnx_io import run_onnxruntime
from faithverify.pair import load_pair
from tests.conftest import SHIPPED


def card_accuracy(file: str) -> float:
    """The clean test accuracy the card of ``file`` states, as a fraction."""
    from faithverify.train.run import ModelCard, card_paths

    return ModelCard.read(card_paths(SHIPPED / file)[0]).clean_accuracy


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


@pytest.mark.parametrize("file", ["teacher.onnx", "student-fd.onnx"])
def test_full_test_accuracy_matches_the_card(data_root: Path, file: str) -> None:
    test = load_dataset("mnist", split="test", data_root=data_root)
    predictions = run_onnxruntime(SHIPPED / file, test.x.reshape(len(test.x), -1)).argmax(1)
    assert (predictions == test.y).mean() == pytest.approx(card_accuracy(file), abs=2 / len(test.x))
    full = load_dataset(SHIPPED / "sample.npz")
    np.testing.assert_array_equal(full.x, test.x[:200].reshape(200, -1))


# --- Every model with a card (models/<dataset>/*.card.json, written by train-teacher / distill) -----------------

CARDS = sorted((SHIPPED.parent).glob("*/*.card.json"))


def test_every_dataset_ships_a_teacher_and_four_students() -> None:
    for dataset in ("mnist", "fashion-mnist", "cifar10"):
        names = {p.name.removesuffix(".card.json") for p in CARDS if p.parent.name == dataset}
        assert names == {"teacher", "student-sd", "student-ard", "student-rslad", "student-fd"}, dataset


@pytest.mark.parametrize("card_path", CARDS, ids=[f"{p.parent.name}/{p.name}" for p in CARDS])
def test_card_matches_its_model(card_path: Path, data_root: Path) -> None:
    import hashlib

    from faithverify.train.run import ModelCard

    card = ModelCard.read(card_path)
    model = card_path.parent / card.file
    assert hashlib.sha256(model.read_bytes()).hexdigest() == card.sha256
    if card.teacher is not None:
        teacher = card_path.parent / card.teacher
        assert hashlib.sha256(teacher.read_bytes()).hexdigest() == card.teacher_sha256
    test = load_dataset(card.recipe["dataset"], split="test", data_root=data_root)
    x = test.x.reshape(len(test.x), *run_shape(model))
    accuracy = float((run_onnxruntime(model, x).argmax(1) == test.y).mean())
    # The card was measured in torch (float32); onnxruntime may flip an image whose top two logits tie to 1e-6.
    assert accuracy == pytest.approx(card.clean_accuracy, abs=2 / len(test.x))
    assert card.test_size == len(test.x)


def run_shape(model: Path) -> tuple[int, ...]:
    from faithverify.onnx_io import load_model

    return load_model(model, check=False).input_shape
