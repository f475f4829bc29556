"""VNN-LIB 2.0 queries over one or several networks: reading (through the PyPI ``vnnlib`` parser) and writing.

VNN-LIB 2.0 (the VNNLIB-Standard's query language, ``syntax/grammar.cf`` and the "Query Language" chapter of
its document) declares each network's interface and then asserts constraints on tensor elements::

    (vnnlib-version <2.0>)
    (declare-network teacher
        (declare-input  Xt float32 [1,784])
        (declare-output Yt float32 [1,10]))
    (declare-network student
        (declare-input  Xs float32 [1,784])
        (declare-output Ys float32 [1,10]))
    (assert (and (== Xs[0,0] Xt[0,0]) ...))                          ; one input fed to both networks
    (assert (and (>= Xt[0,0] 0.0) (<= Xt[0,0] 0.05) ...))            ; the input box
    (assert (or (>= (- Yt[0,0] Ys[0,0]) 0.2) (>= (- Ys[0,0] Yt[0,0]) 0.2) ...))   ; the unsafe set

Element indices are zero-based and complete (``X[0,2]``); numbers are plain decimals (the grammar has no
exponent); comparisons are ``<= >= < > == !=`` and connectives ``and`` / ``or``. Which ONNX file a declared
network is comes from the command line of the solver, not from the query.

The data model (:class:`Query`) supports what faithverify can verify: one input and one output per network,
every network reading the same input (each element of network k's input declared ``==`` to an element of the
first network's input), box bounds on that input (or a disjunction of boxes), and the unsafe set as a
disjunction of conjunctions of linear constraints over the outputs of all networks, concatenated in
declaration order (each output flattened row-major).

Parsing, scope and type checking are the ``vnnlib`` package's (the standard's reference parser, C++ behind
pybind11); this module reads its typed AST. Two things to know about that parser (version 1.0.2): it rejects
numbers with an exponent (as the grammar does), and it types the constant in ``(* 2.0 X[0,0])`` against the
element type, which fails for ``Real`` variables; declare ``float32`` (as the writer does) to scale terms.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faithverify.vnn.vnnlib import (
    Box,
    Conjunct,
    Dnf,
    Property,
    VnnlibError,
    and_dnf,
    assemble,
    format_box,
    format_number,
    format_term,
    or_dnf,
    read_text,
    rows_of_comparison,
    write_text_atomic,
)

VERSION = "2.0"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Network:
    """A declared network: one input tensor and one output tensor, with their names, shapes and type."""

    name: str
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    output_shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for what in (self.name, self.input_name, self.output_name):
            if not _NAME.fullmatch(what):
                raise ValueError(f"{what!r} is not a VNN-LIB name (a letter, then letters, digits, _)")

    @property
    def n_inputs(self) -> int:
        return int(np.prod(self.input_shape, dtype=np.int64))

    @property
    def n_outputs(self) -> int:
        return int(np.prod(self.output_shape, dtype=np.int64))


@dataclass(frozen=True)
class Query:
    """A multi-network query: the networks, their shared input's boxes, the unsafe set over their outputs.

    ``input_boxes`` are over the shared input, flattened row-major (every network reads the same values).
    ``unsafe`` rows are over the concatenated flattened outputs, networks in declaration order: the first
    network's outputs are ``y[0:m0]``, the second's ``y[m0:m0+m1]`` and so on (:meth:`output_slices`).
    """

    networks: list[Network]
    input_boxes: list[Box]
    unsafe: list[Conjunct]
    _property: Property = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.networks:
            raise ValueError("a query declares at least one network")
        names = [n.name for n in self.networks]
        variables = [v for n in self.networks for v in (n.input_name, n.output_name)]
        if len(set(names + variables)) != len(names) + len(variables):
            raise ValueError("network and variable names must be unique in a query")
        if len({n.n_inputs for n in self.networks}) != 1:
            raise ValueError("the networks of a query share one input, so their inputs must have one size")
        prop = Property(self.input_boxes, self.unsafe)
        if prop.n_inputs != self.networks[0].n_inputs:
            raise ValueError(f"the input boxes have {prop.n_inputs} values, the networks {self.n_inputs}")
        if prop.n_outputs != self.n_outputs:
            raise ValueError(f"the unsafe set spans {prop.n_outputs} outputs, the networks {self.n_outputs}")
        object.__setattr__(self, "_property", prop)

    @property
    def n_inputs(self) -> int:
        return self.networks[0].n_inputs

    @property
    def n_outputs(self) -> int:
        return sum(n.n_outputs for n in self.networks)

    def output_slices(self) -> dict[str, slice]:
        """Where each network's outputs sit in the concatenated output vector."""
        slices, start = {}, 0
        for n in self.networks:
            slices[n.name] = slice(start, start + n.n_outputs)
            start += n.n_outputs
        return slices

    def is_unsafe(self, y: np.ndarray, tolerance: float = 0.0) -> bool:
        """Whether the concatenated outputs ``y`` lie in the unsafe set (rows relaxed by ``tolerance``)."""
        return self._property.is_unsafe(y, tolerance)


