"""Bad input to ``export-robustness``: exit 2, one line naming the problem, and no suite folder written."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import export_onnx, random_mlp
from tests.faults.harness import Fault, Make, Workspace, check

SUITE = "{tmp}/suite"
LONG = "n" * 300  # longer than any file system's name limit (255 bytes)


def _run(*options: str, model: str = "{teacher}", data: str = "{data}") -> list[str]:
    return ["export-robustness", model, "--data", data, *options]


def _points(y: np.ndarray | None, name: str = "points.npz") -> Make:
    """Six points of the workspace's 12 inputs with labels ``y`` (no ``y`` array at all for None)."""

    def make(tmp: Path, _ws: Workspace) -> Mapping[str, Path]:
        arrays = {"x": np.random.default_rng(0).random((6, 12), dtype=np.float32)}
        if y is not None:
            arrays["y"] = y
        np.savez(tmp / name, **arrays)  # type: ignore[arg-type]
        return {"points": tmp / name}

    return make


def _idx_without_labels(tmp: Path, _ws: Workspace) -> Mapping[str, Path]:
    """An MNIST-layout folder with the test images but no label file."""
    folder = tmp / "mnist"
    folder.mkdir()
    header = np.array([0x00000803, 2, 3, 4], dtype=">u4").tobytes()
    (folder / "t10k-images-idx3-ubyte").write_bytes(header + bytes(2 * 12))
    return {"idx": folder}


def _one_class(tmp: Path, _ws: Workspace) -> Mapping[str, Path]:
    return {"one": export_onnx(random_mlp(2, [12, 8, 1]), torch.zeros(1, 12), tmp / "one.onnx")}


def _file(tmp: Path, _ws: Workspace) -> Mapping[str, Path]:
    (tmp / "file").write_text("")
    return {"file": tmp / "file"}


def _fault(id: str, argv: list[str], fragments: list[str], make: Make | None = None) -> Fault:
    return Fault(f"er-{id}", argv, fragments, make=make, not_written=[SUITE])


CASES = [
    _fault("model-missing", _run("--eps", "0.1", "-o", SUITE, model="{tmp}/none.onnx"), ["none.onnx"]),
    _fault(
        "model-one-class",
        _run("--eps", "0.1", "-o", SUITE, model="{one}"),
        ["one.onnx", "at least 2"],
        _one_class,
    ),
    _fault("eps-negative", _run("--eps", "-0.1", "-o", SUITE), ["eps", "-0.1"]),
    _fault("eps-nan", _run("--eps", "nan", "-o", SUITE), ["eps", "nan"]),
    _fault("eps-inf", _run("--eps", "0.1", "--eps", "inf", "-o", SUITE), ["eps", "inf"]),
    _fault("eps-missing", _run("-o", SUITE), ["--eps"]),
    _fault("timeout-nan", _run("--eps", "0.1", "--timeout", "nan", "-o", SUITE), ["--timeout"]),
    _fault("timeout-zero", _run("--eps", "0.1", "--timeout", "0", "-o", SUITE), ["--timeout"]),
    _fault("labels-missing-npz", _run("--eps", "0.1", "-o", SUITE, data="{points}"), ["'y'"], _points(None)),
    _fault(
        "labels-missing-idx", _run("--eps", "0.1", "-o", SUITE, data="{idx}"), ["labels"], _idx_without_labels
    ),
    _fault(
        "label-out-of-range",
        _run("--eps", "0.1", "-o", SUITE, data="{points}"),
        ["label 7", "point 2", "0 .. 3"],
        _points(np.array([0, 1, 7, 3, 0, 1])),
    ),
    _fault(
        "label-negative",
        _run("--eps", "0.1", "-o", SUITE, data="{points}"),
        ["label -1"],
        _points(np.array([-1, 1, 2, 3, 0, 1])),
    ),
    _fault(
        "label-out-of-range-after-start",  # --start 1 --n 2 keeps points 1 and 2, named by dataset index
        _run("--eps", "0.1", "--start", "1", "--n", "2", "-o", SUITE, data="{points}"),
        ["label 9", "point 2"],
        _points(np.array([0, 1, 9, 3, 0, 1])),
    ),
    _fault("data-missing", _run("--eps", "0.1", "-o", SUITE, data="{tmp}/none.npz"), ["none.npz"]),
    Fault("er-out-under-a-file", _run("--eps", "0.1", "-o", "{file}/suite"), ["is a file"], make=_file),
    Fault(
        "er-out-is-a-file", _run("--eps", "0.1", "-o", "{file}"), ["file"], make=_file, unchanged=["{file}"]
    ),
    Fault("er-out-name-too-long", _run("--eps", "0.1", "-o", f"{{tmp}}/{LONG}"), ["too long"]),
]


@pytest.mark.parametrize("fault", CASES, ids=str)
def test_export_robustness_fault(fault: Fault, workspace: Workspace, tmp_path: Path) -> None:
    check(fault, workspace, tmp_path)


def test_case_ids_are_unique() -> None:
    ids = [str(c) for c in CASES]
    assert len(ids) == len(set(ids))
