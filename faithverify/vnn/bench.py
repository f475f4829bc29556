"""Run a VNN-COMP-style suite: ``instances.csv`` rows ``onnx,vnnlib,timeout`` (paths relative to the CSV; the
list and every file in it may be ``.gz``), one result file per instance in the competition's format, and a
summary CSV.

The summary is written row by row as instances finish; ``resume`` skips the instances it already holds (matched
on the resolved ONNX and VNN-LIB paths and the timeout used), so an interrupted run continues where it stopped.
One instance never stops a suite: one the engine cannot take (an unsupported operator, a property that does not
fit the network) is answered ``unknown`` with the reason, and one that fails otherwise (a missing or unreadable
file, an internal error) gets an ``error`` row with the reason, and the run goes on.

Time: an instance's timeout covers all of it, loading and checking the network included (the competition
counts the whole run); the engine gets what is left.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import shutil
import tempfile
import time
import zlib
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import onnx

from faithverify.bounds.milp import Solver
from faithverify.errors import (
    DataError,
    FaithverifyError,
    ResultsFileError,
    SoundnessViolation,
    UnsupportedOperatorError,
)
from faithverify.executors import ExecutorSpec, open_executor
from faithverify.paths import check_writable, check_writable_dir, exists
from faithverify.vnn.engine import Answer, Outcome, ProblemError, verify
from faithverify.vnn.instance import format_result, query_from_instance
from faithverify.vnn.vnnlib import read_vnnlib, write_text_atomic

log = logging.getLogger(__name__)

SUMMARY_FIELDS = ("index", "onnx", "vnnlib", "timeout", "result", "seconds", "stage", "reason", "result_file")
_HEADER = ",".join(SUMMARY_FIELDS)
# Result files are named after the instance's files, each part cut to this many characters (long names of
# generated suites would otherwise pass the file system's limit of 255 bytes).
_NAME_PART = 80


@dataclass(frozen=True)
class Instance:
    index: int
    onnx: Path
    vnnlib: Path
    timeout: float

    def key(self, timeout: float) -> tuple[str, str, str]:
        """What identifies a finished instance in a summary: both files, resolved, and the timeout used."""
        return (str(self.onnx.resolve()), str(self.vnnlib.resolve()), f"{timeout:g}")


def _read_text(path: Path) -> str:
    """The text of ``path``, gunzipped when its name ends in ``.gz``; a DataError when it cannot be read."""
    gz = path.name.endswith(".gz")
    try:
        data = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
        return data.decode("utf-8-sig")
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        kind = "a gzip-compressed CSV file" if gz else "a readable file"
        raise DataError(f"{path}: not {kind} ({exc})") from None
    except UnicodeDecodeError:
        hint = "" if gz else " (a compressed file must end in .gz)"
        raise DataError(f"{path}: not a UTF-8 text file{hint}") from None


def read_instances(csv_path: str | Path) -> list[Instance]:
    """The rows of ``instances.csv`` (or ``.csv.gz``) with paths resolved against its folder."""
    csv_path = Path(csv_path)
    if csv_path.is_dir():
        raise DataError(f"{csv_path}: a folder, not an instances CSV file")
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such file")
    text = _read_text(csv_path)
    base = csv_path.parent
    out: list[Instance] = []
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:  # whatever the csv module itself refuses
        raise DataError(f"{csv_path}: not a CSV file ({exc})") from None
    for number, row in enumerate(rows, start=1):
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        where = f"{csv_path}, line {number}"
        if len(row) != 3:
            raise DataError(f"{where}: expected onnx,vnnlib,timeout, got {len(row)} fields")
        onnx_name, vnnlib_name = row[0].strip(), row[1].strip()
        if not onnx_name or not vnnlib_name:
            raise DataError(f"{where}: an empty file name")
        if "\0" in onnx_name + vnnlib_name:
            raise DataError(f"{where}: a file name with a NUL byte")
        try:
            timeout = float(row[2])
        except ValueError:
            if number == 1 and row[2].strip().lower() == "timeout":
                continue  # a header line (not VNN-COMP's format, but common)
            raise DataError(f"{where}: timeout {row[2]!r} is not a number") from None
        if not timeout > 0 or timeout == float("inf"):
            raise DataError(f"{where}: timeout must be positive and finite, got {row[2].strip()!r}")
        out.append(Instance(len(out), base / onnx_name, base / vnnlib_name, timeout))
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
    try:
        with gzip.open(path, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a gzip-compressed file ({exc})") from None
    return target


def run_instance(
    onnx_path: Path, vnnlib_path: Path, timeout: float, *, solver: Solver = Solver.AUTO, milp: bool = True
) -> Answer:
    """One instance within ``timeout`` seconds, loading included. What the engine cannot take is ``unknown``
    with the reason; any other failure of this instance is ``error`` with the reason (never an exception:
    a suite goes on). A soundness violation is a bug and is raised."""
    started = time.monotonic()

    def failed(outcome: Outcome, reason: str) -> Answer:
        return Answer(outcome, "none", time.monotonic() - started, reason=reason)

    try:
        with tempfile.TemporaryDirectory() as scratch:
            try:
                query = query_from_instance(plain_onnx(onnx_path, Path(scratch)), read_vnnlib(vnnlib_path))
            except (UnsupportedOperatorError, ProblemError) as exc:
                return failed(Outcome.UNKNOWN, str(exc))
            except FaithverifyError as exc:
                return failed(Outcome.ERROR, str(exc))
            except (ValueError, onnx.checker.ValidationError) as exc:  # a graph onnx cannot cut or check
                return failed(Outcome.ERROR, f"{onnx_path.name}: {exc}")
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                return failed(Outcome.TIMEOUT, "out of time while loading the instance")
            answer = verify(query, left, solver=solver, milp=milp)
            answer.seconds = time.monotonic() - started
            return answer
    except (SoundnessViolation, KeyboardInterrupt):
        raise
    except FaithverifyError as exc:  # a solver that is missing or failed on this model
        return failed(Outcome.ERROR, str(exc))
    except OSError as exc:  # a file that cannot be opened (a name too long, no permission)
        return failed(Outcome.ERROR, f"cannot read {exc.filename or onnx_path}: {exc.strerror or exc}")
    except Exception as exc:  # an internal error on this instance only: recorded, and the suite goes on
        log.debug("instance %s %s failed", onnx_path, vnnlib_path, exc_info=True)
        return failed(Outcome.ERROR, f"internal error: {type(exc).__name__}: {exc}".splitlines()[0])


def _instance_task(settings: tuple[Solver, bool], task: tuple[Path, Path, float]) -> Answer:
    """One instance as an executor task: ``settings`` (solver, MILP or not) is the run's shared value."""
    solver, milp = settings
    onnx_path, vnnlib_path, timeout = task
    return run_instance(onnx_path, vnnlib_path, timeout, solver=solver, milp=milp)


