"""Run a VNN-COMP-style suite: ``instances.csv`` rows ``onnx,vnnlib,timeout`` (paths relative to the CSV,
``.gz`` accepted), one result file per instance in the competition's format, and a summary CSV.

The summary is written row by row as instances finish; ``resume`` skips the instances it already holds, so an
interrupted run continues where it stopped. An instance the engine cannot take (an unsupported operator, a
property that does not fit the network) is answered ``unknown`` with the reason, never a crash of the run.
"""

from __future__ import annotations

import csv
import gzip
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

from faithverify.bounds.milp import Solver
from faithverify.errors import DataError, FaithverifyError
from faithverify.vnn.engine import Answer, Outcome, verify
from faithverify.vnn.instance import format_result, query_from_instance
from faithverify.vnn.vnnlib import read_vnnlib, write_text_atomic

SUMMARY_FIELDS = ("index", "onnx", "vnnlib", "timeout", "result", "seconds", "stage", "reason", "result_file")


@dataclass(frozen=True)
class Instance:
    index: int
    onnx: Path
    vnnlib: Path
    timeout: float


def read_instances(csv_path: str | Path) -> list[Instance]:
    """The rows of ``instances.csv`` with paths resolved against its folder."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such file")
    base = csv_path.parent
    out: list[Instance] = []
    with open(csv_path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if len(row) != 3:
                raise DataError(
                    f"{csv_path}, line {number}: expected onnx,vnnlib,timeout, got {len(row)} fields"
                )
            try:
                timeout = float(row[2])
            except ValueError:
                raise DataError(f"{csv_path}, line {number}: timeout {row[2]!r} is not a number") from None
            if not timeout > 0:
                raise DataError(f"{csv_path}, line {number}: timeout must be positive, got {timeout:g}")
            out.append(Instance(len(out), base / row[0].strip(), base / row[1].strip(), timeout))
    if not out:
        raise DataError(f"{csv_path}: no instances")
    return out


def plain_onnx(path: Path, scratch: Path) -> Path:
    """An ``.onnx.gz`` unpacked into ``scratch`` (the ONNX reader needs a plain file)."""
    if path.suffix != ".gz":
        return path
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    target = scratch / path.with_suffix("").name
    with gzip.open(path, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


def run_instance(
    onnx_path: Path, vnnlib_path: Path, timeout: float, *, solver: Solver = Solver.AUTO, milp: bool = True
) -> Answer:
    """One instance; input errors become ``unknown`` with the reason."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            query = query_from_instance(plain_onnx(onnx_path, Path(scratch)), read_vnnlib(vnnlib_path))
        except FaithverifyError as exc:
            return Answer(Outcome.UNKNOWN, "none", 0.0, reason=str(exc))
        except (ValueError, onnx.checker.ValidationError) as exc:  # a graph onnx itself cannot cut or check
            return Answer(Outcome.UNKNOWN, "none", 0.0, reason=f"{onnx_path.name}: {exc}")
        return verify(query, timeout, solver=solver, milp=milp)


def _done(summary: Path) -> set[int]:
    if not summary.is_file():
        return set()
    with open(summary, newline="", encoding="utf-8") as handle:
        return {int(row["index"]) for row in csv.DictReader(handle) if row.get("index", "").isdigit()}


def run_suite(
    csv_path: str | Path,
    summary: str | Path,
    results_dir: str | Path,
    *,
    resume: bool = False,
    solver: Solver = Solver.AUTO,
    milp: bool = True,
    timeout_cap: float | None = None,
) -> Iterator[tuple[Instance, Answer | None]]:
    """Run every instance, yielding each with its answer (None: skipped, already in the summary)."""
    instances = read_instances(csv_path)
    summary, results_dir = Path(summary), Path(results_dir)
    done = _done(summary) if resume else set()
    fresh = not (resume and summary.is_file())
    summary.parent.mkdir(parents=True, exist_ok=True)
    with open(summary, "w" if fresh else "a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_FIELDS)
        if fresh:
            writer.writeheader()
        for inst in instances:
            if inst.index in done:
                yield inst, None
                continue
            timeout = inst.timeout if timeout_cap is None else min(inst.timeout, timeout_cap)
            answer = run_instance(inst.onnx, inst.vnnlib, timeout, solver=solver, milp=milp)
            name = f"{inst.index:04d}-{inst.onnx.name.split('.')[0]}-{inst.vnnlib.name.split('.')[0]}.txt"
            write_text_atomic(results_dir / name, format_result(answer))
            writer.writerow(
                {
                    "index": inst.index,
                    "onnx": str(inst.onnx),
                    "vnnlib": str(inst.vnnlib),
                    "timeout": f"{timeout:g}",
                    "result": answer.outcome.value,
                    "seconds": f"{answer.seconds:.3f}",
                    "stage": answer.stage,
                    "reason": answer.reason,
                    "result_file": str(results_dir / name),
                }
            )
            handle.flush()
            yield inst, answer