# ------------------------------------------------------------------------------------------------------------
# Reading


def _package() -> Any:
    try:
        import vnnlib
    except ImportError as exc:  # a dependency of faithverify, but say what is missing if it was removed
        raise VnnlibError("VNN-LIB 2.0", None, "reading VNN-LIB 2.0 needs the 'vnnlib' package") from exc
    return vnnlib


def _package_error(source: str, exc: Exception) -> VnnlibError:
    """The ``vnnlib`` parser's error (a JSON report or a one-line syntax error) as one :class:`VnnlibError`."""
    text = str(exc)
    try:
        report = json.loads(text)
        first = report["errors"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        match = re.search(r"line (\d+), column (\d+): '(.*)'", text)
        if match is None:
            return VnnlibError(source, None, text)
        token = match.group(3)
        hint = " (VNN-LIB 2.0 numbers are plain decimals, without an exponent)" if token[:1] in "eE" else ""
        near = f" near {token!r}" if token else " (unexpected end: unbalanced parentheses?)"
        return VnnlibError(
            source, int(match.group(1)), f"syntax error at column {match.group(2)}{near}{hint}"
        )
    more = f" (and {len(report['errors']) - 1} more errors)" if len(report["errors"]) > 1 else ""
    detail = f"{first.get('message', 'error')} {first.get('offendingSymbol', '')!r}: {first.get('hint', '')}"
    return VnnlibError(source, first.get("line"), detail.strip() + more)


def _line_of(node: Any) -> int | None:
    """The first source line recorded under an AST node (only variables and literals carry one)."""
    line = getattr(node, "line", None)
    if isinstance(line, int):
        return line
    for child in node.children():
        found = _line_of(child)
        if found is not None:
            return found
    return None


def _declaration_lines(text: str, keyword: str) -> dict[str, int]:
    """Line of ``(keyword NAME`` for each NAME, for messages about declarations (which carry no line)."""
    lines: dict[str, int] = {}
    for match in re.finditer(rf"\(\s*{keyword}\s+([A-Za-z][A-Za-z0-9_]*)", text):
        lines.setdefault(match.group(1), text.count("\n", 0, match.start()) + 1)
    return lines


# The parser's element types that hold real numbers, by their VNN-LIB names ("Real" is the parser's Unknown).
_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "Unknown": "Real"}

_OPS = {
    "LessEqual": "<=",
    "LessThan": "<",
    "GreaterEqual": ">=",
    "GreaterThan": ">",
    "Equal": "==",
    "NotEqual": "!=",
}


class _Reader:
    def __init__(self, source: str, text: str, networks: list[Network], package: Any) -> None:
        self.source = source
        self.package = package
        self.networks = {n.name: k for k, n in enumerate(networks)}
        self.shapes = {(n.name, "Input"): n.input_shape for n in networks}
        self.shapes.update({(n.name, "Output"): n.output_shape for n in networks})
        offsets = np.cumsum([0] + [n.n_outputs for n in networks])
        self.out_offset = {n.name: int(offsets[k]) for k, n in enumerate(networks)}
        self.input_lines = _declaration_lines(text, "declare-input")

    def linear(self, comparison: Any) -> tuple[dict[tuple[str, str, int], float], float, int | None]:
        """``lhs - rhs`` of a comparison as coefficients keyed by (network, kind, flat index), constant, line."""
        line = _line_of(comparison)
        try:
            lhs, rhs = comparison.lhs.to_linear_expr(), comparison.rhs.to_linear_expr()
        except self.package.VNNLibException as exc:
            raise VnnlibError(self.source, line, str(exc)) from None
        coefs: dict[tuple[str, str, int], float] = {}
        for sign, expr in ((1.0, lhs), (-1.0, rhs)):
            for term in expr.terms:
                var = term.var
                kind = var.kind.name
                if kind not in ("Input", "Output"):
                    raise VnnlibError(
                        self.source, var.line, f"{var.name}: only inputs and outputs are supported"
                    )
                shape = self.shapes[(var.network_name, kind)]
                flat = int(np.ravel_multi_index(tuple(var.indices), shape)) if shape else 0
                key = (var.network_name, kind, flat)
                coefs[key] = coefs.get(key, 0.0) + sign * float(term.coeff)
        return coefs, float(lhs.constant) - float(rhs.constant), line

    def tie(self, comparison: Any, conjunctive: bool) -> tuple[tuple[str, int], tuple[str, int]] | None:
        """``(== A[i] B[j])`` between inputs of two networks: the two input elements, else None."""
        if type(comparison).__name__ != "Equal":
            return None
        coefs, const, line = self.linear(comparison)
        terms = [(k, c) for k, c in coefs.items() if c != 0.0]
        if const != 0.0 or len(terms) != 2 or any(k[1] != "Input" for k, _ in terms):
            return None
        (a, ca), (b, cb) = terms
        if a[0] == b[0] or ca != -cb:
            return None
        if not conjunctive:
            raise VnnlibError(self.source, line, "inputs of two networks declared equal inside a disjunction")
        return (a[0], a[2]), (b[0], b[2])


