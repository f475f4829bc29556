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
    VnnlibUnsupported,
    and_dnf,
    assemble,
    format_box,
    format_number,
    format_term,
    or_dnf,
    read_text,
    read_v1_assertions,
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
    equal_to: str = ""  # `(equal-to M)`: the very same network as the earlier declared M (one ONNX file)

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
    """A multi-network query: the networks, the boxes of the query's input, the unsafe set over their outputs.

    The query's input is a vector: by default (``input_index`` None) every network reads all of it, flattened
    row-major (the networks' inputs are declared equal element by element). Otherwise ``input_index[name][i]``
    is where element ``i`` of that network's flattened input sits in it: networks with independent inputs read
    disjoint parts, tied elements share an entry. ``input_boxes`` are over that vector.

    ``unsafe`` rows are over the concatenated flattened outputs, networks in declaration order: the first
    network's outputs are ``y[0:m0]``, the second's ``y[m0:m0+m1]`` and so on (:meth:`output_slices`); when
    ``reads_inputs``, the query's input vector follows them (constraints across inputs, or mixing inputs and
    outputs), so rows are ``a @ [y, x] <= b``.
    """

    networks: list[Network]
    input_boxes: list[Box]
    unsafe: list[Conjunct]
    input_index: dict[str, np.ndarray] | None = None
    reads_inputs: bool = False
    _property: Property = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.networks:
            raise ValueError("a query declares at least one network")
        names = [n.name for n in self.networks]
        variables = [v for n in self.networks for v in (n.input_name, n.output_name)]
        if len(set(names + variables)) != len(names) + len(variables):
            raise ValueError("network and variable names must be unique in a query")
        prop = Property(self.input_boxes, self.unsafe)
        if self.input_index is None:
            if len({n.n_inputs for n in self.networks}) != 1:
                raise ValueError(
                    "the networks of a query share one input, so their inputs must have one size"
                )
            if prop.n_inputs != self.networks[0].n_inputs:
                raise ValueError(f"the input boxes have {prop.n_inputs} values, the networks {self.n_inputs}")
        else:
            for net in self.networks:
                index = self.input_index[net.name]
                if index.shape != (net.n_inputs,) or np.any(index < 0) or np.any(index >= prop.n_inputs):
                    raise ValueError(f"the input index of network {net.name} does not fit the input boxes")
        width = self.n_outputs + (prop.n_inputs if self.reads_inputs else 0)
        if prop.n_outputs != width:
            raise ValueError(f"the unsafe set spans {prop.n_outputs} values; the networks give {width}")
        object.__setattr__(self, "_property", prop)

    @property
    def n_inputs(self) -> int:
        """The size of the query's input vector."""
        return int(self.input_boxes[0].size)

    @property
    def n_outputs(self) -> int:
        return sum(n.n_outputs for n in self.networks)

    @property
    def shared_input(self) -> bool:
        """Whether every network reads the whole input vector, in order."""
        if self.input_index is None:
            return True
        return all(np.array_equal(self.input_index[n.name], np.arange(self.n_inputs)) for n in self.networks)

    def network_input(self, name: str, x: np.ndarray) -> np.ndarray:
        """Network ``name``'s flattened input taken from the query's input vectors ``x [..., n_inputs]``."""
        return x if self.input_index is None else x[..., self.input_index[name]]

    def output_slices(self) -> dict[str, slice]:
        """Where each network's outputs sit in the concatenated output vector."""
        slices, start = {}, 0
        for n in self.networks:
            slices[n.name] = slice(start, start + n.n_outputs)
            start += n.n_outputs
        return slices

    def is_unsafe(self, y: np.ndarray, tolerance: float = 0.0) -> bool:
        """Whether the concatenated outputs ``y`` (then the input, when ``reads_inputs``) lie in the unsafe set
        (rows relaxed by ``tolerance``)."""
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
        hint = (
            " (VNN-LIB 2.0 numbers are plain decimals, without an exponent)"
            if token[:1] in ("e", "E")
            else ""
        )
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
_DTYPES = {
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "Real": "real",
    "Unknown": "real",
}