def default_results_dir(summary: Path) -> Path:
    """Beside the summary, named after it without its extension (``results.csv`` -> ``results/``)."""
    if summary.suffix and summary.stem:
        return summary.with_name(summary.stem)
    return summary.with_name(summary.name + "-files")


def _stem(path: Path) -> str:
    """A file's name without ``.gz`` and its last extension only (``pair_00001_eps_0.05.vnnlib`` keeps its
    eps), cut to a length every file system takes: its start and end kept, where generated names put their
    point and eps."""
    name = path.name.removesuffix(".gz")
    stem = Path(name).stem if Path(name).suffix else name
    if len(stem) <= _NAME_PART:
        return stem
    half = _NAME_PART // 2
    return f"{stem[:half]}~{stem[-(half - 1) :]}"


def result_name(inst: Instance) -> str:
    return f"{inst.index:04d}-{_stem(inst.onnx)}-{_stem(inst.vnnlib)}.txt"


@dataclass
class _Previous:
    """What an existing summary holds, for ``resume``."""

    done: set[tuple[str, str, str]]
    keep_bytes: int | None = None  # the file's length without a last row cut short by an interruption


def _read_summary(summary: Path, keys: set[tuple[str, str, str]], csv_path: Path) -> _Previous:
    """The finished instances of an existing summary; a ResultsFileError when the file is not a bench summary or
    holds instances that are not in this suite (with these timeouts)."""
    try:
        raw = summary.read_bytes()
    except OSError as exc:
        raise ResultsFileError(f"--resume: cannot read {summary} ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ResultsFileError(f"--resume: {summary} is not a bench summary (not a text file)") from None
    if not text.strip():
        return _Previous(set())
    keep_bytes = None
    if not text.endswith("\n"):
        # The last row of an interrupted run, cut short: dropped, and its instance runs again.
        text = text[: text.rfind("\n") + 1]
        keep_bytes = len(text.encode("utf-8"))
    lines = text.splitlines() or [""]
    if lines[0].strip() != _HEADER:
        raise ResultsFileError(
            f"--resume: {summary} is not a bench summary (its first line is {lines[0][:50]!r}, not the header "
            f"{SUMMARY_FIELDS[0]},{SUMMARY_FIELDS[1]},...); use another --out"
        )
    done: set[tuple[str, str, str]] = set()
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise ResultsFileError(f"--resume: {summary} is not a readable CSV file ({exc})") from None
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(SUMMARY_FIELDS):
            raise ResultsFileError(
                f"--resume: {summary}, line {number}: {len(row)} fields, a bench summary has "
                f"{len(SUMMARY_FIELDS)}"
            )
        record = dict(zip(SUMMARY_FIELDS, row, strict=True))
        key = (record["onnx"], record["vnnlib"], record["timeout"])
        if key not in keys:
            raise ResultsFileError(
                f"--resume: {summary}, line {number} is an instance that {csv_path} does not have with this "
                f"timeout ({Path(key[0]).name}, {Path(key[1]).name}, {key[2]} s): another suite or "
                "--timeout-cap; use another --out"
            )
        done.add(key)
    return _Previous(done, keep_bytes)


def run_suite(
    csv_path: str | Path,
    summary: str | Path,
    results_dir: str | Path,
    *,
    resume: bool = False,
    solver: Solver = Solver.AUTO,
    milp: bool = True,
    timeout_cap: float | None = None,
    executor: ExecutorSpec | None = None,
) -> Iterator[tuple[Instance, Answer | None]]:
    """Run every instance, yielding each with its answer (None: skipped, already in the summary), in the order
    they finish: one by one here, or as tasks of a local pool or Ray (``executor``).

    Every input and output is checked before the first instance runs (a ResultsFileError or DataError, with
    nothing written); after that, one instance's failure is its own row and the suite goes on."""
    csv_path = Path(csv_path)
    instances = read_instances(csv_path)
    summary, results_dir = Path(summary), Path(results_dir)
    if exists(summary) and summary.resolve() == csv_path.resolve():
        raise ResultsFileError(f"--out {summary} is the instances file itself")
    check_writable(summary, "--out")
    check_writable_dir(results_dir, "--results-dir")
    if results_dir.resolve() == summary.resolve():
        raise ResultsFileError(f"--results-dir {results_dir} and --out {summary} are the same path")

    def used_timeout(inst: Instance) -> float:
        return inst.timeout if timeout_cap is None else min(inst.timeout, timeout_cap)

    keys = {inst.key(used_timeout(inst)) for inst in instances}
    previous = _Previous(set())
    if resume and summary.is_file():
        previous = _read_summary(summary, keys, csv_path)
    fresh = not (resume and summary.is_file() and summary.stat().st_size > 0)
    try:
        summary.parent.mkdir(parents=True, exist_ok=True)
        results_dir.mkdir(parents=True, exist_ok=True)
        handle: TextIO = open(summary, "w" if fresh else "a", newline="", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise ResultsFileError(f"cannot write {summary}: {exc.strerror or exc}") from None
    with handle:
        writer = csv.writer(handle, lineterminator="\n")
        if fresh:
            writer.writerow(SUMMARY_FIELDS)
        elif previous.keep_bytes is not None:
            handle.truncate(previous.keep_bytes)
        handle.flush()
        todo: dict[Hashable, tuple[Instance, tuple[str, str, str]]] = {}
        for inst in instances:
            key = inst.key(used_timeout(inst))
            if key in previous.done:
                yield inst, None
            else:
                todo[inst.index] = (inst, key)
        if not todo:
            return
        # Each instance is a task (faithverify.executors): run here in order by default, or by the workers of a
        # local pool or a Ray cluster (which read the suite's files at the same paths). The driver alone writes
        # the result files and the summary, as the answers come back.
        with open_executor(_instance_task, (solver, milp), executor or ExecutorSpec()) as runner:
            for index, (inst, _) in todo.items():
                runner.submit(index, (inst.onnx, inst.vnnlib, used_timeout(inst)))
            for index, answer in runner.results(wait=True):
                inst, key = todo[index]
                result_file = results_dir / result_name(inst)
                try:
                    write_text_atomic(result_file, format_result(answer))
                    writer.writerow(
                        [
                            inst.index,
                            key[0],
                            key[1],
                            key[2],
                            answer.outcome.value,
                            f"{answer.seconds:.3f}",
                            answer.stage,
                            " ".join(answer.reason.split()),  # one line per row, whatever the reason says
                            str(result_file),
                        ]
                    )
                    handle.flush()
                # The disk filled, the folder went away: no later instance can be written.
                except OSError as exc:
                    raise ResultsFileError(
                        f"cannot write {result_file} or {summary}: {exc.strerror or exc}"
                    ) from None
                yield inst, answer
