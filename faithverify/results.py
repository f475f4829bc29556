"""Per-point result records, the JSON Lines file they stream to, and the per-eps summary (paper Table 2 form)."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import numpy as np

from faithverify.errors import ResultsFileError
from faithverify.methods import Stage
from faithverify.verdict import Verdict

# 2: the header holds every setting that decides a record's values (CertifyConfig.record_settings).
FORMAT_VERSION = 2


# FaithUB - EmpLB at most this and a point's worst gap delta* is known (the "exact" tolerance).
EXACT_GAP = 1e-3


@dataclass(frozen=True)
class Refinement:
    """What the refinement stage (branch and bound, the MILP, the coupled bound) did for one point."""

    faith_ub: float  # its sound bound (eq. 6 over the exact per-network bounds, or the coupled bound)
    solves: int  # exact solves run (one per logit-difference term that needed one)
    exact: bool  # eq6 is the paper's exact FaithUB: every term's bound is its optimum, not a relaxation's
    timed_out: bool  # the time budget ran out first (the bound stays sound, not tight)
    out_of_reach: bool  # given up: no sound bound could bring FaithUB below delta
    solver: str  # which MILP solver ran ("none" when branch and bound settled everything)
    refiners: str  # the exact methods used: bab, milp or bab+milp
    eq6: float  # eq. 6 over the refined per-network bounds
    coupled: float | None  # the coupled bound on the same bounds, after branch and bound on its terms (None:
    # not computed)
    won: str  # the smaller of the two: "eq6" or "coupled"
    searched: int = 0  # branch-and-bound searches on coupled terms (bounds/coupled_bab.py)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Refinement:
        names = {f.name for f in fields(Refinement)}
        if not isinstance(d, dict) or not names <= set(d):
            raise ValueError(f"field 'milp' is {d!r}, not a refinement record")
        return Refinement(**{k: d[k] for k in names})


@dataclass
class PointResult:
    """Everything faithverify found out about one point at one eps."""

    index: int  # position of the point in the dataset
    eps: float
    label: int | None  # the dataset's label, when it has one
    teacher_pred: int  # argmax of the teacher at x0 (onnxruntime)
    student_pred: int
    clean_gap: float  # ||f_t(x0) - f_s(x0)||_inf (onnxruntime)
    emp_lb: float  # EmpLB: the gap at the best witness found by PGD, re-computed with onnxruntime
    emp_lb_class: int  # the class where the witness's gap is attained
    faith_ub: float  # FaithUB: the smallest of the sound upper bounds below
    faith_ub_method: str
    bounds: dict[str, float]  # FaithUB per bounding method (ibp, crown, alpha-crown)
    teacher_robust: bool | None = None  # PGD-50 finds no misclassified input in B (needs a label)
    student_robust: bool | None = None
    agreement: bool | None = None  # Def. 3: empirical distillation agreement
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, amortised over the batch
    verdict: Verdict | None = None  # with --delta: certified | violated | unknown
    decided_by: Stage | None = None  # the stage that decided it (None for unknown)
    milp: Refinement | None = None  # the refinement stage, for the points it saw
    witness: list[float] | None = None  # for a violated point: the input (flat) whose gap exceeds delta

    @property
    def exact(self) -> bool:
        """delta* is known: the sound bound meets the gap of a witness re-checked by onnxruntime."""
        return self.faith_ub - self.emp_lb <= EXACT_GAP

    def to_json(self) -> str:
        return json.dumps({"kind": "point", **asdict(self), "exact": self.exact}, allow_nan=True)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> PointResult:
        """A record read back from a results file; a missing or mistyped field raises ``ValueError``."""
        names = {f.name for f in fields(PointResult)}
        values = {k: v for k, v in d.items() if k in names}
        # The typed fields: a value that no version wrote is a malformed record (ValueError).
        if values.get("verdict") is not None:
            values["verdict"] = Verdict(values["verdict"])
        if values.get("decided_by") is not None:
            values["decided_by"] = Stage(values["decided_by"])
        if values.get("milp") is not None:
            values["milp"] = Refinement.from_dict(values["milp"])
        point = PointResult(**values)
        point._check_types()
        return point

    def _check_types(self) -> None:
        numbers = {
            "eps": self.eps,
            "clean_gap": self.clean_gap,
            "emp_lb": self.emp_lb,
            "faith_ub": self.faith_ub,
        }
        integers = {"index": self.index, "teacher_pred": self.teacher_pred, "student_pred": self.student_pred}
        for name, value in {**numbers, **integers}.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"field {name!r} is {value!r}, not a number")
        for name, value in integers.items():
            if not isinstance(value, int):
                raise ValueError(f"field {name!r} is {value!r}, not an integer")
        if not isinstance(self.bounds, dict) or not all(
            isinstance(v, int | float) for v in self.bounds.values()
        ):
            raise ValueError(f"field 'bounds' is {self.bounds!r}, not a mapping of numbers")


class ResultsFile:
    """A JSON Lines file: one header line with the run's settings, then one line per finished point.

    Lines are written whole and flushed as each batch finishes, so an interrupted run loses at most the batch
    in flight; ``resume`` keeps what is there (dropping a torn last line) when the settings match.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any], resume: bool) -> None:
        self.path = Path(path)
        self.settings = settings
        self.done: dict[tuple[int, float], PointResult] = {}
        if self.path.is_dir():
            raise ResultsFileError(f"cannot write results to {self.path}: it is a directory")
        if resume and self.path.exists() and self.path.stat().st_size > 0:
            self._load_existing()
            self._handle = self._open("a")
        else:
            self._handle = self._open("w")
            self._write_line(json.dumps({"kind": "header", "format": FORMAT_VERSION, "settings": settings}))

    def _open(self, mode: str) -> IO[str]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return open(self.path, mode, encoding="utf-8")
        except OSError as exc:
            raise ResultsFileError(f"cannot write results to {self.path}: {exc.strerror or exc}") from exc

    def _load_existing(self) -> None:
        raw = self.path.read_bytes()
        good_end = raw.rfind(b"\n") + 1
        lines = raw[:good_end].decode("utf-8", errors="replace").splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("kind") != "header":
            raise ResultsFileError(f"--resume: {self.path} is not a faithverify results file")
        if header.get("format") != FORMAT_VERSION:
            raise ResultsFileError(
                f"--resume: {self.path} was written by another faithverify version (format "
                f"{header.get('format')}, this one writes {FORMAT_VERSION}); use another --out or drop --resume"
            )
        old = header.get("settings", {})
        changed = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
        if changed:
            shown = "; ".join(f"{k}: {old.get(k)!r} there, {self.settings.get(k)!r} now" for k in changed[:4])
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            raise ResultsFileError(
                f"--resume: {self.path} was written with other settings ({shown}{more}); "
                "use another --out or drop --resume to overwrite"
            )
        for number, line in enumerate(lines[1:], start=2):
            point = _parse_record(self.path, number, line)
            if point is not None:
                self.done[(point.index, point.eps)] = point
        if good_end < len(raw):  # a torn last line from an interrupted run: drop it
            with open(self.path, "r+b") as handle:
                handle.truncate(good_end)

    def _write_line(self, line: str) -> None:
        self._handle.write(line + "\n")

    def write(self, points: Iterable[PointResult]) -> None:
        for p in points:
            self._write_line(p.to_json())
            self.done[(p.index, p.eps)] = p
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def _parse_record(path: Path, number: int, line: str) -> PointResult | None:
    """The point on line ``number`` of a results file (None for a blank or non-point line); anything else there
    is a :class:`ResultsFileError` naming the line."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        raise ResultsFileError(f"{path}, line {number}: not a JSON record") from None
    if not isinstance(record, dict):
        raise ResultsFileError(f"{path}, line {number}: not a faithverify record")
    if record.get("kind") != "point":
        return None
    try:
        return PointResult.from_dict(record)
    except (TypeError, ValueError) as exc:
        raise ResultsFileError(f"{path}, line {number}: malformed point record ({exc})") from None


def read_results(path: str | Path) -> tuple[dict[str, Any], list[PointResult]]:
    """The settings and the point records of a results file (a torn last line, from an interrupted run, is
    dropped); a corrupt line is a :class:`ResultsFileError` naming it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ResultsFileError(f"cannot read results file {path}: {exc.strerror or exc}") from exc
    text = raw.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1].strip():  # no newline at the end: a torn last line, unless it parses
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines = lines[:-1]
    settings: dict[str, Any] = {}
    points = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ResultsFileError(f"{path}, line {number}: not a JSON record") from None
        if isinstance(record, dict) and record.get("kind") == "header":
            settings = record.get("settings", {}) if isinstance(record.get("settings"), dict) else {}
            continue
        point = _parse_record(path, number, line)
        if point is not None:
            points.append(point)
    return settings, points