def _type_name(name: str) -> str:
    """The parser's element type name (``F32``, ``I64``, ``BF16``, ``Real``) as VNN-LIB writes it."""
    match = re.fullmatch(r"(BF|F|I|U|C)(\d+)", name)
    if match is None:
        return name.lower()
    kind = {"BF": "bfloat", "F": "float", "I": "int", "U": "uint", "C": "complex"}[match.group(1)]
    return f"{kind}{match.group(2)}"


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
        except self.package.VNNLibException as exc:  # a well-typed non-linear term: the POLY theory
            raise VnnlibUnsupported(self.source, line, str(exc)) from None
        coefs: dict[tuple[str, str, int], float] = {}
        for sign, expr in ((1.0, lhs), (-1.0, rhs)):
            for term in expr.terms:
                var = term.var
                kind = var.kind.name
                if kind not in ("Input", "Output"):
                    raise VnnlibUnsupported(
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
            raise VnnlibUnsupported(
                self.source, line, "inputs of two networks declared equal inside a disjunction"
            )
        return (a[0], a[2]), (b[0], b[2])


def _shape(values: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _label(name: str, shape: tuple[int, ...], flat: int) -> str:
    return f"{name}[{','.join(map(str, np.unravel_index(flat, shape)))}]" if shape else name


def parse_query(text: str, source: str = "<string>", unbounded: bool = False) -> Query:
    """Parse VNN-LIB 2.0 text into a :class:`Query`; ``source`` names it in error messages.

    Raises :class:`VnnlibError` for a malformed query and :class:`VnnlibUnsupported` (a subclass) for a
    well-formed one outside what faithverify decides. An input without a lower or upper bound is one of those,
    unless ``unbounded`` (the box then has an infinite side).
    """
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
            raise VnnlibUnsupported(
                source, where, f"network {net.name} must declare exactly one input and one output (no hidden)"
            )
        x, y = net.inputs[0], net.outputs[0]
        dtype = _DTYPES.get(x.dtype.name)
        if dtype is None or _DTYPES.get(y.dtype.name) is None:
            raise VnnlibUnsupported(
                source,
                where,
                f"network {net.name}: element types {_type_name(x.dtype.name)} -> "
                f"{_type_name(y.dtype.name)}; only real and "
                "floating-point inputs and outputs are supported",
            )
        networks.append(
            Network(net.name, x.name, _shape(x.shape), y.name, _shape(y.shape), dtype, net.equal_to or "")
        )
    reader = _Reader(source, text, networks, package)

    # First pass: the ties between inputs of different networks (one input element read by several), and the
    # other comparisons.
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def root(v: tuple[str, int]) -> tuple[str, int]:
        while parent.get(v, v) != v:
            v = parent[v]
        return v

    order = {n.name: k for k, n in enumerate(networks)}
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
                    if ra != rb:  # the earlier network's element is the class's representative
                        first, second = sorted((ra, rb), key=lambda v: (order[v[0]], v[1]))
                        parent[second] = first
            kept.append(rest)
        if any(kept):
            assertions.append((kept, _line_of(assertion.expr)))

    # The query's input vector: one entry per class of tied elements, in declaration order.
    slot: dict[tuple[str, int], int] = {}
    labels: list[str] = []
    lines: list[int | None] = []
    input_index: dict[str, np.ndarray] = {}
    for net in networks:
        index = np.empty(net.n_inputs, dtype=np.int64)
        for i in range(net.n_inputs):
            r = root((net.name, i))
            if r not in slot:
                slot[r] = len(labels)
                labels.append(_label(net.input_name, net.input_shape, i))
                lines.append(reader.input_lines.get(net.input_name))
            index[i] = slot[r]
        input_index[net.name] = index

    def rows(comparison: Any) -> Dnf:
        op = _OPS.get(type(comparison).__name__)
        coefs, const, line = reader.linear(comparison)
        if op is None or op == "!=":
            raise VnnlibUnsupported(
                source, line, f"comparison {op or type(comparison).__name__} is not supported"
            )
        keyed: dict[tuple[str, int], float] = {}
        for (net_name, kind, flat), c in coefs.items():
            key = (
                ("X", int(input_index[net_name][flat]))
                if kind == "Input"
                else ("Y", reader.out_offset[net_name] + flat)
            )
            keyed[key] = keyed.get(key, 0.0) + c
        return [rows_of_comparison(op, keyed, const, line, keep_strict=True)]

    dnfs: list[tuple[Dnf, int | None]] = []
    for kept, line in assertions:
        dnf = or_dnf([and_dnf([rows(c) for c in conj], source, line) for conj in kept], source, line)
        dnfs.append((dnf, line))
    n_outputs = sum(n.n_outputs for n in networks)
    boxes, unsafe = assemble(
        dnfs, len(labels), n_outputs, source, labels, lines, mixed=True, unbounded=unbounded
    )
    reads_inputs = unsafe[0].a.shape[1] != n_outputs
    shared = all(np.array_equal(input_index[n.name], np.arange(len(labels))) for n in networks)
    return Query(networks, boxes, unsafe, None if shared else input_index, reads_inputs)


def parse_vnnlib1_query(
    text: str,
    source: str,
    name: str,
    input_shape: tuple[int, ...] | None = None,
    output_shape: tuple[int, ...] | None = None,
    unbounded: bool = False,
) -> Query:
    """A VNN-LIB 1.0 file (``X_i``, ``Y_j`` over one network's flattened input and output) as a one-network
    :class:`Query` on network ``name``; the shapes, when given, must hold as many values as are declared."""
    dnfs, n_in, n_out, input_line = read_v1_assertions(text, source)
    for what, shape, n in (("input", input_shape, n_in), ("output", output_shape, n_out)):
        if shape is not None and int(np.prod(shape, dtype=np.int64)) != n:
            raise VnnlibError(
                source,
                None,
                f"the file declares {n} {what} variables; the network's {what} has {list(shape)}",
            )
    labels = [f"X_{i}" for i in range(n_in)]
    boxes, unsafe = assemble(dnfs, n_in, n_out, source, labels, input_line, mixed=True, unbounded=unbounded)
    net = Network(name, "X", input_shape or (n_in,), "Y", output_shape or (n_out,), "real")
    return Query([net], boxes, unsafe, None, unsafe[0].a.shape[1] != n_out)


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
            *([f"    (equal-to {net.equal_to})"] if net.equal_to else []),
            f"    (declare-input {net.input_name} {net.dtype} [{','.join(map(str, net.input_shape))}])",
            f"    (declare-output {net.output_name} {net.dtype} [{','.join(map(str, net.output_shape))}])",
            ")",
        ]
    # Each entry of the query's input is named by the first element that reads it; the others are tied to it.
    x: list[str] = [""] * query.n_inputs
    for net in query.networks:
        index = query.network_input(net.name, np.arange(query.n_inputs))
        ties = []
        for i, k in enumerate(index.tolist()):
            element = _element(net.input_name, net.input_shape, i)
            if x[k]:
                ties.append(f"    (== {element} {x[k]})")
            else:
                x[k] = element
        if ties:
            out += ["", f"; inputs of {net.name} read by an earlier network too", "(assert (and", *ties, "))"]

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
    if query.reads_inputs:
        y += x

    def row(a: np.ndarray, b: float, strict: bool) -> str:
        nz = np.flatnonzero(a)
        if nz.size == 0:
            raise ValueError("an output constraint without variables")
        # ">=" when it has fewer negative coefficients, or as many and a positive bound: (>= (- Yt Ys) 0.2).
        negative, positive = int(np.sum(a[nz] < 0)), int(np.sum(a[nz] > 0))
        if negative > positive or (negative == positive and b < 0):
            op = ">" if strict else ">="
            return f"({op} {_expression([(float(-a[j]), y[j]) for j in nz])} {_number(-b)})"
        op = "<" if strict else "<="
        return f"({op} {_expression([(float(a[j]), y[j]) for j in nz])} {_number(b)})"

    def conjunct(c: Conjunct) -> list[str]:
        return [row(c.a[k], float(c.b[k]), bool(c.flags[k])) for k in range(len(c.b))]

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
