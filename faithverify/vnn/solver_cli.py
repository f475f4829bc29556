"""``faithverify-vnnlib``: the VNN-LIB 2.0 solver command-line interface (the standard's "Solver Command-line
Interface" chapter), so that any tool that drives VNN-LIB 2.0 solvers can drive faithverify::

    faithverify-vnnlib --name
    faithverify-vnnlib --version
    faithverify-vnnlib verify query.vnnlib --network teacher=T.onnx --network student=S.onnx [--timeout 60]
    faithverify-vnnlib supports --onnx-operators

``verify`` prints one line, ``sat`` / ``unsat`` / ``unknown`` / ``timed-out``; after ``sat`` the assignment of
every declared variable, in declaration order, each as ``<name> <type> <dims>`` followed by its values one per
line (row-major). Logs and reasons go to stderr. Missing or extra ``--network`` files, or an ONNX file whose
shapes differ from the declaration, are errors (exit code 2); a construct or operator outside what the engine
handles is answered ``unknown`` with the reason on stderr, never a guess.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from faithverify import __version__
from faithverify.errors import FaithverifyError, UnsupportedOperatorError
from faithverify.onnx_io import load_model, run_onnxruntime
from faithverify.vnn.engine import Outcome, Problem, ProblemNetwork, verify
from faithverify.vnn.vnnlib import VnnlibError
from faithverify.vnn.vnnlib2 import Network, read_query

NAME = "faithverify"
EXIT_ERROR = 2

# What the engine handles, reported honestly by `supports` (the standard's capability names).
OPSET_RANGE = ("7", "21")
ELEMENT_TYPES = ("float32", "float64", "real")  # bounds hold for real arithmetic plus a stated float32 margin
VNNLIB_VERSIONS = ("1.0", "2.0")  # 1.0 through `faithverify bench`, 2.0 through this command
CAPABILITIES: dict[str, tuple[str, ...]] = {
    "--onnx-opset-versions": OPSET_RANGE,
    "--onnx-element-types": ELEMENT_TYPES,
    "--vnnlib-versions": VNNLIB_VERSIONS,
    "--hidden-node-theories": ("NH",),
    "--multiple-input-output-theories": ("SIO",),
    # Several networks are supported when they read one input (declared equal element by element).
    "--multiple-network-theories": ("SNET", "MNET"),
    "--multiple-node-comparison-theories": ("SNC", "MNC"),
    "--arithmetic-complexity-theories": ("BND", "OUTC", "LIN"),
    "--optimised-disjunctive-reasoning": ("false",),
    "--serialise-assignments": ("false",),
    "--unsat-proofs": ("false",),
}


def supported_operators() -> list[str]:
    """The ONNX operators the loader converts (from its own table, so the answer cannot drift)."""
    from faithverify.onnx_io.translate import SUPPORTED_OPERATORS

    return sorted(SUPPORTED_OPERATORS)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def _networks(declared: list[Network], given: tuple[str, ...]) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for item in given:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            _fail(f"--network takes NAME=PATH, got {item!r}")
        if name in paths:
            _fail(f"--network {name} is given twice")
        paths[name] = Path(path)
    names = [n.name for n in declared]
    missing = [n for n in names if n not in paths]
    extra = [n for n in paths if n not in names]
    if missing:
        _fail(f"no --network for the declared network(s) {', '.join(missing)}")
    if extra:
        _fail(f"--network {', '.join(extra)}: no such network is declared (declared: {', '.join(names)})")
    return paths


def _assignment(declared: list[Network], x: np.ndarray, y: np.ndarray) -> str:
    lines, start = [], 0
    for net in declared:
        dims = "[" + ",".join(str(d) for d in net.input_shape) + "]"
        lines.append(f"{net.input_name} {net.dtype} {dims}")
        lines += [repr(float(v)) for v in x]
        part = y[start : start + net.n_outputs]
        start += net.n_outputs
        dims = "[" + ",".join(str(d) for d in net.output_shape) + "]"
        lines.append(f"{net.output_name} {net.dtype} {dims}")
        lines += [repr(float(v)) for v in part]
    return "\n".join(lines)


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
    """Decide a VNN-LIB 2.0 query: sat (with the assignment), unsat, unknown or timed-out."""
    if not query_file.is_file():
        _fail(f"{query_file}: no such file")
    try:
        parsed = read_query(query_file)
    except VnnlibError as exc:
        # Outside the fragment the engine handles (or malformed): no guess.
        click.echo(f"{exc}", err=True)
        click.echo(Outcome.UNKNOWN.value)
        return
    paths = _networks(parsed.networks, networks)
    query_networks = []
    for net in parsed.networks:
        try:
            model = load_model(paths[net.name])
        except UnsupportedOperatorError as exc:
            click.echo(f"{exc}", err=True)
            click.echo(Outcome.UNKNOWN.value)
            return
        except FaithverifyError as exc:
            _fail(str(exc))
        if int(np.prod(model.input_shape)) != net.n_inputs or model.num_classes != net.n_outputs:
            _fail(
                f"network {net.name}: {paths[net.name]} takes {list(model.input_shape)} and gives "
                f"{model.num_classes} outputs; the query declares {list(net.input_shape)} and {list(net.output_shape)}"
            )
        query_networks.append(ProblemNetwork(net.name, model, model.softmax_stripped))

    def reference(x: np.ndarray) -> np.ndarray:
        outs = []
        for net, qn in zip(parsed.networks, query_networks, strict=True):
            shaped = x.reshape(len(x), *qn.model.input_shape).astype(np.float32)
            outs.append(run_onnxruntime(str(paths[net.name]), shaped).reshape(len(x), -1))
        return np.concatenate(outs, axis=1)

    unsafe = [(c.a, c.b) for c in parsed.unsafe]
    boxes = [(b.lower, b.upper) for b in parsed.input_boxes]
    try:
        query = Problem(query_networks, boxes, unsafe, reference, unsafe)
        answer = verify(query, timeout)
    except FaithverifyError as exc:
        click.echo(f"{exc}", err=True)
        click.echo(Outcome.UNKNOWN.value)
        return
    if answer.reason:
        click.echo(f"{answer.outcome.value} ({answer.stage}): {answer.reason}", err=True)
    if answer.outcome is Outcome.SAT and answer.x is not None and answer.y is not None:
        click.echo("sat")
        click.echo(_assignment(parsed.networks, answer.x, answer.y))
    elif answer.outcome is Outcome.TIMEOUT:
        click.echo("timed-out")
    else:
        click.echo(answer.outcome.value)


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