@dataclass(frozen=True)
class MeanStd:
    mean: float
    std: float
    count: int = 0  # how many values the mean is over

    @staticmethod
    def of(values: Sequence[float]) -> MeanStd:
        a = np.asarray(values, dtype=np.float64)
        if a.size == 0:
            return MeanStd(math.nan, math.nan)
        return MeanStd(float(a.mean()), float(a.std()), int(a.size))

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f}"


def _share(values: Sequence[bool | None]) -> float:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else math.nan


@dataclass(frozen=True)
class EpsSummary:
    """One row of the summary: the paper's Table 2 (EmpLB, FaithUB) with agreement and robust accuracy."""

    eps: float
    n: int
    emp_lb: MeanStd
    faith_ub: MeanStd
    by_method: dict[str, MeanStd]
    agreement: float  # share of points (Def. 3)
    teacher_robust_accuracy: float
    student_robust_accuracy: float
    teacher_accuracy: float  # clean
    student_accuracy: float
    seconds_per_point: dict[str, float]
    verdicts: dict[str, int] = field(default_factory=dict)  # with --delta: certified / violated / unknown
    decided_by: dict[str, int] = field(default_factory=dict)  # which stage decided the points

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d


def summarize(points: Sequence[PointResult]) -> list[EpsSummary]:
    rows = []
    for eps in sorted({p.eps for p in points}):
        group = [p for p in points if p.eps == eps]
        methods = sorted({m for p in group for m in p.bounds})
        stages = sorted({s for p in group for s in p.seconds})
        labelled = [p for p in group if p.label is not None]
        rows.append(
            EpsSummary(
                eps=eps,
                n=len(group),
                emp_lb=MeanStd.of([p.emp_lb for p in group]),
                faith_ub=MeanStd.of([p.faith_ub for p in group]),
                by_method={m: MeanStd.of([p.bounds[m] for p in group if m in p.bounds]) for m in methods},
                agreement=_share([p.agreement for p in group]),
                teacher_robust_accuracy=_share([p.teacher_robust for p in group]),
                student_robust_accuracy=_share([p.student_robust for p in group]),
                teacher_accuracy=_share([p.teacher_pred == p.label for p in labelled]),
                student_accuracy=_share([p.student_pred == p.label for p in labelled]),
                seconds_per_point={s: float(np.mean([p.seconds.get(s, 0.0) for p in group])) for s in stages},
                verdicts=_count(p.verdict for p in group),
                decided_by=_count(p.decided_by for p in group),
            )
        )
    return rows


