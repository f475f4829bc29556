"""``faithverify report | heatmap``: tables and plots from results files, and the gap over a slice of one ball."""

from __future__ import annotations

from pathlib import Path

import click

from faithverify.cli_support import (
    FiniteFloatRange,
    attack_options,
    data_options,
    domain_option,
    output_option,
    reports_errors,
)


def _parse_dims(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, int] | None:
    if value == "auto":
        return None
    try:
        i, j = (int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor two coordinates 'i,j'") from None
    if i < 0 or j < 0 or i == j:
        raise click.BadParameter(f"{value!r}: two different coordinates >= 0 are needed")
    return i, j


def _odd_resolution(_ctx: click.Context, _param: click.Parameter, value: int) -> int:
    if value < 3 or value % 2 == 0:
        raise click.BadParameter(f"{value} must be odd and >= 3, so that x0 is the centre of the grid")
    return value


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@output_option("Folder to write the report into (created if needed).", kind="folder")
@reports_errors
def report(results: tuple[Path, ...], output: Path) -> None:
    """Turn results files of `certify --out` into tables and plots.

    Writes summary.md and summary.csv (the summary table per file), histograms.png (EmpLB and FaithUB per
    eps, as in the paper's Figures 3-4), scatter.png (EmpLB against FaithUB per point), verdicts.png (runs
    with --delta: verdicts and the stage that decided them) and index.md, which links them. Several files,
    one per student for instance, are labelled by file stem and drawn side by side in the same panels.

    \b
    Examples:
      faithverify report out/demo.jsonl -o report/
      faithverify report runs/sd.jsonl runs/fd.jsonl runs/rslad.jsonl -o report/
    """
    from faithverify.report import load_series, write_report

    series = load_series(results)  # every file is read before anything is written
    written = write_report(series, output)
    names = ["summary.md", "summary.csv", *[f.name for f in written.figures]]
    click.echo(f"wrote {written.index} ({', '.join(names)}) for {', '.join(s.label for s in series)}")


@click.command()
@click.argument("teacher", type=click.Path(path_type=Path))
@click.argument("student", type=click.Path(path_type=Path))
@click.option("--index", type=click.IntRange(min=0), required=True, help="Index of the point in the data.")
@click.option(
    "--eps", type=FiniteFloatRange(min=0, min_open=True), required=True, help="L-inf radius of the ball."
)
@data_options("Where the point comes from")
@domain_option("the slice is clipped to it and to the ball.")
@click.option(
    "--dims",
    default="auto",
    show_default=True,
    callback=_parse_dims,
    help="The slice's two directions. auto: the sign of the PGD witness's displacement and a random sign "
    "direction orthogonal to it. i,j: the flat input coordinates i and j.",
)
@click.option(
    "--resolution",
    type=int,
    default=101,
    show_default=True,
    callback=_odd_resolution,
    help="Grid points per axis (odd, so that x0 is the centre).",
)
@attack_options(seed="Seed of the random direction and the attack.")
@click.option(
    "--faith-ub/--no-faith-ub",
    default=True,
    show_default=True,
    help="Bound the point by CROWN and show its FaithUB in the title.",
)
@output_option("Where to write the PNG.", kind="file")
@reports_errors
def heatmap(
    teacher: Path,
    student: Path,
    index: int,
    eps: float,
    data_source: str | None,
    data_root: Path | None,
    split: str,
    domain: tuple[float, float],
    dims: tuple[int, int] | None,
    resolution: int,
    seed: int,
    attack_steps: int,
    restarts: int,
    faith_ub: bool,
    output: Path,
) -> None:
    """Heat map of the confidence gap ||f_t(x) - f_s(x)||_inf over a 2-D slice of one point's ball.

    The slice is x0 + a*u + b*v for a, b in [-eps, eps], clipped to the ball and the domain, evaluated by
    onnxruntime on the paired graph (the paper's Figure 1). x0 and the PGD witness are marked; the title
    gives EmpLB and CROWN's FaithUB for the point, which bounds the whole map.

    \b
    Examples:
      faithverify heatmap models/mnist/teacher.onnx models/mnist/student-fd.onnx --index 0 --eps 0.05 -o gap.png
      faithverify heatmap T.onnx S.onnx --data mnist --index 12 --eps 0.1 --dims 300,400 -o gap.png
    """
    from faithverify.attack import PGDConfig
    from faithverify.data import sample_beside, select_points
    from faithverify.errors import ResultsFileError
    from faithverify.heatmap import compute_gap_slice, plot_gap_slice
    from faithverify.pair import load_pair

    if output.is_dir():
        raise ResultsFileError(f"cannot write {output}: it is a directory")
    source = sample_beside(teacher, data_source)
    pair = load_pair(teacher, student, domain=domain)
    points = select_points(
        source, pair.input_shape, split=split, data_root=data_root, start=index, count=1, domain=domain
    )
    x0 = points.x[0]
    size = x0.size
    if dims is not None and max(dims) >= size:
        raise click.BadParameter(
            f"{dims} is out of range: the input has {size} coordinates", param_hint="--dims"
        )

    s = compute_gap_slice(
        pair,
        x0,
        eps,
        index=index,
        dims=dims,
        resolution=resolution,
        domain=domain,
        pgd=PGDConfig(steps=attack_steps, restarts=restarts, seed=seed),
        seed=seed,
        with_faith_ub=faith_ub,
    )
    try:
        output.resolve().parent.mkdir(parents=True, exist_ok=True)
        plot_gap_slice(s, str(output))
    except OSError as exc:
        raise ResultsFileError(f"cannot write {output}: {exc.strerror or exc}") from exc
    ub = "" if s.faith_ub is None else f", CROWN FaithUB {s.faith_ub:.4f}"
    click.echo(
        f"wrote {output}: point {index}, eps {eps:g}, slice max {s.gap.max():.4f}, EmpLB {s.emp_lb:.4f}{ub}"
    )
