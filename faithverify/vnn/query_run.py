"""What ``faithverify-vnnlib verify`` does with a query (:mod:`faithverify.vnn.solver_cli` is the command line,
kept free of torch so that ``--help``, ``--name`` and ``supports`` answer at once): read the query and its
networks, build the engine's problem, decide it, print the verdict line and the assignment."""

from __future__ import annotations

import copy
import dataclasses
import re
import sys
from pathlib import Path

import click
import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from faithverify.bounds.softmax import float_margin
from faithverify.errors import FaithverifyError, ModelLoadError, UnsupportedOperatorError
from faithverify.network import AffineOp
from faithverify.onnx_io import LoadedModel, load_model, load_model_proto, run_onnxruntime
from faithverify.onnx_io.layers import ConvertedModel, Reshape
from faithverify.vnn.engine import Outcome, Problem, ProblemNetwork, verify
from faithverify.vnn.solver_cli import ELEMENT_TYPES, EXIT_INTERNAL, INPUTS, _fail
from faithverify.vnn.vnnlib import VnnlibError, VnnlibUnsupported, read_text
from faithverify.vnn.vnnlib2 import Network, Query, parse_query, parse_vnnlib1_query


class _Unknown(Exception):
    """A well-formed question the engine does not decide: answered ``unknown`` with this reason."""


def _networks(declared: list[Network], given: tuple[str, ...], version: str) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for item in given:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            _fail(f"--network takes NAME=PATH, got {item!r}")
        if name in paths:
            _fail(f"--network {name} is given twice")
        paths[name] = Path(path)
    if version == "1.0":  # the file names no network: the one --network, whatever its name
        if len(paths) != 1:
            _fail(f"a VNN-LIB 1.0 query is over one network; {len(paths)} --network options given")
        return {declared[0].name: next(iter(paths.values()))}
    names = [n.name for n in declared if not n.equal_to]
    missing = [n for n in names if n not in paths]
    extra = [n for n in paths if n not in names]
    if missing:
        _fail(f"no --network for the declared network(s) {', '.join(missing)}")
    if extra:
        _fail(f"--network {', '.join(extra)}: no such network is declared (declared: {', '.join(names)})")
    for net in declared:  # `(equal-to M)`: the very same network as M
        if net.equal_to:
            paths[net.name] = paths[net.equal_to]
    return paths


def _assignment(query: Query, x: np.ndarray, y: np.ndarray) -> str:
    lines = []
    slices = query.output_slices()
    for net in query.networks:
        dims = "[" + ",".join(str(d) for d in net.input_shape) + "]"
        lines.append(f"{net.input_name} {net.dtype} {dims}")
        lines += [repr(float(v)) for v in query.network_input(net.name, x)]
        dims = "[" + ",".join(str(d) for d in net.output_shape) + "]"
        lines.append(f"{net.output_name} {net.dtype} {dims}")
        lines += [repr(float(v)) for v in y[slices[net.name]]]
    return "\n".join(lines)


def _version(text: str) -> str:
    """``2.0`` for a file that states ``(vnnlib-version <2.0>)``; 1.0 files state no version."""
    match = re.search(r"\(\s*vnnlib-version\s*<([^>]*)>", text)
    return match.group(1).strip() if match else "1.0"


def _load(path: Path, net: Network) -> LoadedModel:
    """The network as the engine's model; a valid network the loader cannot convert is :class:`_Unknown`."""
    try:
        model = load_model(path, any_shape=True)
    except UnsupportedOperatorError as exc:
        raise _Unknown(str(exc)) from None
    except ModelLoadError as exc:
        # A file onnxruntime runs is a valid network, only outside what we convert: unknown, not an error.
        try:
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception:
            _fail(str(exc))
        raise _Unknown(str(exc)) from None
    if int(np.prod(model.input_shape)) != net.n_inputs or model.num_classes != net.n_outputs:
        _fail(
            f"network {net.name}: {path} takes {int(np.prod(model.input_shape))} input values and gives "
            f"{model.num_classes} outputs; the query declares {list(net.input_shape)} and "
            f"{list(net.output_shape)}"
        )
    if net.dtype not in ELEMENT_TYPES:
        raise _Unknown(
            f"network {net.name}: element type {net.dtype} is not supported ({', '.join(ELEMENT_TYPES)})"
        )
    elem = model.onnx_model.graph.input[0].type.tensor_type.elem_type
    if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        raise _Unknown(f"network {net.name}: {path} computes in {onnx.TensorProto.DataType.Name(elem)}")
    return model


