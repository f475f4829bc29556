"""``faithverify export-vnn``: a teacher/student pair and points as a VNN-COMP-style benchmark suite."""

from __future__ import annotations

from pathlib import Path

import click

from faithverify.cli_support import (
    FiniteFloatRange,
    data_options,
    domain_option,
    eps_list_option,
    executor_options,
    note_on_interrupt,
    output_option,
    quiet_option,
    reports_errors,
    solver_option,
    timeout_option,
)


@click.command("export-vnn")
@click.argument("teacher", type=click.Path(path_type=Path))
@click.argument("student", type=click.Path(path_type=Path))
@output_option(
    "Folder of the suite (created if missing; files of the same names are replaced).", kind="folder"
)
@eps_list_option("L-inf radius of the input box; repeat for several. One instance per point and eps.")
@click.option(
    "--delta",
    type=FiniteFloatRange(0.0, 1.0),
    required=True,
    help="Threshold on the confidence gap: an instance is unsafe (sat) where some class's probabilities "
    "differ by at least DELTA.",
)
@data_options("Points to export", count="Export only the first N points")
@domain_option("every box is clipped to it.")
@timeout_option("Seconds per instance, written in instances.csv.")
@reports_errors
def export_vnn(
    teacher: Path,
    student: Path,
    output: Path,
    eps_list: tuple[float, ...],
    delta: float,
    data_source: str | None,
    data_root: Path | None,
    split: str,
    count: int | None,
    start: int,
    domain: tuple[float, float],
    timeout: float,
) -> None:
    """Write the pair's faithfulness queries as VNN-LIB 1.0 and 2.0 files with a VNN-COMP instances.csv.

    For every point x0 and eps the question is: does some x in [x0 - eps, x0 + eps] ∩ domain have a class
    whose probabilities under teacher and student differ by DELTA or more? `sat` is a violation, `unsat`
    certifies the point.

    \b
    OUTPUT/instances.csv    onnx,vnnlib,timeout rows (VNN-COMP; paths relative to the CSV)
    OUTPUT/onnx/            pair_gap.onnx (output softmax(teacher) - softmax(student)),
                            teacher_softmax.onnx, student_softmax.onnx (for the 2.0 queries)
    OUTPUT/vnnlib/          1.0 properties on pair_gap.onnx: unsafe iff some Y_i >= DELTA or Y_i <= -DELTA
    OUTPUT/vnnlib2/         2.0 queries over networks `teacher` and `student` reading one input

    \b
    Example:
      faithverify export-vnn T.onnx S.onnx --data mnist --n 50 --eps 0.05 --delta 0.2 -o suite/
    """
    from faithverify.data import sample_beside, select_points
    from faithverify.errors import ResultsFileError
    from faithverify.pair import load_pair
    from faithverify.paths import check_writable_dir
    from faithverify.vnn.export import GAP_MODEL, INSTANCES, STUDENT_MODEL, TEACHER_MODEL, export_suite

    check_writable_dir(output, "-o")
    source = sample_beside(teacher, data_source)
    pair = load_pair(teacher, student, domain=domain)
    points = select_points(
        source, pair.input_shape, split=split, data_root=data_root, start=start, count=count, domain=domain
    )

    try:
        instances = export_suite(
            pair, points.x, points.indices, eps_list, delta, output, domain=domain, timeout=timeout
        )
    except OSError as exc:  # the disk filled, a name the file system refuses
        raise ResultsFileError(f"cannot write the suite to {output}: {exc.strerror or exc}") from None
    n_eps = len(dict.fromkeys(eps_list))
    click.echo(
        f"wrote {len(instances)} instances ({len(points.x)} points x {n_eps} eps, delta {delta:g}) to {output}/"
    )
    click.echo(f"  VNN-LIB 1.0: {output / INSTANCES} on {output / GAP_MODEL}")
    click.echo(
        f"  VNN-LIB 2.0: {output / 'vnnlib2'}/ with --network teacher={output / TEACHER_MODEL} "
        f"--network student={output / STUDENT_MODEL}"
    )


