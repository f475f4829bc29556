"""Reports from results files (``certify --out``): the summary tables as Markdown and CSV, and PNG plots of the
bounds per eps (histograms in the form of the paper's Figures 3-4, EmpLB against FaithUB per point, verdicts).

Several results files (one per student, say) are labelled by their file stem and drawn side by side in the same
panels, so that they can be compared at a glance. Plotting uses matplotlib's object API with the Agg canvas:
no pyplot, no global state, no display needed.
"""

from __future__ import annotations

import csv
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from faithverify.errors import ResultsFileError
from faithverify.results import PointResult, format_table, read_results, summarize, write_summary_csv

BINS = 20  # histogram bins over [0, 1]
MAX_COLUMNS = 4  # panels per row; more eps wrap onto further rows
TIGHT = 0.01  # FaithUB - EmpLB at most this: the point's worst case is known to within it
DPI = 100

# Verdict bars, stacked in this order: (verdict, decided_by) -> colour. Greens certify, reds violate.
_VERDICT_COLOURS: dict[tuple[str, str | None], str] = {
    ("certified", "ibp"): "#c7e9c0",
    ("certified", "crown"): "#74c476",
    ("certified", "alpha-crown"): "#41ab5d",
    ("certified", "coupled"): "#2c9f8f",
    ("certified", "bab"): "#238b45",
    ("certified", "milp"): "#006d2c",
    ("certified", "bab+milp"): "#00441b",
    ("violated", "attack"): "#fb6a4a",
    ("violated", "bab"): "#cb181d",
    ("violated", "milp"): "#a50f15",
    ("violated", "bab+milp"): "#67000d",
    ("unknown", None): "#bdbdbd",
}


@dataclass(frozen=True)
class Series:
    """The point records of one results file, under the label its panels show."""

    label: str
    path: Path
    points: list[PointResult]
    delta: float | None = None  # the run's --delta, from the file's header

    @property
    def eps_values(self) -> list[float]:
        return sorted({p.eps for p in self.points})

    def at(self, eps: float) -> list[PointResult]:
        return [p for p in self.points if p.eps == eps]

    @property
    def has_verdicts(self) -> bool:
        return any(p.verdict is not None for p in self.points)


