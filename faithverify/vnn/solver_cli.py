"""``faithverify-vnnlib``: the VNN-LIB 2.0 solver command-line interface (the standard's "Solver Command-line
Interface" chapter), so that any tool that drives VNN-LIB 2.0 solvers can drive faithverify::

    faithverify-vnnlib --name
    faithverify-vnnlib --version
    faithverify-vnnlib verify query.vnnlib --network teacher=T.onnx --network student=S.onnx [--timeout 60]
    faithverify-vnnlib supports --onnx-operators

``verify`` prints one line, ``sat`` / ``unsat`` / ``unknown`` / ``timed-out``; after ``sat`` the assignment of
every declared variable, in declaration order, each as ``<name> <type> <dims>`` followed by its values one per
line (row-major). Logs and reasons go to stderr. A VNN-LIB 1.0 file (no ``vnnlib-version``) is read too, over
one network (its ``--network`` may have any name).

A network may have any input and output shape (a tensor ``[3]`` without a batch axis is an ordinary input;
outputs of any shape are read flattened row-major), networks may read independent or shared inputs, and
constraints may mix inputs and outputs linearly. Bad input is an error (exit code 2, one ``error:`` line on
stderr, nothing on stdout): a malformed query, an unreadable ONNX file, missing or extra ``--network`` files,
or an ONNX file whose sizes differ from the declaration. A well-formed query outside what the engine decides
(an operator it cannot convert, a non-linear constraint, an unbounded input, ...) is answered ``unknown`` with
the reason on stderr, never a guess; an internal failure is ``unknown`` too, with exit code 3.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from faithverify import __version__

NAME = "faithverify"
EXIT_ERROR = 2
EXIT_INTERNAL = 3

# What the engine handles, reported honestly by `supports` (the standard's capability names).
OPSET_RANGE = ("7", "21")
# Bounds hold for real arithmetic plus a stated float32 margin (so for float32 and float64 evaluation too);
# float16 rounds more than that margin covers.
ELEMENT_TYPES = ("float32", "float64", "real")
VNNLIB_VERSIONS = ("1.0", "2.0")
CAPABILITIES: dict[str, tuple[str, ...]] = {
    "--onnx-opset-versions": OPSET_RANGE,
    "--onnx-element-types": ELEMENT_TYPES,
    "--vnnlib-versions": VNNLIB_VERSIONS,
    "--hidden-node-theories": ("NH",),
    "--multiple-input-output-theories": ("SIO",),
    # Several networks, reading shared or independent inputs; `equal-to` reuses the named network's file,
    # `isomorphic-to` networks come with their own file.
    "--multiple-network-theories": ("SNET", "MNET", "MENET", "MINET"),
    "--multiple-node-comparison-theories": ("SNC", "MNC"),
    "--arithmetic-complexity-theories": ("BND", "OUTC", "LIN"),
    "--optimised-disjunctive-reasoning": ("false",),
    "--serialise-assignments": ("false",),
    "--unsat-proofs": ("false",),
}
INPUTS = "inputs"  # the name of the identity network that exposes the input to constraints that read it


def supported_operators() -> list[str]:
    """The ONNX operators the loader converts (from its own table, so the answer cannot drift)."""
    from faithverify.onnx_io.translate import SUPPORTED_OPERATORS

    return sorted(SUPPORTED_OPERATORS)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_ERROR)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--name", "show_name", is_flag=True, help="Print the solver's name.")
@click.option("--version", "show_version", is_flag=True, help="Print the solver's version.")
@click.pass_context
def main(ctx: click.Context, show_name: bool, show_version: bool) -> None:
    """faithverify as a VNN-LIB 2.0 solver (verify, supports, --name, --version)."""
    if show_name:
        click.echo(NAME)
    if show_version:
        click.echo(__version__)
    if ctx.invoked_subcommand is None and not (show_name or show_version):
        click.echo(ctx.get_help())


@main.command("verify")
@click.argument("query_file", type=click.Path(path_type=Path))
@click.option("--network", "networks", multiple=True, help="NAME=PATH.onnx for each declared network.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True)
def verify_command(query_file: Path, networks: tuple[str, ...], timeout: float) -> None:
    """Decide a VNN-LIB query: sat (with the assignment), unsat, unknown or timed-out."""
    from faithverify.vnn.query_run import run_verify  # torch and the engine load only for a query

    run_verify(query_file, networks, timeout)


# The capability is written like an option (`supports --onnx-operators`): take it as a plain argument.
@main.command("supports", context_settings={"ignore_unknown_options": True})
@click.argument("capability")
def supports_command(capability: str) -> None:
    """Report a capability (e.g. --onnx-operators, --vnnlib-versions), as the standard lists them."""
    if capability == "--onnx-operators":
        click.echo("\n".join(supported_operators()))
        return
    if capability not in CAPABILITIES:
        known = ", ".join(["--onnx-operators", *CAPABILITIES])
        _fail(f"unknown capability {capability!r}; known: {known}")
    click.echo("\n".join(CAPABILITIES[capability]))


if __name__ == "__main__":
    main()