@click.command("bench")
@click.argument("instances", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "summary",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("results.csv"),
    show_default=True,
    help="Summary CSV: one row per instance (result, seconds, stage, reason, result file).",
)
@click.option(
    "--results-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the per-instance result files go (default: beside --out, named after it without its "
    "extension: results.csv -> results/).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Skip the instances already in --out (the same ONNX and VNN-LIB files and timeout); --out must be a "
    "summary of this suite.",
)
@solver_option("MILP solver for what bound propagation leaves open")
@click.option("--no-milp", is_flag=True, help="Attack and CROWN only: fast, and more answers are unknown.")
@click.option(
    "--timeout-cap",
    type=FiniteFloatRange(min=0, min_open=True),
    default=None,
    help="Use at most this many seconds per instance, whatever instances.csv says.",
)
@executor_options("Instances run at a time, each in its own process (with --ray local: Ray's CPUs).")
@quiet_option()
@reports_errors
def bench(
    instances: Path,
    summary: Path,
    results_dir: Path | None,
    resume: bool,
    solver: str,
    no_milp: bool,
    timeout_cap: float | None,
    jobs: int,
    ray_address: str | None,
    quiet: bool,
) -> None:
    """Run a VNN-COMP-style suite given as instances.csv (rows onnx,vnnlib,timeout; .gz accepted).

    Each instance gets a result file in the competition's format (`sat` with the counterexample
    ((X_0 v) ... (Y_k v)), re-checked with onnxruntime; `unsat`; `timeout`; `unknown`; `error`) and a row in the
    summary CSV, written as it finishes. Works for single classifiers (e.g. local robustness) and for the paired
    graphs that `faithverify export-vnn` writes. An instance's timeout covers all of it, loading included. One
    instance that cannot be run (a missing file, an internal error) gets an `error` row and the suite goes on.

    \b
    Example:
      faithverify export-vnn T.onnx S.onnx --n 20 --eps 0.05 --delta 0.2 -o suite/
      faithverify bench suite/instances.csv --out results.csv
      faithverify bench suite/instances.csv --out results.csv --ray ray://head:10001   # on a Ray cluster
    """
    from collections import Counter

    from tqdm.auto import tqdm

    from faithverify.bounds.milp import Solver
    from faithverify.executors import ExecutorSpec, import_ray
    from faithverify.vnn.bench import default_results_dir, read_instances, run_suite

    if str(summary) == "-":
        raise click.BadParameter(
            "the summary is a CSV file written as instances finish: give a file name", param_hint="--out"
        )
    if ray_address is not None:
        import_ray(local=ray_address == "local")  # a missing extra is one line, before anything is written

    results_dir = results_dir or default_results_dir(summary)
    if not resume and _has_content(summary):
        click.echo(f"note: replacing the results in {summary} (--resume keeps them)", err=True)
    total = len(read_instances(instances))
    note_on_interrupt(
        f"the finished instances are in {summary}; run the same command with --resume to finish"
    )
    counts: Counter[str] = Counter()
    seconds = 0.0
    runs = run_suite(
        instances, summary, results_dir, resume=resume, solver=Solver(solver), milp=not no_milp,
        timeout_cap=timeout_cap, executor=ExecutorSpec(jobs=jobs, ray=ray_address),
    )  # fmt: skip
    with tqdm(total=total, desc="bench", unit="inst", disable=quiet) as bar:
        for _, answer in runs:
            bar.update(1)
            if answer is None:
                counts["skipped (resume)"] += 1
                continue
            counts[answer.outcome.value] += 1
            seconds += answer.seconds
            bar.set_postfix(counts)
    ran = total - counts["skipped (resume)"]
    parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    click.echo(f"{total} instances: {parts}; {seconds:.1f} s for the {ran} run now")
    click.echo(f"summary: {summary}; result files: {results_dir}/")


@click.command("verify-instance")
@click.argument("onnx_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("vnnlib_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--result",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the VNN-COMP result file here (default: print it).",
)
@timeout_option("Seconds for the instance.")
@solver_option("MILP solver for what bound propagation leaves open")
@reports_errors
def verify_instance(
    onnx_file: Path, vnnlib_file: Path, result: Path | None, timeout: float, solver: str
) -> None:
    """Decide one VNN-COMP instance (ONNX + VNN-LIB 1.0), as vnncomp/run_instance.sh does.

    Prints or writes `sat` with the counterexample, `unsat`, `timeout` or `unknown`; the reason for an
    `unknown` goes to stderr. The timeout covers the whole instance, loading included. Files that cannot be read
    are an error (exit 2, nothing written).
    """
    from faithverify.bounds.milp import Solver
    from faithverify.errors import FaithverifyError, ResultsFileError
    from faithverify.paths import check_writable
    from faithverify.vnn.bench import run_instance
    from faithverify.vnn.engine import Outcome
    from faithverify.vnn.instance import format_result
    from faithverify.vnn.vnnlib import write_text_atomic

    if result is not None and str(result) == "-":
        result = None  # "-" is stdout, where the answer goes without --result
    if result is not None:
        check_writable(result, "--result")  # before the instance runs, not after
    answer = run_instance(onnx_file, vnnlib_file, timeout, solver=Solver(solver))
    if answer.outcome is Outcome.ERROR:
        raise FaithverifyError(answer.reason)
    if answer.reason:
        click.echo(f"{answer.outcome.value} ({answer.stage}): {answer.reason}", err=True)
    text = format_result(answer)
    if result is None:
        click.echo(text, nl=False)
        return
    try:
        write_text_atomic(result, text)
    except OSError as exc:
        raise ResultsFileError(f"cannot write --result {result}: {exc.strerror or exc}") from None
    click.echo(f"{answer.outcome.value} in {answer.seconds:.2f} s -> {result}")


def _has_content(path: Path) -> bool:
    """A non-empty file is there (a path the file system cannot even look up is not: it fails later, named)."""
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False