@dataclass(frozen=True)
class ReportFigure:
    """One image of the report: its file name inside the report folder and what it shows."""

    name: str
    title: str
    explanation: str


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote."""

    directory: Path
    summary_md: Path
    summary_csv: Path
    index: Path
    figures: list[ReportFigure]


def load_series(paths: Sequence[str | Path]) -> list[Series]:
    """Read every results file, labelled by file stem (made unique with the parent folder or a number).

    All files are read before anything is written, so a bad one stops the report with one clear error.
    """
    loaded = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            raise ResultsFileError(f"{path} is a directory, not a results file")
        settings, points = read_results(path)  # a bad line is a ResultsFileError naming it
        if not points:
            raise ResultsFileError(f"{path} holds no point records: is it a results file of `certify --out`?")
        delta = settings.get("delta")
        loaded.append((path, points, float(delta) if isinstance(delta, int | float) else None))
    labels = _unique_labels([p for p, _, _ in loaded])
    return [
        Series(label, path, points, delta)
        for label, (path, points, delta) in zip(labels, loaded, strict=True)
    ]


def _unique_labels(paths: Sequence[Path]) -> list[str]:
    labels = [p.stem for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({k + 1})" for k, label in enumerate(labels)]
    return labels


def all_eps(series: Sequence[Series]) -> list[float]:
    return sorted({e for s in series for e in s.eps_values})


# --- summary ---------------------------------------------------------------------------------------------------


def summary_markdown(series: Sequence[Series]) -> str:
    """One section per file: the summary table of :func:`faithverify.results.format_table`."""
    parts = ["# Summary", ""]
    for s in series:
        parts += [f"## {s.label}", "", f"`{s.path}`, {len(s.points)} point records", ""]
        parts += [format_table(summarize(s.points)), ""]
    return "\n".join(parts)


def write_summary_csv_all(series: Sequence[Series], path: Path) -> None:
    """Every file's summary CSV (:func:`faithverify.results.write_summary_csv`) in one table, with a first
    column naming the file; columns that only some files have (a bound method) are left empty elsewhere."""
    rows: list[dict[str, str]] = []
    columns = ["results"]
    with tempfile.TemporaryDirectory() as tmp:
        for k, s in enumerate(series):
            part = Path(tmp) / f"{k}.csv"
            write_summary_csv(summarize(s.points), part)
            with open(part, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                previous = "results"
                for name in reader.fieldnames or []:
                    # A column new to the table goes right after its predecessor in this file (ub_milp_* beside
                    # the other ub_* columns, not at the end).
                    if name not in columns:
                        columns.insert(columns.index(previous) + 1, name)
                    previous = name
                rows += [{"results": s.label, **row} for row in reader]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


# --- figures ---------------------------------------------------------------------------------------------------


def _eps_panels(
    n_eps: int, groups: int = 1, width: float = 3.4, height: float = 2.8
) -> tuple[Figure, list[list[Axes]]]:
    """One panel per eps, at most ``MAX_COLUMNS`` to a row, for each of ``groups`` (each starts a new row).

    ``panels[g][k]`` is group g's panel for the k-th eps; the unused cells of a short last row are hidden.
    """
    cols = min(n_eps, MAX_COLUMNS)
    rows_per_group = math.ceil(n_eps / cols)
    fig = Figure(figsize=(width * cols, height * rows_per_group * groups), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows_per_group * groups, cols, squeeze=False)
    panels = []
    for g in range(groups):
        block = list(axes[g * rows_per_group : (g + 1) * rows_per_group].reshape(-1))
        for ax in block[n_eps:]:
            ax.set_visible(False)
        panels.append(block[:n_eps])
    return fig, panels


def _finite(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    return np.clip(a[np.isfinite(a)], 0.0, 1.0)


def _histogram_panel(ax: Axes, data: Sequence[tuple[str, np.ndarray]], colours: Sequence[str]) -> None:
    """Bars of several data sets side by side in each bin of [0, 1]."""
    ax.hist(
        [values for _, values in data],
        bins=BINS,
        range=(0.0, 1.0),
        label=[label for label, _ in data],
        color=list(colours),
    )
    ax.set_xlim(0.0, 1.0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("bound on the largest gap in the ball")
    ax.set_ylabel("number of points")
    ax.legend(fontsize="small")


def _colours(n: int) -> list[str]:
    return [f"C{k % 10}" for k in range(n)]


def plot_histograms(series: Sequence[Series], path: Path) -> None:
    """Histograms of EmpLB and FaithUB per eps (the paper's Figures 3-4).

    One file: one panel per eps, EmpLB and FaithUB side by side in each bin. Several files: a row for EmpLB
    and a row for FaithUB, the files side by side in each panel.
    """
    eps_list = all_eps(series)
    bounds = (("EmpLB", "emp_lb"), ("FaithUB", "faith_ub"))
    if len(series) == 1:
        fig, panels = _eps_panels(len(eps_list))
        for ax, eps in zip(panels[0], eps_list, strict=True):
            group = series[0].at(eps)
            data = [(name, _finite([getattr(p, field) for p in group])) for name, field in bounds]
            _histogram_panel(ax, data, ["C0", "C3"])
            ax.set_title(f"{series[0].label}, eps {eps:g} (n={len(group)})")
    else:
        fig, panels = _eps_panels(len(eps_list), groups=len(bounds))
        for row, (name, field) in enumerate(bounds):
            for ax, eps in zip(panels[row], eps_list, strict=True):
                data = [(s.label, _finite([getattr(p, field) for p in s.at(eps)])) for s in series]
                _histogram_panel(ax, data, _colours(len(series)))
                ax.set_title(f"{name}, eps {eps:g}")
    fig.savefig(path)


def plot_scatter(series: Sequence[Series], path: Path) -> None:
    """EmpLB (x) against FaithUB (y) per point, one panel per eps; the diagonal is where the bounds meet."""
    eps_list = all_eps(series)
    fig, panels = _eps_panels(len(eps_list), width=3.6, height=3.6)
    for ax, eps in zip(panels[0], eps_list, strict=True):
        ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, linestyle="--", zorder=0)
        for k, s in enumerate(series):
            group = s.at(eps)
            if not group:
                continue
            lb = np.array([p.emp_lb for p in group])
            ub = np.array([p.faith_ub for p in group])
            tight = int(np.sum(ub - lb <= TIGHT))
            ax.scatter(
                lb, ub, s=12, alpha=0.7, color=f"C{k % 10}", label=f"{s.label} ({tight}/{len(group)} tight)"
            )
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel("EmpLB (attack)")
        ax.set_ylabel("FaithUB (sound bound)")
        ax.set_title(f"eps {eps:g}")
        ax.legend(fontsize="small", loc="lower right")
    fig.savefig(path)


def verdict_counts(points: Sequence[PointResult]) -> dict[tuple[str, str | None], int]:
    """Points per (verdict, stage that decided it); points without a verdict are left out."""
    counts: dict[tuple[str, str | None], int] = {}
    for p in points:
        if p.verdict is None:
            continue
        key = (p.verdict, None if p.verdict == "unknown" else p.decided_by)
        counts[key] = counts.get(key, 0) + 1
    return counts


def plot_verdicts(series: Sequence[Series], path: Path) -> None:
    """Stacked bars per eps: one bar per file, split by verdict and by the stage that decided it."""
    with_verdicts = [s for s in series if s.has_verdicts]
    eps_list = all_eps(with_verdicts)
    fig, panels = _eps_panels(len(eps_list), width=max(3.0, 1.2 * len(with_verdicts) + 1.6))
    counts = {(s.label, eps): verdict_counts(s.at(eps)) for s in with_verdicts for eps in eps_list}
    # Known categories first in their fixed order, then anything a newer version might record.
    keys = list(_VERDICT_COLOURS)
    keys += sorted({k for c in counts.values() for k in c if k not in _VERDICT_COLOURS}, key=str)
    deltas = {s.delta for s in with_verdicts}
    shared_delta = next(iter(deltas)) if len(deltas) == 1 else None
    # One delta for all: in each title; several: under each bar's name.
    names = [
        s.label if shared_delta is not None or s.delta is None else f"{s.label}\ndelta {s.delta:g}"
        for s in with_verdicts
    ]
    for ax, eps in zip(panels[0], eps_list, strict=True):
        x = np.arange(len(with_verdicts))
        bottom = np.zeros(len(with_verdicts))
        for key in keys:
            heights = np.array([counts[(s.label, eps)].get(key, 0) for s in with_verdicts], dtype=float)
            if not heights.any():
                continue
            verdict, stage = key
            label = verdict if stage is None else f"{verdict} ({stage})"
            ax.bar(x, heights, bottom=bottom, color=_VERDICT_COLOURS.get(key, "0.4"), label=label, width=0.6)
            bottom += heights
        ax.set_xticks(x, names, rotation=20 if len(with_verdicts) > 2 else 0)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("number of points")
        ax.set_title(f"eps {eps:g}" + ("" if shared_delta is None else f", delta {shared_delta:g}"))
        # Below the panel, never over the bars.
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    fig.savefig(path, bbox_inches="tight")


# --- the report ------------------------------------------------------------------------------------------------


def write_report(series: Sequence[Series], directory: str | Path) -> Report:
    """Write ``summary.md``, ``summary.csv``, the PNG figures and ``index.md`` into ``directory``."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise ResultsFileError(f"cannot write the report to {out}: it is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsFileError(f"cannot write the report to {out}: {exc.strerror or exc}") from exc

    summary_md, summary_csv = out / "summary.md", out / "summary.csv"
    summary_md.write_text(summary_markdown(series) + "\n", encoding="utf-8")
    write_summary_csv_all(series, summary_csv)

    figures = [
        ReportFigure(
            "histograms.png",
            "Histograms of EmpLB and FaithUB per eps",
            "How many points have each lower bound (attack) and sound upper bound on the largest confidence gap "
            "in their eps-ball; x is the bound in [0, 1], y the number of points.",
        ),
        ReportFigure(
            "scatter.png",
            "EmpLB against FaithUB per point",
            "One dot per point: the true worst-case gap lies between x (attack) and y (sound bound); dots on "
            f"the diagonal are solved exactly, and the legend counts those within {TIGHT:g} of it.",
        ),
    ]
    plot_histograms(series, out / figures[0].name)
    plot_scatter(series, out / figures[1].name)
    if any(s.has_verdicts for s in series):
        figures.append(
            ReportFigure(
                "verdicts.png",
                "Verdicts per eps (runs with --delta)",
                "Points certified, violated or left unknown at each eps, split by the stage that decided them "
                "(the attack, a bound method, or the MILP).",
            )
        )
        plot_verdicts(series, out / figures[-1].name)

    index = out / "index.md"
    lines = ["# faithverify report", "", "Results files:", ""]
    lines += [f"- **{s.label}**: `{s.path}` ({len(s.points)} point records)" for s in series]
    lines += ["", "- [summary.md](summary.md): the summary table per file (the paper's Table 2 columns)"]
    lines += ["- [summary.csv](summary.csv): the same numbers as CSV, one row per file and eps", ""]
    for f in figures:
        lines += [f"## {f.title}", "", f.explanation, "", f"![{f.title}]({f.name})", ""]
    index.write_text("\n".join(lines), encoding="utf-8")
    return Report(out, summary_md, summary_csv, index, figures)
