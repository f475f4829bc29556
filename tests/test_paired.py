"""The paired network (bounds/paired.py): teacher and student as one network of the shared input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from faithverify.bounds.paired import UnpairableError, logit_shift, paired_form
from faithverify.bounds.torchnet import BoundNetwork
from faithverify.network import PiecewiseLinearNetwork
from faithverify.onnx_io import load_model
from tests.conftest import export_onnx, random_cnn, random_mlp


def _form(module: nn.Module, dim: int) -> PiecewiseLinearNetwork:
    return PiecewiseLinearNetwork.from_module(module.double().eval(), dim)


def _box(dim: int, seed: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    x0 = np.random.default_rng(seed).random(dim)
    return np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1)


def _shift(form: PiecewiseLinearNetwork, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    net = BoundNetwork.of(form)
    z_lo, _ = net.interval(torch.from_numpy(lo[None]), torch.from_numpy(hi[None]))[-1]
    return logit_shift(z_lo[0].numpy())


@pytest.mark.parametrize(
    ("teacher_dims", "student_dims"), [([6, 9, 9, 9, 3], [6, 4, 3]), ([6, 5, 3], [6, 7, 7, 3])]
)
def test_paired_outputs_are_both_networks_on_the_box(
    teacher_dims: list[int], student_dims: list[int]
) -> None:
    teacher, student = _form(random_mlp(1, teacher_dims), 6), _form(random_mlp(2, student_dims), 6)
    lo, hi = _box(6, 0, 0.3)
    shorter = student if len(student.ops) < len(teacher.ops) else teacher
    paired = paired_form(teacher, student, _shift(shorter, lo, hi))
    x = np.random.default_rng(1).uniform(lo, hi, size=(500, 6))
    expected = np.concatenate([teacher.forward(x), student.forward(x)], axis=1)
    assert np.abs(paired.forward(x) - expected).max() < 1e-12


def test_carried_logits_never_touch_the_relu_kink() -> None:
    """Past the shorter network's end its logits pass ReLUs shifted to be positive on the whole box: the bound
    network sees them as active (no relaxation, nothing to split)."""
    teacher, student = _form(random_mlp(3, [6, 9, 9, 9, 3]), 6), _form(random_mlp(4, [6, 4, 3]), 6)
    lo, hi = _box(6, 2, 0.5)
    net = BoundNetwork.of(paired_form(teacher, student, _shift(student, lo, hi)))
    bounds = net.interval(torch.from_numpy(lo[None]), torch.from_numpy(hi[None]))
    # outputs of the affine layers from the student's last one on: what the carried ReLUs read
    carried = [b for k, b in enumerate(bounds[1:]) if k >= len(student.ops) - 1 and k % 2 == 0 and k < 6]
    assert carried
    for b_lo, _ in carried:
        assert float(b_lo[0, -3:].min()) > 0  # the student's part comes second


def _onnx_form(module: nn.Module, example: torch.Tensor, path: Path) -> PiecewiseLinearNetwork:
    return load_model(export_onnx(module, example, path)).network


def test_cnns_of_the_same_pattern_pair_and_mismatched_ones_say_where(tmp_path: Path) -> None:
    image = torch.zeros(1, 1, 8, 8)
    teacher = _onnx_form(random_cnn(5), image, tmp_path / "t.onnx")
    student = _onnx_form(random_cnn(6), image, tmp_path / "s.onnx")
    lo, hi = _box(64, 3, 0.1)
    paired = paired_form(teacher, student, np.zeros(5))
    x = np.random.default_rng(4).uniform(lo, hi, size=(200, 64))
    expected = np.concatenate([teacher.forward(x), student.forward(x)], axis=1)
    assert np.abs(paired.forward(x) - expected).max() < 1e-12
    mlp_module = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 7), nn.ReLU(), nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 5)
    )
    mlp = _onnx_form(mlp_module, image, tmp_path / "m.onnx")
    with pytest.raises(
        UnpairableError, match="layer 2: the teacher has a max-pool, the student an affine map"
    ):
        paired_form(teacher, mlp, np.zeros(5))
