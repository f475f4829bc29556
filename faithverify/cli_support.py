"""What every faithverify command shares: exit codes, turning library errors into one line on stderr, and the
options (with their validation) that several commands take with the same meaning."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from faithverify import interrupt
from faithverify.attack_config import PGDConfig
from faithverify.errors import BoundingError, FaithverifyError, SoundnessViolation
from faithverify.methods import Solver

_PGD = PGDConfig()  # the attack's defaults

F = TypeVar("F", bound=Callable[..., Any])

# Exit codes (README, "Exit codes"). 1 stays Python's own: an unexpected error, with its traceback, is a bug.
EXIT_BAD_INPUT = 2  # the input or the environment is wrong: one line says what
EXIT_INTERNAL = 3  # a bound failed its own soundness check: a bug, never a result
EXIT_LIMITATION = 4  # valid input that faithverify cannot handle yet (not the user's fault)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)

_INTERRUPT_NOTE = "faithverify.interrupt_note"


def note_on_interrupt(note: str) -> None:
    """What the one line printed on Ctrl-C should add (where the finished results are, how to resume)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[_INTERRUPT_NOTE] = note


def reports_errors(func: F) -> F:
    """Turn our input errors into one line on stderr and exit code 2, a limitation into exit code 4, Ctrl-C
    into one line and exit code 130; never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        interrupt.install()
        try:
            return func(*args, **kwargs)
        except BoundingError as exc:
            click.echo(f"error: not supported yet: {exc}", err=True)
            sys.exit(EXIT_LIMITATION)
        except FaithverifyError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except SoundnessViolation as exc:
            click.echo(f"internal error: {exc}", err=True)
            sys.exit(EXIT_INTERNAL)
        except KeyboardInterrupt:
            ctx = click.get_current_context(silent=True)
            note = ctx.meta.get(_INTERRUPT_NOTE) if ctx is not None else None
            click.echo(f"interrupted: {note or 'stopped by Ctrl-C'}", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]


class OneLineErrors(click.Group):
    """A command group whose every error is one line: click's usage errors too (``error: Invalid value for
    '--eps': ...``, exit 2, where click prints usage, a hint and the error on three), and Ctrl-C anywhere in
    click's own work (exit 130, where click prints ``Aborted!`` and exits 1)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # a bare command: its help, as click shows it
            click.echo(exc.format_message(), err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            command = (
                f" (see {exc.ctx.command_path} --help)"
                if isinstance(exc, click.UsageError) and exc.ctx
                else ""
            )
            click.echo(f"error: {exc.format_message()}{command}", err=True)
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("interrupted: stopped by Ctrl-C", err=True)
            sys.exit(EXIT_INTERRUPTED)
        # standalone_mode=False hands back what click would have exited with (0 for --help) or the command's
        # return value (None); our commands exit themselves on failure.
        sys.exit(code if isinstance(code, int) else 0)


def compose(*decorators: Callable[[Any], Any]) -> Callable[[F], F]:
    """One decorator applying ``decorators`` as if stacked in this order (so options show in this order)."""

    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def check_output_file(path: Path, option: str) -> None:
    """Fail now, with one line, if ``path`` cannot become a file: before a long run, not after it."""
    from faithverify.paths import check_writable

    check_writable(path, option)


class FiniteFloatRange(click.FloatRange):
    """click's ``FloatRange`` lets ``nan`` through (every comparison with it is false) and ``inf`` past an open
    upper end; a number option of ours is always a finite number in its range."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


# ------------------------------------------------------------------------------------------------------------
# Validation callbacks


def check_eps(_ctx: click.Context, _param: click.Parameter, values: tuple[float, ...]) -> tuple[float, ...]:
    """Every radius of a repeated ``--eps`` is a finite number >= 0."""
    for eps in values:
        if not math.isfinite(eps) or eps < 0:
            raise click.BadParameter(f"{eps} is not a radius: eps must be a finite number >= 0")
    return values


def check_domain(
    _ctx: click.Context | None, _param: click.Parameter | None, domain: tuple[float, float]
) -> tuple[float, float]:
    """``--domain LOW HIGH`` is a finite interval with LOW < HIGH."""
    if domain[0] >= domain[1] or not all(math.isfinite(v) for v in domain):
        raise click.BadParameter(f"domain {domain} is not an interval LOW < HIGH", param_hint="--domain")
    return domain


# ------------------------------------------------------------------------------------------------------------
# Options shared by several commands; the help text is parametrised where its meaning depends on the command.


def output_option(help: str, *, kind: str = "any") -> Callable[[F], F]:
    """``-o/--output``, required: a ``"file"``, a ``"folder"`` or (``"any"``) a path not checked for either."""
    path = click.Path(file_okay=kind != "folder", dir_okay=kind != "file", path_type=Path)
    return click.option("-o", "--output", type=path, required=True, help=help)


def eps_list_option(help: str) -> Callable[[F], F]:
    """``--eps`` repeated, as the tuple ``eps_list`` of radii."""
    return click.option(
        "--eps", "eps_list", type=float, multiple=True, required=True, callback=check_eps, help=help
    )


def data_options(points: str, count: str | None = None) -> Callable[[F], F]:
    """``--data`` (as ``data_source``), ``--data-root``, ``--split`` and, with ``count``, ``--n`` and ``--start``.

    ``points`` opens the help of ``--data`` (what the points are for); ``count`` opens the help of ``--n``
    ("Certify only the first N points"). Without it the command picks its points otherwise (heatmap's
    ``--index``).
    """
    options = [
        click.option(
            "--data",
            "data_source",
            default=None,
            help=f"{points}: a dataset name (mnist, fashion-mnist, cifar10) under --data-root, a directory in "
            "the IDX or cifar-10-batches-py layout, or an .npz file with arrays x and y. Default: sample.npz "
            "beside the teacher file.",
        ),
        click.option(
            "--data-root",
            type=click.Path(path_type=Path),
            default=None,
            help="Where dataset names are looked up. Default: $FAITHVERIFY_DATA_ROOT.",
        ),
        click.option(
            "--split",
            type=click.Choice(["test", "train"]),
            default="test",
            show_default=True,
            help="Dataset split, for dataset names and directories.",
        ),
    ]
    if count is not None:
        options += [
            click.option(
                "--n",
                "count",
                type=click.IntRange(min=1),
                default=None,
                help=f"{count} (after --start). Default: all.",
            ),
            click.option(
                "--start",
                type=click.IntRange(min=0),
                default=0,
                show_default=True,
                help="Index of the first point.",
            ),
        ]
    return compose(*options)


def domain_option(clipped: str) -> Callable[[F], F]:
    """``--domain LOW HIGH``, checked to be an interval; ``clipped`` says what the command does with it."""
    return click.option(
        "--domain",
        nargs=2,
        type=float,
        default=(0.0, 1.0),
        show_default=True,
        callback=check_domain,
        help=f"Valid input range LOW HIGH; {clipped}",
    )


def solver_option(what: str = "MILP solver") -> Callable[[F], F]:
    """``--solver``: the name of a :class:`faithverify.bounds.milp.Solver`."""
    return click.option(
        "--solver",
        type=click.Choice([s.value for s in Solver]),
        default="auto",
        show_default=True,
        help=f"{what}. auto: Gurobi where its license accepts the model, HiGHS otherwise.",
    )


def timeout_option(help: str, *, dest: str = "timeout", at_least: float | None = None) -> Callable[[F], F]:
    """``--timeout`` in seconds, default 60: positive, or ``>= at_least`` where that is given."""
    seconds = FiniteFloatRange(min=0, min_open=True) if at_least is None else FiniteFloatRange(min=at_least)
    return click.option("--timeout", dest, type=seconds, default=60.0, show_default=True, help=help)


def attack_options(seed: str) -> Callable[[F], F]:
    """``--attack-steps``, ``--restarts`` and ``--seed`` of the PGD attack that finds EmpLB."""
    return compose(
        click.option(
            "--attack-steps",
            type=click.IntRange(min=0),
            default=_PGD.steps,
            show_default=True,
            help="Steps of each EmpLB attack run (APGD step schedule, one run per class, sign and restart).",
        ),
        click.option(
            "--restarts",
            type=click.IntRange(min=1),
            default=_PGD.restarts,
            show_default=True,
            help="EmpLB attack runs per objective (the first from x0, the rest random). Points headed for "
            "the refinement stage get 8 restarts of 200 steps.",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help=seed),
    )


def executor_options(jobs_help: str) -> Callable[[F], F]:
    """``--jobs`` and ``--ray`` (as ``ray_address``): where the expensive tasks run (faithverify.executors)."""
    from faithverify.executors import RAY_OPTION_HELP

    return compose(
        click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help=jobs_help),
        click.option("--ray", "ray_address", metavar="ADDRESS", default=None, help=RAY_OPTION_HELP),
    )


def summary_options(func: F) -> F:
    """``--json`` (as ``as_json``) and ``--csv`` (as ``csv_path``) for the summary table of a results file."""
    return compose(
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table."),
        click.option(
            "--csv",
            "csv_path",
            type=click.Path(path_type=Path),
            default=None,
            help="Also write the summary table as CSV here.",
        ),
    )(func)


def quiet_option(help: str = "No progress bar.") -> Callable[[F], F]:
    return click.option("--quiet", is_flag=True, help=help)