def _shape(values: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def parse_query(text: str, source: str = "<string>") -> Query:
    """Parse VNN-LIB 2.0 text into a :class:`Query`; ``source`` names it in error messages."""
    package = _package()
    try:
        parsed = package.parse_query_string(text)
    except package.VNNLibException as exc:
        raise _package_error(source, exc) from None
    net_lines = _declaration_lines(text, "declare-network")
    networks: list[Network] = []
    for net in parsed.networks:
        where = net_lines.get(net.name)
        if len(net.inputs) != 1 or len(net.outputs) != 1 or net.hidden:
            raise VnnlibError(
                source, where, f"network {net.name} must declare exactly one input and one output (no hidden)"
            )
        x, y = net.inputs[0], net.outputs[0]
        dtype = _DTYPES.get(x.dtype.name)
        if dtype is None or _DTYPES.get(y.dtype.name) != dtype:
            raise VnnlibError(
                source, where, f"network {net.name}: input and output must have one real element type"
            )
        networks.append(Network(net.name, x.name, _shape(x.shape), y.name, _shape(y.shape), dtype))
    if len({n.n_inputs for n in networks}) != 1:
        raise VnnlibError(source, None, "the networks' inputs differ in size, so they cannot read one input")
    reader = _Reader(source, text, networks, package)

    # First pass: the ties that make every network read the first network's input, and the other comparisons.
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def root(v: tuple[str, int]) -> tuple[str, int]:
        while parent.get(v, v) != v:
            v = parent[v]
        return v

    assertions: list[tuple[list[list[Any]], int | None]] = []
    for assertion in parsed.assertions:
        dnf = [list(conj) for conj in assertion.expr.to_dnf()]
        kept = []
        for conj in dnf:
            rest = []
            for comparison in conj:
                pair = reader.tie(comparison, conjunctive=len(dnf) == 1)
                if pair is None:
                    rest.append(comparison)
                else:
                    ra, rb = root(pair[0]), root(pair[1])
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)
            kept.append(rest)
        if any(kept):
            assertions.append((kept, _line_of(assertion.expr)))

    # Every input element of every network must be tied to exactly one element of the first network's input.
    first = networks[0]
    members: dict[tuple[str, int], list[int]] = {}
    for i in range(first.n_inputs):
        members.setdefault(root((first.name, i)), []).append(i)
    canonical: dict[str, np.ndarray] = {first.name: np.arange(first.n_inputs)}
    for net in networks[1:]:
        index = np.empty(net.n_inputs, dtype=np.int64)
        for i in range(net.n_inputs):
            found = members.get(root((net.name, i)), [])
            if len(found) != 1:
                label = f"{net.input_name}[{','.join(map(str, np.unravel_index(i, net.input_shape)))}]"
                problem = "is not declared equal to" if not found else "is declared equal to several of"
                raise VnnlibError(
                    source,
                    reader.input_lines.get(net.input_name),
                    f"input {label} of network {net.name} {problem} the inputs of {first.name}; only queries "
                    "whose networks read one input are supported",
                )
            index[i] = found[0]
        canonical[net.name] = index

    def rows(comparison: Any) -> Dnf:
        op = _OPS.get(type(comparison).__name__)
        coefs, const, line = reader.linear(comparison)
        if op is None or op == "!=":
            raise VnnlibError(source, line, f"comparison {op or type(comparison).__name__} is not supported")
        keyed: dict[tuple[str, int], float] = {}
        for (net_name, kind, flat), c in coefs.items():
            key = (
                ("X", int(canonical[net_name][flat]))
                if kind == "Input"
                else ("Y", reader.out_offset[net_name] + flat)
            )
            keyed[key] = keyed.get(key, 0.0) + c
        return [rows_of_comparison(op, keyed, const, line)]

    dnfs: list[tuple[Dnf, int | None]] = []
    for kept, line in assertions:
        dnf = or_dnf([and_dnf([rows(c) for c in conj], source, line) for conj in kept], source, line)
        dnfs.append((dnf, line))
    labels = (
        [
            f"{first.input_name}[{','.join(map(str, np.unravel_index(i, first.input_shape)))}]"
            for i in range(first.n_inputs)
        ]
        if first.input_shape
        else [first.input_name]
    )
    decl = reader.input_lines.get(first.input_name)
    boxes, unsafe = assemble(
        dnfs, first.n_inputs, sum(n.n_outputs for n in networks), source, labels, [decl] * first.n_inputs
    )
    return Query(networks, boxes, unsafe)