def _reading(model: LoadedModel, index: np.ndarray, n_inputs: int) -> LoadedModel:
    """``model`` on the query's whole input vector: a selection (an exact 0/1 Linear) picks its own inputs."""
    select = nn.Linear(n_inputs, len(index), bias=False, dtype=torch.float64)
    with torch.no_grad():
        select.weight.zero_()
        select.weight[torch.arange(len(index)), torch.from_numpy(index)] = 1.0
    shape = model.module.input_shape
    head: list[nn.Module] = [select] + ([Reshape(shape)] if len(shape) != 1 else [])
    shapes = [(n_inputs,)] + ([(len(index),)] if len(shape) != 1 else []) + model.module.shapes
    module = ConvertedModel([*head, *model.module.layers], shapes).float()
    return dataclasses.replace(model, module=module, input_shape=(n_inputs,))


def _identity(n_inputs: int) -> LoadedModel:
    """The input vector itself as a network (one exact identity layer), for rows that read inputs."""
    from onnx import helper, numpy_helper

    eye = numpy_helper.from_array(np.eye(n_inputs, dtype=np.float32), "eye")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "eye"], ["y"])],
        "inputs",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, n_inputs])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, n_inputs])],
        [eye],
    )
    return load_model_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def _read(query_file: Path, networks: tuple[str, ...]) -> tuple[Query, dict[str, Path]]:
    """The query and the network files, or an error exit; :class:`_Unknown` for a query outside the fragment."""
    if not query_file.exists():
        _fail(f"{query_file}: no such file")
    if not query_file.is_file():
        _fail(f"{query_file}: not a file")
    try:
        text = read_text(query_file)
        if not text.strip():
            _fail(f"{query_file}: the file is empty, not a VNN-LIB query")
        version = _version(text)
        if version == "1.0":
            # The shapes come from the network, so the one --network file is read first.
            query = parse_vnnlib1_query(text, str(query_file), "N", unbounded=True)
        elif version == "2.0":
            query = parse_query(text, source=str(query_file), unbounded=True)
        else:
            raise VnnlibUnsupported(str(query_file), None, f"VNN-LIB version {version} is not supported")
    except VnnlibUnsupported as exc:
        raise _Unknown(str(exc)) from None
    except VnnlibError as exc:
        _fail(str(exc))
    return query, _networks(query.networks, networks, version)


def _problem(query: Query, paths: dict[str, Path]) -> Problem:
    models = {net.name: _load(paths[net.name], net) for net in query.networks}
    problem_networks = []
    for net in query.networks:
        model = models[net.name]
        ops = model.network.ops
        # The bounds start from an affine layer: a network that begins with a ReLU (or is one) reads its
        # input through an exact identity selection first.
        if not query.shared_input or not ops or not isinstance(ops[0], AffineOp):
            model = _reading(model, query.network_input(net.name, np.arange(query.n_inputs)), query.n_inputs)
        problem_networks.append(ProblemNetwork(net.name, model, model.softmax_stripped))
    if query.reads_inputs:
        problem_networks.append(ProblemNetwork(INPUTS, _identity(query.n_inputs), False))

    def reference(x: np.ndarray) -> np.ndarray:
        """What the query's rows read, from onnxruntime on the query's own files (then the input itself)."""
        outs = []
        for net in query.networks:
            model = models[net.name]
            own = query.network_input(net.name, x).reshape(len(x), *model.input_shape).astype(np.float32)
            outs.append(run_onnxruntime(paths[net.name], own, batched=model.batched).reshape(len(x), -1))
        if query.reads_inputs:
            outs.append(x.astype(np.float32).astype(np.float64))
        return np.concatenate(outs, axis=1)

    # Bounds read the closure of strict rows (sound for unsat); a counterexample must meet them strictly.
    unsafe = [(c.a, c.b) for c in query.unsafe]
    witness = [(c.a, c.witness_bounds()) for c in query.unsafe]
    boxes = [_clipped(b.lower, b.upper) for b in query.input_boxes]
    return Problem(problem_networks, boxes, unsafe, reference, witness)


