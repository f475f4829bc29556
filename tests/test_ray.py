"""certify on Ray, on a real Ray instance that this module starts on 127.0.0.1 with 2 CPUs: the same records as
the local process pool, none lost or doubled when a worker dies mid-task, an interrupted driver resumed; and
without the extra, one line that says how to install it.

The refinements here are real (branch and bound on small random MLPs, about 0.5-1 s per point): at eps 0.2
and delta 0.11 the attack and the screening bounds leave 7 of the 12 points to the refinement stage.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from faithverify.cli import main
from faithverify.errors import FaithverifyError
from faithverify.executors import RAY_INSTALL_HINT, import_ray
from tests.conftest import export_onnx, random_mlp

REPO = Path(__file__).resolve().parents[1]
POINTS = 12
RUN = ["--eps", "0.2", "--delta", "0.11", "--solver", "highs", "--timeout", "20", "--attack-steps", "5",
       "--restarts", "1", "--quiet", "--device", "cpu"]  # fmt: skip
# What may differ between two runs of the same points: how long each stage took.
TIMING = {"seconds"}
# The title Ray gives a worker process while it runs one of our tasks (executors._run_on_ray).
TASK_TITLE = b"ray::_run_on_ray"


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def records(path: Path) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "point"]


def by_point(path: Path) -> dict[tuple[int, float], dict[str, Any]]:
    """The file's records by (index, eps), each exactly once, without timing fields."""
    out: dict[tuple[int, float], dict[str, Any]] = {}
    for r in records(path):
        key = (r["index"], r["eps"])
        assert key not in out, f"record {key} written twice"
        out[key] = {k: v for k, v in r.items() if k not in TIMING}
    return out


def close(a: Any, b: Any) -> bool:
    """Equal, floats to a relative 1e-12 (the last bits), at any depth."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
    return bool(a == b)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ray-models")
    rng = np.random.default_rng(0)
    np.savez(d / "points.npz", x=rng.random((POINTS, 12), dtype=np.float32), y=rng.integers(0, 4, POINTS))
    return {
        "teacher": export_onnx(random_mlp(0, [12, 16, 16, 4]), torch.zeros(1, 12), d / "t.onnx"),
        "student": export_onnx(random_mlp(1, [12, 8, 4]), torch.zeros(1, 12), d / "s.onnx"),
        "data": d / "points.npz",
    }


def certify_args(models: dict[str, Path], out: Path) -> list[str | Path]:
    return ["certify", models["teacher"], models["student"], "--data", models["data"], *RUN, "--out", out]


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A Ray instance of this test's own on 127.0.0.1 (import_ray(local=True) keeps Ray off every other
    address), 2 CPUs, no dashboard; in-process `--ray local` runs join it, a subprocess joins by address."""
    try:
        ray = import_ray(local=True)
    except FaithverifyError:
        pytest.skip(f"ray is not installed ({RAY_INSTALL_HINT})")
    context = ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    address = context.address_info["gcs_address"]
    try:
        assert address.startswith("127.0.0.1:"), address
        yield address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def pool_run(
    models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[int, float], Any]:
    """The reference: the same run on the local process pool (--jobs 2)."""
    out = tmp_path_factory.mktemp("pool") / "r.jsonl"
    result = invoke(*certify_args(models, out), "--jobs", "2")
    assert result.exit_code == 0, result.output
    reference = by_point(out)
    assert len(reference) == POINTS
    refined = [r for r in reference.values() if r.get("milp")]
    assert len(refined) >= 4, "the workload must send points to the refinement stage"
    return reference


