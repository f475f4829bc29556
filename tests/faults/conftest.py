"""Fixtures of the fault suite: one small real workspace (ONNX pair, points, a finished results file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import export_onnx, random_mlp
from tests.faults.harness import Workspace, run

FAST = ["--attack-steps", "5", "--restarts", "1", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    from faithverify.cli import main

    d = tmp_path_factory.mktemp("faults")
    paths = {
        "teacher": export_onnx(random_mlp(0, [12, 16, 16, 4]), torch.zeros(1, 12), d / "teacher.onnx"),
        "student": export_onnx(random_mlp(1, [12, 8, 4]), torch.zeros(1, 12), d / "student.onnx"),
    }
    rng = np.random.default_rng(0)
    np.savez(d / "points.npz", x=rng.random((6, 12), dtype=np.float32), y=rng.integers(0, 4, 6))
    paths["data"] = d / "points.npz"
    paths["results"] = d / "results.jsonl"
    argv = ["certify", str(paths["teacher"]), str(paths["student"]), "--data", str(paths["data"])]
    result = run(main, [*argv, "--eps", "0.02", "--n", "3", "--out", str(paths["results"]), *FAST])
    assert result.exit_code == 0, result.output
    return Workspace(paths)