def _unbounded(query: Query) -> bool:
    """Whether some input has an infinite bound (then only a counterexample can be reported)."""
    return any(not (np.isfinite(b.lower).all() and np.isfinite(b.upper).all()) for b in query.input_boxes)


def _clipped(lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A finite box inside an unbounded one, to search for a counterexample in (it lies in the real region);
    the finite sides are kept, the infinite ones put well beyond them."""
    finite = np.concatenate([lower[np.isfinite(lower)], upper[np.isfinite(upper)], [1.0]])
    radius = 10.0 * float(np.abs(finite).max())
    lo = np.where(np.isfinite(lower), lower, np.minimum(-radius, upper - radius))
    hi = np.where(np.isfinite(upper), upper, np.maximum(radius, lower + radius))
    return lo, hi


def _exact_check(query: Query, problem: Problem, x: np.ndarray) -> bool:
    """For networks over the reals, onnxruntime's float32 outputs are not the semantics: the witness must
    also hold in float64 with the margin the bounds allow for float rounding (``float_margin``: a logit's
    worth per unit of ``||a||_1`` plus a relative part), so no rounding artefact is reported as a
    counterexample."""
    if all(net.dtype != "real" for net in query.networks):
        return True
    xs = torch.from_numpy(x.astype(np.float64)[None])
    parts = []
    with torch.no_grad():
        for pn in problem.networks:
            if pn.name == INPUTS:
                parts.append(xs)
                continue
            module = copy.deepcopy(pn.model.module).double()
            z = module(xs.reshape(1, *pn.model.input_shape)).reshape(1, -1)
            parts.append(torch.softmax(z, dim=-1) if pn.probabilities else z)
    y = torch.cat(parts, dim=1)[0].numpy()
    for c in query.unsafe:
        margin = float_margin(c.b, np.abs(c.a).sum(axis=1))  # type: ignore[arg-type]  # one weight per row
        if np.all(c.a @ y <= c.b - margin):
            return True
    return False


def run_verify(query_file: Path, networks: tuple[str, ...], timeout: float) -> None:
    """Decide a VNN-LIB query: sat (with the assignment), unsat, unknown or timed-out, on stdout."""
    try:
        query, paths = _read(query_file, networks)
        problem = _problem(query, paths)
        answer = verify(problem, timeout)
        if answer.outcome is not Outcome.SAT and _unbounded(query):
            # The search ran in a clipped box: its unsat or time-out says nothing about the whole region.
            raise _Unknown(
                f"{answer.outcome.value} on a clipped box: some inputs are unbounded, so only a "
                "counterexample can be reported"
            )
    except _Unknown as exc:
        click.echo(f"unknown: {exc}", err=True)
        click.echo(Outcome.UNKNOWN.value)
        return
    except FaithverifyError as exc:  # the engine refuses the problem: no guess
        click.echo(f"unknown: {exc}", err=True)
        click.echo(Outcome.UNKNOWN.value)
        return
    except Exception as exc:  # a bug: still a verdict line, and the exit code says it was a failure
        click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
        click.echo(Outcome.UNKNOWN.value)
        sys.exit(EXIT_INTERNAL)
    if answer.reason:
        click.echo(f"{answer.outcome.value} ({answer.stage}): {answer.reason}", err=True)
    if answer.outcome is Outcome.SAT and answer.x is not None and answer.y is not None:
        if not _exact_check(query, problem, answer.x):
            click.echo("unknown: the counterexample holds in float32 but not in exact arithmetic", err=True)
            click.echo(Outcome.UNKNOWN.value)
            return
        click.echo("sat")
        click.echo(_assignment(query, answer.x, answer.y))
    elif answer.outcome is Outcome.TIMEOUT:
        click.echo("timed-out")
    else:
        click.echo(answer.outcome.value)
