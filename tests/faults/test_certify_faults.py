"""Bad input to ``certify``: exit 2, one line naming the problem, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.conftest import FAST
from tests.faults.harness import Fault, Workspace, check

CERTIFY = ["certify", "{teacher}", "{student}", "--data", "{data}"]


def _file(name: str, content: bytes) -> object:
    def make(tmp: Path, _ws: Workspace) -> dict[str, Path]:
        path = tmp / name
        path.write_bytes(content)
        return {"bad": path}

    return make


CASES = [
    Fault("eps-negative", [*CERTIFY, "--eps", "-0.1"], ["eps"]),
    Fault("eps-nan", [*CERTIFY, "--eps", "nan"], ["eps"]),
    Fault("teacher-missing", ["certify", "{tmp}/none.onnx", "{student}", "--eps", "0.1"], ["none.onnx"]),
    Fault(
        "teacher-empty",
        ["certify", "{bad}", "{student}", "--data", "{data}", "--eps", "0.1", *FAST],
        ["empty.onnx"],
        make=_file("empty.onnx", b""),  # type: ignore[arg-type]
    ),
]


@pytest.mark.parametrize("fault", CASES, ids=str)
def test_certify_fault(fault: Fault, workspace: Workspace, tmp_path: Path) -> None:
    check(fault, workspace, tmp_path)