def read_query(path: str | Path) -> Query:
    """Read a VNN-LIB 2.0 query from a ``.vnnlib`` or ``.vnnlib.gz`` file."""
    return parse_query(read_text(path), source=str(path))


# ------------------------------------------------------------------------------------------------------------
# Writing


def _number(value: float) -> str:
    """A float64 as a plain decimal (2.0 has no exponent) that reads back to the same double."""
    return format_number(value, plain=True)


def _element(name: str, shape: tuple[int, ...], flat: int) -> str:
    if not shape:
        return name
    return f"{name}[{','.join(str(int(i)) for i in np.unravel_index(flat, shape))}]"


def _expression(terms: list[tuple[float, str]]) -> str:
    """A readable linear expression: ``v``, ``(- a b)`` for a difference, else ``(+ (* c v) ...)``."""
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    if len(terms) == 2 and sorted(c for c, _ in terms) == [-1.0, 1.0]:
        pos = next(v for c, v in terms if c == 1.0)
        neg = next(v for c, v in terms if c == -1.0)
        return f"(- {pos} {neg})"
    parts = [format_term(c, v, plain=True) for c, v in terms]
    return parts[0] if len(parts) == 1 else f"(+ {' '.join(parts)})"


def format_query(query: Query, comment: str | None = None) -> str:
    """The VNN-LIB 2.0 text of ``query``; ``comment`` lines go first, as ``;`` comments."""
    out: list[str] = []
    if comment:
        out += [f"; {line}".rstrip() for line in comment.splitlines()]
    out += [f"(vnnlib-version <{VERSION}>)", ""]
    for net in query.networks:
        out += [
            f"(declare-network {net.name}",
            f"    (declare-input {net.input_name} {net.dtype} [{','.join(map(str, net.input_shape))}])",
            f"    (declare-output {net.output_name} {net.dtype} [{','.join(map(str, net.output_shape))}])",
            ")",
        ]
    first = query.networks[0]
    x = [_element(first.input_name, first.input_shape, i) for i in range(first.n_inputs)]
    for net in query.networks[1:]:
        out += ["", f"; {net.name} reads the same input as {first.name}", "(assert (and"]
        out += [
            f"    (== {_element(net.input_name, net.input_shape, i)} {x[i]})" for i in range(net.n_inputs)
        ]
        out.append("))")

    out += ["", "; input region"]
    if len(query.input_boxes) == 1:
        out += ["(assert (and", *(f"    {r}" for r in format_box(query.input_boxes[0], x, plain=True)), "))"]
    else:
        out += [
            "(assert (or",
            *(f"    (and {' '.join(format_box(b, x, plain=True))})" for b in query.input_boxes),
            "))",
        ]

    y: list[str] = []
    for net in query.networks:
        y += [_element(net.output_name, net.output_shape, j) for j in range(net.n_outputs)]

    def row(a: np.ndarray, b: float) -> str:
        nz = np.flatnonzero(a)
        if nz.size == 0:
            raise ValueError("an output constraint without variables")
        # ">=" when it has fewer negative coefficients, or as many and a positive bound: (>= (- Yt Ys) 0.2).
        negative, positive = int(np.sum(a[nz] < 0)), int(np.sum(a[nz] > 0))
        if negative > positive or (negative == positive and b < 0):
            return f"(>= {_expression([(float(-a[j]), y[j]) for j in nz])} {_number(-b)})"
        return f"(<= {_expression([(float(a[j]), y[j]) for j in nz])} {_number(b)})"

    def conjunct(c: Conjunct) -> list[str]:
        return [row(c.a[k], float(c.b[k])) for k in range(len(c.b))]

    out += ["", "; unsafe set"]
    if len(query.unsafe) == 1:
        rows = conjunct(query.unsafe[0])
        if rows:
            out += ["(assert (and", *(f"    {r}" for r in rows), "))"]
    else:
        out.append("(assert (or")
        for c in query.unsafe:
            rows = conjunct(c)
            if not rows:
                raise ValueError("an empty conjunct (any output) inside a disjunction cannot be written")
            out.append(f"    {rows[0]}" if len(rows) == 1 else f"    (and {' '.join(rows)})")
        out.append("))")
    return "\n".join(out) + "\n"


def write_query(path: str | Path, query: Query, comment: str | None = None) -> None:
    """Write ``query`` as VNN-LIB 2.0 (``.gz`` compressed), atomically."""
    write_text_atomic(path, format_query(query, comment))


__all__ = [
    "VERSION",
    "Network",
    "Query",
    "format_query",
    "parse_query",
    "read_query",
    "write_query",
]
