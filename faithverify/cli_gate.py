"""``faithverify gate``: a release check of a student against its teacher, for CI (exit 0 pass, 1 fail).

The config format is documented in :mod:`faithverify.gate`; this module only wires the command.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import click

from faithverify.cli_support import F, quiet_option, reports_errors
from faithverify.errors import ResultsFileError

EXIT_FAILED = 1


def _check_output(path: Path | None, option: str) -> None:
    """Refuse an unusable output path before the (long) run, not after it."""
    if path is not None and path.is_dir():
        raise ResultsFileError(f"cannot write {option} {path}: it is a directory")


def _report_option(flag: str, help: str) -> Callable[[F], F]:
    """An optional report path, passed as ``<name>_path``."""
    return click.option(
        flag, f"{flag.lstrip('-')}_path", type=click.Path(path_type=Path), default=None, help=help
    )


@click.command("gate")
@click.argument("teacher", type=click.Path(path_type=Path))
@click.argument("student", type=click.Path(path_type=Path))
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The gate's TOML file: data, thresholds, time budget (see examples/release-gate.toml).",
)
@_report_option("--junit", "Write a JUnit XML report here (one test case per check), for CI test reports.")
@_report_option(
    "--json", "Write every check's measurement, threshold and outcome, the settings and timings as JSON here."
)
@_report_option("--markdown", "Also write the Markdown summary here (e.g. for a CI job summary).")
@quiet_option("No progress lines on stderr.")
@reports_errors
def gate(
    teacher: Path,
    student: Path,
    config_path: Path,
    junit_path: Path | None,
    json_path: Path | None,
    markdown_path: Path | None,
    quiet: bool,
) -> None:
    """Check a student release against its teacher: exit 0 when every threshold of --config holds.

    Measures what the config's checks ask for (mean FaithUB, certified and violated shares at a delta,
    distillation agreement, robust and clean accuracy, mean EmpLB) with one certify run per distinct eps and
    bound setting, prints a Markdown table (check, measured, threshold, result) and writes the reports asked
    for. Exit codes: 0 every check passed, 1 one failed or could not be evaluated within the time budget,
    2 bad input (models, data or config; a one-line message), 3 an internal soundness check failed.

    \b
    Example:
      faithverify gate models/mnist/teacher.onnx models/mnist/student-fd.onnx \\
          --config examples/release-gate.toml --junit report.xml --json gate.json
    """
    from faithverify.gate import format_markdown, load_config, run_gate, to_json, to_junit_xml, write_report

    config = load_config(config_path)
    outputs = {"--junit": junit_path, "--json": json_path, "--markdown": markdown_path}
    for option, path in outputs.items():
        _check_output(path, option)
    log = None if quiet else (lambda line: click.echo(line, err=True))
    result = run_gate(teacher, student, config, log=log)
    markdown = format_markdown(result)
    reports = [
        (junit_path, lambda: to_junit_xml(result)),
        (json_path, lambda: json.dumps(to_json(result), indent=2) + "\n"),
        (markdown_path, lambda: markdown),
    ]
    for path, render in reports:
        if path is not None:
            write_report(path, render())
    click.echo(markdown, nl=False)
    if not result.passed:
        sys.exit(EXIT_FAILED)
