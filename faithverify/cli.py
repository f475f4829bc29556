"""The ``faithverify`` command line: parse, call the library, print. Exit codes: 0 ok, 2 bad input."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from faithverify import __version__
from faithverify.cli_gate import gate
from faithverify.cli_report import heatmap, report
from faithverify.cli_robustness import export_robustness
from faithverify.cli_support import (
    OneLineErrors,
    attack_options,
    check_output_file,
    data_options,
    domain_option,
    eps_list_option,
    executor_options,
    note_on_interrupt,
    output_option,
    quiet_option,
    reports_errors,
    solver_option,
    summary_options,
    timeout_option,
)
from faithverify.cli_train import distill, recipes, train_teacher
from faithverify.cli_vnn import bench, export_vnn, verify_instance
from faithverify.methods import BoundMethod, Device, Refiner

if TYPE_CHECKING:
    from faithverify.certify import CertifyConfig as CertifyConfigType
    from faithverify.methods import RefineMode as RefineModeType
    from faithverify.pair import Pair
    from faithverify.results import PointResult


def _check_delta(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and 0 <= value <= 1):
        raise click.BadParameter(
            f"{value} is not a confidence gap: delta must be in [0, 1]", param_hint="--delta"
        )
    return value


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@click.group(
    cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="faithverify")
def main() -> None:
    """Sound bounds on how far a distilled student's softmax outputs can drift from its teacher's.

    For a teacher/student pair given as ONNX classifiers and points x0 with a radius eps, faithverify bounds
    max ||softmax(teacher(x)) - softmax(student(x))||_inf over the L-inf ball around x0: a lower bound by
    attack (EmpLB, with a witness re-checked by onnxruntime) and a sound upper bound (FaithUB, by bound
    propagation per network and for both together, refined by branch and bound and an exact MILP where asked).
    See the README for the quick start.
    """
    # Library warnings (a Gurobi license that refuses a model, a fallback to slower bounds) reach the user as
    # one line each; progress and results are printed by the commands themselves.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")


@main.command()
@click.argument("teacher", type=click.Path(path_type=Path))
@click.argument("student", type=click.Path(path_type=Path))
@eps_list_option("L-inf radius of the input ball; repeat for several (e.g. --eps 0.025 --eps 0.05).")
@data_options("Points to certify", count="Certify only the first N points")
@domain_option(
    "balls are clipped to it. No normalisation is applied: a model that normalises must do it inside its graph."
)
@click.option(
    "--bounds",
    "methods",
    type=click.Choice([*(m.value for m in BoundMethod), *(r.value for r in Refiner)]),
    multiple=True,
    default=("crown", "coupled"),
    show_default=True,
    help="Upper-bound methods (repeat for several). FaithUB is the smallest of them; each is reported. "
    "ibp, crown and alpha-crown screen every point network by network (the paper's eq. 4-6); coupled bounds "
    "teacher and student together on the others' bounds (never looser than eq. 6); bab (branch and bound) and "
    "milp are exact methods that refine each point within --timeout (with --delta: only the points screening "
    "leaves undecided).",
)
@click.option(
    "--delta",
    type=float,
    default=None,
    callback=lambda _c, _p, v: _check_delta(v),
    help="Threshold on the confidence gap: each point gets a verdict, certified (FaithUB < DELTA), "
    "violated (a witness with gap >= DELTA, re-checked by onnxruntime and saved) or unknown.",
)
@click.option(
    "--method",
    type=click.Choice(["screen", "milp"]),
    default="screen",
    show_default=True,
    help="screen: the --bounds methods, then (with --delta) an exact MILP only on the points they leave "
    "undecided. milp: the paper's FaithUB, an exact MILP on every point.",
)
@click.option(
    "--refine/--no-refine",
    default=True,
    show_default=True,
    help="With --delta: refine undecided points with the exact methods (those named in --bounds, else branch "
    "and bound then the MILP).",
)
@solver_option()
@timeout_option(
    "Seconds of refinement (branch and bound, MILP) per point; a stopped search contributes its sound bound, "
    "never its incumbent.",
    dest="milp_timeout",
    at_least=0.1,
)
@executor_options("Processes for the refinement stage (points are refined in parallel).")
@click.option(
    "--alpha-iterations",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Optimisation steps of alpha-CROWN, at most: it stops earlier once its bounds have converged.",
)
@attack_options(seed="Seed of the attacks' random starts.")
@click.option(
    "--robustness/--no-robustness",
    default=True,
    show_default=True,
    help="Also measure each model's robust accuracy and the distillation agreement (PGD-50).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=250,
    show_default=True,
    help="Points bounded and attacked together.",
)
@click.option(
    "--device",
    type=click.Choice([d.value for d in Device]),
    default="auto",
    show_default=True,
    help="Where to compute; auto uses CUDA when present.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write per-point results as JSON Lines here, as they are computed.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Keep the points already in --out and compute only the rest (settings must match).",
)
@summary_options
@quiet_option()
@reports_errors
def certify(teacher: Path, student: Path, **options: Any) -> None:
    """Bound the teacher/student confidence gap around each point, for each --eps.

    Per point and eps it reports EmpLB (PGD, re-checked with onnxruntime), FaithUB by each --bounds method,
    the predictions, and (with labels) robust accuracy and distillation agreement; then a summary table,
    one row per eps, in the form of the paper's Table 2.

    \b
    Examples:
      faithverify certify models/mnist/teacher.onnx models/mnist/student-fd.onnx --eps 0.05
      faithverify certify T.onnx S.onnx --data mnist --n 1000 --eps 0.05 --out r.jsonl --resume
      faithverify certify T.onnx S.onnx --eps 0.05 --delta 0.2          # verdicts; refinement only where needed
      faithverify certify T.onnx S.onnx --eps 0.1 --bounds crown --bounds bab --timeout 10   # anytime, sound
      faithverify certify T.onnx S.onnx --eps 0.1 --method milp --solver highs --timeout 30 --jobs 2
    """
    from faithverify.certify import RefineMode
    from faithverify.certify import certify as run_certify
    from faithverify.data import sample_beside, select_points
    from faithverify.executors import import_ray
    from faithverify.pair import load_pair
    from faithverify.results import ResultsFile, format_table, summarize, write_summary_csv

    o = CertifyOptions(**options)
    out = o.out
    if o.resume and out is None:
        raise click.BadParameter("--resume needs --out", param_hint="--resume")
    if out is not None and str(out) == "-":
        raise click.BadParameter(
            "results stream to a file, not to stdout: give a file name", param_hint="--out"
        )
    for path, option in ((out, "--out"), (o.csv_path, "--csv")):
        if path is not None:
            check_output_file(path, option)  # before the run, not after it
    if o.ray_address is not None:
        import_ray(local=o.ray_address == "local")  # a missing extra is one line, before anything is written
    # The models first: a file that is not a model is named as such, not as a missing sample beside it.
    pair = load_pair(teacher, student, domain=o.domain)
    data_source = sample_beside(teacher, o.data_source)
    selected = select_points(
        data_source,
        pair.input_shape,
        split=o.split,
        data_root=o.data_root,
        start=o.start,
        count=o.count,
        domain=o.domain,
        num_classes=pair.num_classes,
    )
    indices = selected.indices
    for warning in _input_warnings(pair, o.eps_list, o.domain):
        click.echo(f"warning: {warning}", err=True)

    config = o.certify_config()
    # The header: the models and data the records are about, and every setting that decides their values.
    settings = {
        "teacher_sha256": _sha256(teacher),
        "student_sha256": _sha256(student),
        "data": str(data_source),
        "split": o.split,
        **config.record_settings(),
    }
    if out is not None and not o.resume and out.exists() and out.stat().st_size > 0:
        click.echo(f"note: replacing the results in {out} (--resume keeps them)", err=True)
    results_file = ResultsFile(out, settings, resume=o.resume) if out is not None else None
    note_on_interrupt(
        f"the finished points are in {out}; run the same command with --resume to finish"
        if out is not None
        else "nothing was kept (--out FILE keeps every point as it finishes)"
    )
    try:
        fresh = run_certify(
            pair,
            selected.x,
            selected.labels,
            config,
            indices=indices,
            done=set(results_file.done) if results_file else set(),
            on_batch=results_file.write if results_file else None,
            progress=not o.quiet,
        )
    finally:
        if results_file is not None:
            results_file.close()
    wanted = {(int(i), float(e)) for i in indices for e in o.eps_list}
    points = [
        p for p in (results_file.done.values() if results_file else fresh) if (p.index, p.eps) in wanted
    ]
    rows = summarize(points)
    if o.csv_path is not None:
        write_summary_csv(rows, o.csv_path)
    if o.as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    click.echo(
        f"teacher {teacher} ({pair.teacher.num_classes} classes, onnxruntime check "
        f"{pair.teacher.max_abs_diff:.1e}); student {student} ({pair.student.max_abs_diff:.1e})"
    )
    click.echo(format_table(rows))
    summary = _milp_summary(points, o.milp_timeout, all_pairs=config.refine_mode is RefineMode.ALL)
    if summary:
        click.echo(summary)
    if out is not None:
        click.echo(f"per-point results: {out}")


@dataclass(frozen=True)
class CertifyOptions:
    """``certify``'s command line, typed: click fills it, :meth:`certify_config` turns it into the run's
    :class:`~faithverify.certify.CertifyConfig` (the one place that maps options to settings)."""

    eps_list: tuple[float, ...]
    data_source: str | None
    data_root: Path | None
    split: str
    count: int | None
    start: int
    domain: tuple[float, float]
    methods: tuple[str, ...]
    delta: float | None
    method: str
    refine: bool
    solver: str
    milp_timeout: float
    jobs: int
    ray_address: str | None
    alpha_iterations: int
    attack_steps: int
    restarts: int
    robustness: bool
    seed: int
    batch_size: int
    device: str
    out: Path | None
    resume: bool
    as_json: bool
    csv_path: Path | None
    quiet: bool

    def refinement(self) -> tuple[list[BoundMethod], tuple[Refiner, ...], RefineModeType]:
        """Screening methods, exact methods and which points they refine, from --bounds, --method, --refine
        and --delta: exact methods named in --bounds (or --method milp) refine every point, or with --delta the
        undecided ones; otherwise --delta refines undecided points with branch and bound then the MILP."""
        from faithverify.methods import RefineMode

        screening = [BoundMethod(m) for m in dict.fromkeys(self.methods) if m in set(BoundMethod)]
        exact = [Refiner(m) for m in dict.fromkeys(self.methods) if m in set(Refiner)]
        if self.method == "milp" and Refiner.MILP not in exact:
            exact.append(Refiner.MILP)
        mode = RefineMode.UNDECIDED if self.delta is not None or not exact else RefineMode.ALL
        if self.method == "milp":
            mode = RefineMode.ALL
        if not self.refine and not exact:
            mode = RefineMode.NONE
        return screening or [BoundMethod.CROWN], tuple(exact) or (Refiner.BAB, Refiner.MILP), mode

    def certify_config(self) -> CertifyConfigType:
        from faithverify.attack_config import PGDConfig
        from faithverify.certify import CertifyConfig
        from faithverify.methods import Solver

        screening, refiners, mode = self.refinement()
        return CertifyConfig(
            eps=list(self.eps_list),
            methods=screening,
            pgd=PGDConfig(steps=self.attack_steps, restarts=self.restarts, seed=self.seed),
            robustness=self.robustness,
            batch_size=self.batch_size,
            device=self.device,
            alpha_iterations=self.alpha_iterations,
            domain=self.domain,
            delta=self.delta,
            refine_mode=mode,
            refiners=refiners,
            solver=Solver(self.solver),
            milp_timeout=self.milp_timeout,
            jobs=self.jobs,
            ray=self.ray_address,
        )


def _input_warnings(pair: Pair, eps_list: tuple[float, ...], domain: tuple[float, float]) -> list[str]:
    """Inputs that run but probably are not what the user meant."""
    warnings = []
    width = domain[1] - domain[0]
    too_wide = [e for e in eps_list if e >= width]
    if too_wide:
        warnings.append(
            f"--eps {too_wide[0]:g} is at least the domain's width {width:g}: every ball is the whole domain"
        )
    sizes = [sum(p.numel() for p in m.module.parameters()) for m in (pair.teacher, pair.student)]
    if sizes[1] > 2 * sizes[0]:
        warnings.append(
            f"the student has {sizes[1]:,} parameters, the teacher {sizes[0]:,}: are TEACHER and STUDENT swapped? "
            "(the gap is symmetric, but reports name them)"
        )
    return warnings


def _milp_summary(points: list[PointResult], timeout: float, *, all_pairs: bool) -> str:
    """One line on the refinement stage: how many points it refined, with which methods, how long, and how
    each refinement ended."""
    refinements = [(p, p.milp) for p in points if p.milp is not None]
    if not refinements:
        return ""
    keys = {r.refiners for _, r in refinements}
    solvers = sorted({r.solver for _, r in refinements} - {"none"}) or ["no solve needed"]
    median = statistics.median(sum(p.seconds.get(k, 0.0) for k in keys) for p, _ in refinements)
    head = f"Refinement: {len(refinements)} points refined with {', '.join(solvers)}, median {median:.1f} s"
    spent = sum(1 for _, r in refinements if r.timed_out)
    out_of_time = f"{spent} ran out of the --timeout of {timeout:g} s (their bounds are sound, not tight)"
    if all_pairs:
        exact = sum(1 for _, r in refinements if r.exact and not r.timed_out)
        known = sum(1 for p in points if p.milp is None and p.exact)
        skipped = f"; {known} left alone, their worst gap already known" if known else ""
        return f"{head}; {exact} exact, {len(refinements) - exact - spent} not exact, {out_of_time}{skipped}"
    decided = sum(1 for p, _ in refinements if p.decided_by in keys)
    given_up = sum(1 for _, r in refinements if r.out_of_reach)
    return (
        f"{head}; {decided} decided, {given_up} given up as unknown (no sound bound could reach delta), "
        f"{out_of_time}"
    )


@main.command()
@click.argument("teacher", type=click.Path(path_type=Path))
@click.argument("student", type=click.Path(path_type=Path))
@output_option("Where to write the paired ONNX model.")
@domain_option("the conversion is checked on random inputs in it.")
@reports_errors
def pair(teacher: Path, student: Path, output: Path, domain: tuple[float, float]) -> None:
    """Write the paired graph: input x, outputs z_t, z_s and softmax(z_t) - softmax(z_s).

    Both models are checked against onnxruntime, and the paired graph against the two models, before it is
    written (atomically: an existing file is replaced only by a complete one).
    """
    import onnx

    from faithverify.errors import ResultsFileError
    from faithverify.pair import load_pair

    paired = load_pair(teacher, student, domain=domain)
    target = output.resolve()
    if target.is_dir():
        raise ResultsFileError(f"cannot write {output}: it is a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
        os.close(fd)
        onnx.save(paired.onnx_model, tmp)
        os.replace(tmp, target)
    except OSError as exc:
        raise ResultsFileError(f"cannot write {output}: {exc.strerror or exc}") from exc
    shape = "x".join(str(d) for d in paired.input_shape)
    click.echo(f"wrote {output}: input x [N, {shape}], outputs z_t, z_s, gap [N, {paired.num_classes}]")


@main.command()
@click.argument("results", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@summary_options
@reports_errors
def summary(results: Path, as_json: bool, csv_path: Path | None) -> None:
    """Summarise a results file written by `certify --out` (one row per eps)."""
    from faithverify.results import format_table, read_results, summarize, write_summary_csv

    if csv_path is not None:
        check_output_file(csv_path, "--csv")
    _, points = read_results(results)
    rows = summarize(points)
    if csv_path is not None:
        write_summary_csv(rows, csv_path)
    click.echo(json.dumps([r.to_dict() for r in rows], indent=2) if as_json else format_table(rows))


# The other command groups live in their own modules; registering them here keeps one `faithverify` entry point.
for command in (
    recipes,
    train_teacher,
    distill,
    report,
    heatmap,
    gate,
    export_vnn,
    export_robustness,
    bench,
    verify_instance,
):
    main.add_command(command)

if __name__ == "__main__":
    main()