def test_without_the_extra_ray_is_one_line_and_exit_2(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The one simulated thing in this file: Ray absent (None in sys.modules makes `import ray` fail).
    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "r.jsonl"
    result = CliRunner().invoke(main, [str(a) for a in certify_args(models, out)] + ["--ray", "local"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "pip install 'faithverify[ray]'" in lines[0], result.output
    assert not out.exists()  # nothing written


def test_ray_is_not_imported_without_the_option(models: dict[str, Path], tmp_path: Path) -> None:
    # A run that refines points (the local path) in a fresh interpreter: Ray is never imported.
    code = (
        "import sys; from click.testing import CliRunner; from faithverify.cli import main; "
        f"r = CliRunner().invoke(main, {[*map(str, certify_args(models, tmp_path / 'r.jsonl')), '--n', '4']!r}); "
        "assert r.exit_code == 0, r.output; assert 'ray' not in sys.modules, 'ray was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
    assert any(r.get("milp") for r in records(tmp_path / "r.jsonl"))


@pytest.mark.slow
def test_ray_run_equals_the_local_pool_record_for_record(
    ray_address: str, models: dict[str, Path], pool_run: dict[tuple[int, float], Any], tmp_path: Path
) -> None:
    out = tmp_path / "r.jsonl"
    result = invoke(*certify_args(models, out), "--ray", "local", "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert by_point(out) == pool_run


def _ppid(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after its closing paren.
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _our_task_workers() -> list[int]:
    """Worker processes of this test's Ray instance that are running one of our tasks now: Ray titles a busy
    worker `ray::<function>`, and its parent is the raylet that ray.init started as a child of this process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cmdline").read_bytes().startswith(TASK_TITLE) and _ppid(_ppid(int(entry.name))) == (
                os.getpid()
            ):
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):  # the process ended while we looked
            continue
    return found


class WorkerKiller(threading.Thread):
    """Kills up to ``count`` Ray workers, each while it runs one of our tasks."""

    def __init__(self, count: int) -> None:
        super().__init__(daemon=True)
        self.count = count
        self.killed: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while len(self.killed) < self.count and not self.stop.wait(0.02):
            for pid in _our_task_workers()[: self.count - len(self.killed)]:
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)


@pytest.mark.slow
def test_a_worker_killed_mid_task_loses_and_doubles_no_record(
    ray_address: str, models: dict[str, Path], pool_run: dict[tuple[int, float], Any], tmp_path: Path
) -> None:
    out = tmp_path / "r.jsonl"
    killer = WorkerKiller(count=1)
    killer.start()
    try:
        result = invoke(*certify_args(models, out), "--ray", "local", "--jobs", "2")
    finally:
        killer.stop.set()
        killer.join()
    assert result.exit_code == 0, result.output
    assert len(killer.killed) == 1, "no worker was caught running a task"
    # Ray ran the killed workers' tasks again; the driver wrote each point once, with the same values.
    assert by_point(out) == pool_run


@pytest.mark.slow
def test_an_interrupted_driver_cancels_and_resume_completes(
    ray_address: str, models: dict[str, Path], pool_run: dict[tuple[int, float], Any], tmp_path: Path
) -> None:
    out = tmp_path / "r.jsonl"
    # The driver is a separate process joining this test's Ray instance by its address, as a user's would.
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    args = [str(a) for a in certify_args(models, out)]
    driver = subprocess.Popen(
        [sys.executable, "-m", "faithverify.cli", *args, "--ray", ray_address],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Ctrl-C as soon as a worker runs one of its refinements: tasks are in flight, some records written.
        deadline = time.monotonic() + 60
        while not _our_task_workers():
            assert driver.poll() is None, driver.communicate()
            assert time.monotonic() < deadline, "no refinement task started"
            time.sleep(0.02)
        driver.send_signal(signal.SIGINT)
        _, stderr = driver.communicate(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode != 0, stderr
    partial = by_point(out)  # each record at most once
    assert 0 < len(partial) < POINTS, stderr
    # The driver's outstanding tasks were cancelled: none of them is still running.
    deadline = time.monotonic() + 10
    while _our_task_workers():
        assert time.monotonic() < deadline, "tasks of the interrupted driver still run"
        time.sleep(0.1)

    result = invoke(*args, "--ray", "local", "--jobs", "2", "--resume")
    assert result.exit_code == 0, result.output
    # The resumed run screens the missing points in a smaller batch, and CROWN's batched matrix products round
    # differently in the last bits of a float (the local path's --resume does the same): equal to 1e-12.
    assert close(by_point(out), pool_run)


@pytest.mark.slow
def test_bench_on_ray_gives_the_answers_of_the_serial_run(
    ray_address: str, models: dict[str, Path], tmp_path: Path
) -> None:
    suite = tmp_path / "suite"
    result = invoke("export-vnn", models["teacher"], models["student"], "--data", models["data"], "--n", "4",
                    "--eps", "0.2", "--delta", "0.11", "--timeout", "20", "-o", suite)  # fmt: skip
    assert result.exit_code == 0, result.output

    def answers(out: Path) -> dict[str, tuple[str, str, str]]:
        rows = list(csv.DictReader(out.open()))
        assert len({r["index"] for r in rows}) == len(rows) == 4  # each instance once
        return {r["index"]: (r["result"], r["stage"], Path(r["result_file"]).read_text()) for r in rows}

    serial, on_ray = tmp_path / "serial.csv", tmp_path / "ray.csv"
    assert invoke("bench", suite / "instances.csv", "--out", serial, "--quiet").exit_code == 0
    result = invoke(
        "bench", suite / "instances.csv", "--out", on_ray, "--quiet", "--ray", "local", "--jobs", "2"
    )
    assert result.exit_code == 0, result.output
    assert answers(on_ray) == answers(serial)
