"""Runs stopped by Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or killed (SIGKILL) at
several moments of ``certify`` (screening, refinement with ``--jobs 2``), then resumed: no record lost,
duplicated or torn, and every value equal to an uninterrupted run's.

"Equal" is exact for what the attacks find (they draw per-point random streams, so a record does not depend on
which points share its batch) and to 1e-12 for the bounds (float64 sums over another batch shape may round
differently in the last bit). A refined point's bound depends on how far its search got in
its time budget, which no two runs share; for those, the verdicts must agree unless a search ran out of time
(then they may differ, certified against unknown, but never conflict).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import export_onnx, random_mlp
from tests.faults.harness import INTERRUPTED

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    d = tmp_path_factory.mktemp("interrupts")
    teacher = export_onnx(random_mlp(0, [12, 40, 40, 4]), torch.zeros(1, 12), d / "t.onnx")
    student = export_onnx(random_mlp(1, [12, 24, 4]), torch.zeros(1, 12), d / "s.onnx")
    rng = np.random.default_rng(0)
    np.savez(d / "p.npz", x=rng.random((12, 12), dtype=np.float32), y=rng.integers(0, 4, 12))
    # At eps 0.2 and delta 0.11, screening decides 11 of the 12 points and point 8 goes to refinement.
    return [
        "certify", str(teacher), str(student), "--data", str(d / "p.npz"), "--eps", "0.2", "--delta", "0.11",
        "--batch-size", "4", "--solver", "highs", "--timeout", "4", "--jobs", "2", "--quiet", "--device", "cpu",
        "--attack-steps", "10", "--restarts", "2",
    ]  # fmt: skip


def _start(args: list[str], out: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "faithverify.cli", *args, "--out", str(out), *extra]
    # A session of its own: the signal reaches the pool's workers too, as a terminal's Ctrl-C does.
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _records(path: Path) -> list[dict[str, object]]:
    lines = path.read_text().split("\n")
    assert lines[-1] == "", "the file ends in a torn line"
    parsed = [json.loads(line) for line in lines[:-1]]
    assert parsed[0]["kind"] == "header"
    return parsed[1:]


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


@pytest.fixture(scope="module")
def baseline(run_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, object]]:
    out = tmp_path_factory.mktemp("baseline") / "r.jsonl"
    proc = _start(run_args, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return {int(r["index"]): r for r in _records(out)}  # type: ignore[call-overload]


SCREENED = {"emp_lb", "emp_lb_class", "clean_gap", "teacher_pred", "student_pred", "teacher_robust",
            "student_robust", "agreement"}  # fmt: skip


def _same(record: dict[str, object], base: dict[str, object]) -> None:
    for key in SCREENED:
        assert record[key] == base[key], key
    refined = [r["milp"] for r in (record, base) if r.get("milp")]
    if any(m["timed_out"] for m in refined):  # type: ignore[index]
        # A search cut short by its budget decides what it reached in time: the two may differ, never conflict.
        assert {record["verdict"], base["verdict"]} != {"certified", "violated"}
    else:
        assert record["verdict"] == base["verdict"]
    if not refined:
        # float64 matrix products over another batch shape may round differently in the last bit.
        assert record["bounds"] == pytest.approx(base["bounds"], rel=1e-12, abs=1e-15)
        assert record["faith_ub"] == pytest.approx(base["faith_ub"], rel=1e-12, abs=1e-15)


# (signal, lines in the results file when it is sent: 1 = only the header, during the first batch's
# screening; 5 = after the first batch; 12 = every screened point written, the refinement under way)
MOMENTS = [
    (signal.SIGINT, 1),
    (signal.SIGINT, 5),
    (signal.SIGINT, 12),
    (signal.SIGKILL, 5),
    (signal.SIGKILL, 12),
]


@pytest.mark.parametrize(("sig", "lines"), MOMENTS, ids=lambda v: str(getattr(v, "name", v)))
def test_interrupt_then_resume_equals_an_uninterrupted_run(
    run_args: list[str],
    baseline: dict[int, dict[str, object]],
    tmp_path: Path,
    sig: signal.Signals,
    lines: int,
) -> None:
    out = tmp_path / "r.jsonl"
    proc = _start(run_args, out)
    deadline = time.monotonic() + 120
    while _lines(out) < lines and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if lines == 12:
        time.sleep(0.5)  # into the refinement
    sent = time.monotonic()
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    stopped_in = time.monotonic() - sent
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")  # a machine much faster than expected
    if sig is signal.SIGINT:
        assert proc.returncode == INTERRUPTED, err
        assert stopped_in < 10, f"took {stopped_in:.1f} s to stop"
        lines_err = [line for line in err.splitlines() if line.strip()]
        assert len(lines_err) == 1 and lines_err[0].startswith("interrupted:"), err
        assert "--resume" in err
    kept = _records(out) if out.exists() else []
    for record in kept:  # what an interrupted run wrote is already final
        _same(record, baseline[int(record["index"])])  # type: ignore[call-overload]
    resumed = _start(run_args, out, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    records = _records(out)
    indices = [int(r["index"]) for r in records]  # type: ignore[call-overload]
    assert sorted(indices) == sorted(baseline), "a record was lost or duplicated"
    for record in records:
        _same(record, baseline[int(record["index"])])  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def suite(run_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same pair and points as a VNN-COMP suite: 12 instances, most answered in a fraction of a second."""
    d = tmp_path_factory.mktemp("suite")
    teacher, student, data = run_args[1], run_args[2], run_args[4]
    cmd = [sys.executable, "-m", "faithverify.cli", "export-vnn", teacher, student, "--data", data, "--eps", "0.2",
           "--delta", "0.11", "--timeout", "3", "-o", str(d)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return d / "instances.csv"


def _rows(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
    return {r["vnnlib"]: r["result"] for r in rows}


def _bench(suite: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "faithverify.cli",
        "bench",
        str(suite),
        "--out",
        str(out),
        "--solver",
        "highs",
        *extra,
    ]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


@pytest.fixture(scope="module")
def bench_reference(suite: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("bench") / "ref.csv"
    reference = _bench(suite, out)
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err
    return _rows(out)


def _agree(got: dict[str, str], expected: dict[str, str]) -> None:
    """Decided answers agree; an instance that ran out of time may be undecided in one run only."""
    for key, answer in got.items():
        if "timeout" in (answer, expected[key]) or "unknown" in (answer, expected[key]):
            assert {answer, expected[key]} != {"sat", "unsat"}
        else:
            assert answer == expected[key], key


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_interrupted_bench_resumes_to_the_same_answers(
    suite: Path, bench_reference: dict[str, str], tmp_path: Path, sig: signal.Signals
) -> None:
    assert len(bench_reference) == 12
    out = tmp_path / "r.csv"
    proc = _bench(suite, out)
    deadline = time.monotonic() + 120
    while _lines(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the suite finished before the signal arrived")
    if sig is signal.SIGINT:
        assert proc.returncode == INTERRUPTED, err
        assert [line for line in err.splitlines() if line.startswith("interrupted:")], err
    _agree(_rows(out) if out.exists() else {}, bench_reference)  # nothing false was written
    resumed = _bench(suite, out, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert len(out.read_text().splitlines()) == 1 + 12, "a row was lost or duplicated"
    _agree(_rows(out), bench_reference)