def _count(values: Iterable[str | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    return counts


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


_METHOD_ORDER = {"ibp": 0, "crown": 1, "alpha-crown": 2, "bab": 3, "milp": 4, "bab+milp": 5}


def _methods(rows: Sequence[EpsSummary]) -> list[str]:
    """Bounding methods present, loosest first."""
    return sorted({m for r in rows for m in r.by_method}, key=lambda m: (_METHOD_ORDER.get(m, 9), m))


def format_table(rows: Sequence[EpsSummary]) -> str:
    """A Markdown table: one row per eps, the paper's Table 2 columns first."""
    methods = _methods(rows)
    head = ["eps", "n", "EmpLB", "FaithUB", *[f"UB {m}" for m in methods]]
    head += ["agreement", "robust T", "robust S", "clean T", "clean S", "ms/point"]
    with_verdicts = any(r.verdicts for r in rows)
    if with_verdicts:
        head += ["certified / violated / unknown", "decided by"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r.eps:g}", str(r.n), str(r.emp_lb), str(r.faith_ub)]
        # A method that ran on some points only (the refinement) says over how many its mean is.
        cells += [
            "-" if m not in r.by_method
            else str(r.by_method[m]) + ("" if r.by_method[m].count == r.n else f" ({r.by_method[m].count} of {r.n})")
            for m in methods
        ]  # fmt: skip
        cells += [_pct(r.agreement), _pct(r.teacher_robust_accuracy), _pct(r.student_robust_accuracy)]
        cells += [_pct(r.teacher_accuracy), _pct(r.student_accuracy)]
        cells.append(f"{1000 * sum(r.seconds_per_point.values()):.1f}")
        if with_verdicts:
            v = r.verdicts
            cells.append(f"{v.get('certified', 0)} / {v.get('violated', 0)} / {v.get('unknown', 0)}")
            cells.append(
                ", ".join(f"{k} {n}" for k, n in sorted(r.decided_by.items(), key=lambda kv: -kv[1]))
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary_csv(rows: Sequence[EpsSummary], path: str | Path) -> None:
    try:
        _write_summary_csv(rows, path)
    except OSError as exc:
        raise ResultsFileError(f"cannot write the summary to {path}: {exc.strerror or exc}") from exc


def _write_summary_csv(rows: Sequence[EpsSummary], path: str | Path) -> None:
    methods = _methods(rows)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["eps", "n", "emp_lb_mean", "emp_lb_std", "faith_ub_mean", "faith_ub_std"]
            + [f"ub_{m}_{s}" for m in methods for s in ("mean", "std")]
            + ["agreement", "teacher_robust_accuracy", "student_robust_accuracy"]
            + ["teacher_accuracy", "student_accuracy", "seconds_per_point"]
        )
        for r in rows:
            writer.writerow(
                [r.eps, r.n, r.emp_lb.mean, r.emp_lb.std, r.faith_ub.mean, r.faith_ub.std]
                + [v for m in methods for v in (r.by_method[m].mean, r.by_method[m].std)]
                + [r.agreement, r.teacher_robust_accuracy, r.student_robust_accuracy]
                + [r.teacher_accuracy, r.student_accuracy, sum(r.seconds_per_point.values())]
            )
