"""Start-up: commands that need no model start without loading torch, and Ctrl-C while a command is still
loading is one line and exit 130, not a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.harness import INTERRUPTED, Workspace

PROBE = """
import sys
from faithverify import entry
program = getattr(entry, sys.argv[1])
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    program()
except SystemExit:
    pass
print("TORCH LOADED" if "torch" in sys.modules else "NO TORCH", file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["faithverify", "--help"],
        ["faithverify", "certify", "--help"],
        ["faithverify", "bench", "--help"],
        ["faithverify", "recipes"],
        ["faithverify", "summary", "{results}"],
        ["faithverify_vnnlib", "--help"],
        ["faithverify_vnnlib", "--name"],
        ["faithverify_vnnlib", "supports", "--vnnlib-versions"],
    ],
    ids=lambda a: " ".join(a),
)
def test_light_commands_do_not_load_torch(argv: list[str], workspace: Workspace) -> None:
    args = [a.format(results=workspace.paths["results"]) for a in argv]
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    assert "NO TORCH" in done.stderr, done.stderr


@pytest.mark.parametrize("after", [0.3, 1.0])
def test_ctrl_c_while_loading_is_one_line(after: float, workspace: Workspace, tmp_path: Path) -> None:
    p = workspace.paths
    cmd = [sys.executable, "-c", "from faithverify.entry import faithverify; faithverify()", "certify",
           str(p["teacher"]), str(p["student"]), "--data", str(p["data"]), "--eps", "0.1", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("finished before the signal")
    assert proc.returncode == INTERRUPTED, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == ["interrupted: stopped by Ctrl-C"] or (
        len(err.strip().splitlines()) == 1 and err.startswith("interrupted:")
    ), err
