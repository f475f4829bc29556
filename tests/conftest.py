"""Shared fixtures: small real ONNX models exported by torch, and the shipped example pair."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

# isort: off
import faithverify  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY before OpenMP starts)

# isort: on
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "mnist"


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int = 17) -> Path:
    """Export with the TorchScript exporter and a dynamic batch axis."""
    model.eval()
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        opset_version=opset,
        dynamo=False,
    )
    return path


def random_mlp(seed: int, dims: list[int], scale: float = 1.0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(dims[:-1]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(dims[-2], dims[-1]))
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net


def random_cnn(seed: int, classes: int = 5) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 12),
        nn.ReLU(),
        nn.Linear(12, classes),
    )


@pytest.fixture(scope="session")
def shipped_pair_paths() -> tuple[Path, Path]:
    teacher, student = SHIPPED / "teacher.onnx", SHIPPED / "student-fd.onnx"
    if not (teacher.exists() and student.exists()):
        pytest.fail("the shipped example pair is missing from models/mnist")
    return teacher, student


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = os.environ.get("FAITHVERIFY_DATA_ROOT")
    if not root or not Path(root).is_dir():
        pytest.skip("FAITHVERIFY_DATA_ROOT is not set to a directory with the datasets")
    return Path(root)
