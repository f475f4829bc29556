"""VNN-LIB 1.0 properties, as used by VNN-COMP: reading and writing.

A VNN-LIB 1.0 file is a subset of SMT-LIB 2 over reals::

    ; comments run from a semicolon to the end of the line
    (declare-const X_0 Real)        ; inputs X_0..X_{n-1}: the network input, flattened row-major
    (declare-const Y_0 Real)        ; outputs Y_0..Y_{m-1}: the network output, flattened
    (assert (>= X_0 0.25))          ; input region: bounds on each X_i, or a disjunction of boxes
    (assert (<= X_0 0.75))          ;   (assert (or (and (>= X_0 a) (<= X_0 b) ...) (and ...)))
    (assert (or (and (>= Y_0 Y_1))  ; output: the UNSAFE set, linear constraints on Y in and/or form
                (and (<= (+ Y_0 (* -2.5 Y_1)) -1e-3))))

The assertions are conjoined. The query is satisfiable (``sat``, a counterexample exists) iff some input in
the region maps to an output in the unsafe set; ``unsat`` means the property holds. As in VNN-COMP, strict
comparisons ``<`` / ``>`` are read as ``<=`` / ``>=`` (the closure of the unsafe set, which is sound for
``unsat``). Terms are linear: ``(+ ...)``, ``(- a)``, ``(- a b ...)``, ``(* c v)`` with numbers in decimal or
scientific notation.

The data model (:class:`Property`) is a union of input boxes and the unsafe set as a disjunction of
conjunctions ``a @ y <= b``.
"""

from __future__ import annotations

import gzip
import itertools
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from faithverify.errors import FaithverifyError

# A product of disjunctions can grow exponentially; past this many conjuncts the file is not a property we
# can use, and saying so beats running out of memory.
MAX_CONJUNCTS = 100_000


class VnnlibError(FaithverifyError):
    """A VNN-LIB file is malformed or outside the supported fragment; the message names the file and line."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        self.source = source
        self.line = line
        self.detail = message
        where = f"{source}, line {line}" if line is not None else source
        super().__init__(f"{where}: {message}")


class VnnlibUnsupported(VnnlibError):
    """A well-formed query outside the fragment faithverify decides (non-linear terms, ``!=``, an input without
    bounds, ...): a solver answers it ``unknown``, where a malformed file is an error."""


# ------------------------------------------------------------------------------------------------------------
# Data model


def _float_vector(values: Iterable[float] | np.ndarray, what: str) -> np.ndarray:
    array = np.array(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array, got shape {array.shape}")
    return array


@dataclass(frozen=True, eq=False)
class Box:
    """The input box ``lower <= x <= upper`` (elementwise, float64, over the flattened input)."""

    lower: np.ndarray
    upper: np.ndarray

    def __post_init__(self) -> None:
        lower, upper = _float_vector(self.lower, "lower"), _float_vector(self.upper, "upper")
        if lower.shape != upper.shape:
            raise ValueError(f"box bounds differ in size: {lower.shape} vs {upper.shape}")
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Box):
            return NotImplemented
        return np.array_equal(self.lower, other.lower) and np.array_equal(self.upper, other.upper)

    @property
    def size(self) -> int:
        return int(self.lower.size)

    @property
    def center(self) -> np.ndarray:
        return (self.lower + self.upper) / 2

    def contains(self, x: np.ndarray, tolerance: float = 0.0) -> bool:
        """Whether the flattened ``x`` lies in the box widened by ``tolerance`` on every side."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return bool(np.all(x >= self.lower - tolerance) and np.all(x <= self.upper + tolerance))


@dataclass(frozen=True, eq=False)
class Conjunct:
    """One disjunct of the unsafe set: ``all(a @ y <= b)``, ``a`` of shape ``[k, n_out]``, ``b`` of ``[k]``.

    ``strict[k]`` marks a row ``a[k] @ y < b[k]`` (VNN-LIB 2.0 keeps ``<``/``>``; VNN-LIB 1.0, as VNN-COMP,
    reads them as ``<=``/``>=``). Bounds may use the closure (sound for ``unsat``); a counterexample must
    satisfy the strict rows strictly.
    """

    a: np.ndarray
    b: np.ndarray
    strict: np.ndarray | None = None

    def __post_init__(self) -> None:
        a = np.array(self.a, dtype=np.float64)
        b = _float_vector(self.b, "b")
        if a.ndim != 2 or a.shape[0] != b.shape[0]:
            raise ValueError(f"a must be [k, n_out] with k = len(b) = {b.shape[0]}, got shape {a.shape}")
        strict = np.zeros(len(b), dtype=bool) if self.strict is None else np.array(self.strict, dtype=bool)
        if strict.shape != b.shape:
            raise ValueError(f"strict must have one flag per row ({len(b)}), got shape {strict.shape}")
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "strict", strict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Conjunct):
            return NotImplemented
        return (
            np.array_equal(self.a, other.a)
            and np.array_equal(self.b, other.b)
            and np.array_equal(self.flags, other.flags)
        )

    @property
    def flags(self) -> np.ndarray:
        """``strict`` as a boolean array (always set once constructed)."""
        assert self.strict is not None
        return self.strict

    def witness_bounds(self) -> np.ndarray:
        """Right-hand sides a counterexample's ``a @ y <= .`` check uses: strict rows one ulp below ``b``."""
        return np.where(self.flags, np.nextafter(self.b, -np.inf), self.b)

    def holds(self, y: np.ndarray, tolerance: float = 0.0) -> bool:
        """``all(a @ y <= b + tolerance)`` for the flattened output ``y`` (``<`` on strict rows)."""
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        value, bound = self.a @ y, self.b + tolerance
        return bool(np.all(np.where(self.flags, value < bound, value <= bound)))


@dataclass(frozen=True)
class Property:
    """A VNN-LIB 1.0 property: inputs in the union of ``input_boxes``, unsafe iff some conjunct holds.

    ``unsafe`` is a disjunction; a conjunct with no rows is "any output" (a file without output constraints).
    """

    input_boxes: list[Box]
    unsafe: list[Conjunct]

    def __post_init__(self) -> None:
        if not self.input_boxes:
            raise ValueError("a property needs at least one input box")
        if not self.unsafe:
            raise ValueError(
                "a property needs at least one unsafe conjunct (an empty unsafe set is always unsat)"
            )
        if len({b.size for b in self.input_boxes}) != 1:
            raise ValueError("the input boxes differ in size")
        if len({c.a.shape[1] for c in self.unsafe}) != 1:
            raise ValueError("the unsafe conjuncts differ in output size")

    @property
    def n_inputs(self) -> int:
        return self.input_boxes[0].size

    @property
    def n_outputs(self) -> int:
        return int(self.unsafe[0].a.shape[1])

    def is_unsafe(self, y: np.ndarray, tolerance: float = 0.0) -> bool:
        """Whether the output ``y`` lies in the unsafe set, each row relaxed to ``a @ y <= b + tolerance``.

        A positive tolerance accepts outputs within ``tolerance`` of the set (e.g. to judge a counterexample
        computed in float32); a negative one demands a margin.
        """
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if y.size != self.n_outputs:
            raise ValueError(f"the property has {self.n_outputs} outputs, got a vector of {y.size}")
        return any(c.holds(y, tolerance) for c in self.unsafe)

    def in_input_region(self, x: np.ndarray, tolerance: float = 0.0) -> bool:
        """Whether the flattened input ``x`` lies in one of the input boxes (widened by ``tolerance``)."""
        return any(box.contains(x, tolerance) for box in self.input_boxes)


# ------------------------------------------------------------------------------------------------------------
# Linear constraints shared by the 1.0 reader and the 2.0 reader (faithverify.vnn.vnnlib2)


@dataclass(frozen=True)
class Row:
    """One linear constraint ``sum inputs[i] x_i + sum outputs[j] y_j <= rhs``, from line ``line``."""

    inputs: dict[int, float]
    outputs: dict[int, float]
    rhs: float
    line: int | None
    strict: bool = False  # ``<`` rather than ``<=`` (kept by the 2.0 reader only)


Dnf = list[list[Row]]  # a disjunction of conjunctions of rows


def rows_of_comparison(
    op: str, coefs: dict[tuple[str, int], float], const: float, line: int | None, keep_strict: bool = False
) -> list[Row]:
    """Rows for ``(op lhs rhs)`` given ``lhs - rhs = sum coefs[v] v + const``; ``=`` gives two rows.

    ``coefs`` is keyed by ``("X", i)`` or ``("Y", j)``. Strict comparisons are read as non-strict, unless
    ``keep_strict`` (the rows are then marked strict).
    """
    strict = keep_strict and op in ("<", ">")
    inputs = {i: c for (kind, i), c in coefs.items() if kind == "X" and c != 0.0}
    outputs = {j: c for (kind, j), c in coefs.items() if kind == "Y" and c != 0.0}
    rhs = -const
    neg = ({i: -c for i, c in inputs.items()}, {j: -c for j, c in outputs.items()}, const)
    if op in ("<=", "<"):
        return [Row(inputs, outputs, rhs, line, strict)]
    if op in (">=", ">"):
        return [Row(*neg, line, strict)]
    if op in ("=", "=="):
        return [Row(inputs, outputs, rhs, line), Row(*neg, line)]
    raise AssertionError(f"not a comparison: {op}")


def and_dnf(parts: Sequence[Dnf], source: str, line: int | None) -> Dnf:
    """The DNF of a conjunction: the cross product of the parts' disjuncts."""
    # Parts with one disjunct (the usual long lists of bounds) are joined first in one pass: folding them into
    # the product one by one would copy the growing conjunct each time, quadratic on 3072-input boxes.
    single = [row for part in parts if len(part) == 1 for row in part[0]]
    result: Dnf = [single]
    for part in parts:
        if len(part) == 1:
            continue
        if len(result) * len(part) > MAX_CONJUNCTS:
            raise VnnlibUnsupported(
                source, line, f"the formula expands to more than {MAX_CONJUNCTS} disjuncts"
            )
        result = [left + right for left in result for right in part]
    return result


def or_dnf(parts: Sequence[Dnf], source: str, line: int | None) -> Dnf:
    """The DNF of a disjunction: all the parts' disjuncts."""
    result = [conj for part in parts for conj in part]
    if len(result) > MAX_CONJUNCTS:
        raise VnnlibUnsupported(source, line, f"the formula has more than {MAX_CONJUNCTS} disjuncts")
    return result


def assemble(
    assertions: Sequence[tuple[Dnf, int | None]],
    n_inputs: int,
    n_outputs: int,
    source: str,
    input_label: Sequence[str] | None = None,
    input_line: Sequence[int | None] | None = None,
    mixed: bool = False,
    unbounded: bool = False,
) -> tuple[list[Box], list[Conjunct]]:
    """Turn the conjoined assertions (each a DNF, with its line) into input boxes and the unsafe set.

    Each assertion must speak either of inputs only (box bounds: one variable per row) or of outputs only.
    The input region is the product of the input assertions' disjunctions of boxes; the unsafe set the product
    of the output assertions' disjunctions. ``input_label[i]`` names input ``i`` and ``input_line[i]`` is the
    line of its declaration, for the error about an input without bounds.

    With ``mixed``, any other linear constraint over inputs (several inputs in a row, or inputs and outputs
    together) is kept in the unsafe set instead, whose rows then read ``[outputs..., inputs...]`` (width
    ``n_outputs + n_inputs``); every input still needs box bounds, unless ``unbounded`` (the boxes may then
    have infinite sides).
    """
    if mixed:
        return _assemble_mixed(assertions, n_inputs, n_outputs, source, input_label, input_line, unbounded)
    labels = list(input_label) if input_label is not None else [f"X_{i}" for i in range(n_inputs)]
    # Boxes are kept as mutable [lower, upper] pairs while assertions narrow them.
    boxes: list[tuple[np.ndarray, np.ndarray]] = [(np.full(n_inputs, -np.inf), np.full(n_inputs, np.inf))]
    unsafe: Dnf = [[]]
    for dnf, line in assertions:
        rows = [row for conj in dnf for row in conj]
        has_in = any(row.inputs for row in rows)
        has_out = any(row.outputs for row in rows)
        for row in rows:
            if not row.inputs and not row.outputs:
                raise VnnlibError(source, row.line, "a comparison without variables")
            if row.inputs and row.outputs:
                raise VnnlibError(
                    source,
                    row.line,
                    "a constraint mixes inputs and outputs; only box bounds on inputs and "
                    "linear constraints on outputs are supported",
                )
        if has_in and has_out:
            if len(dnf) != 1:
                raise VnnlibError(
                    source,
                    line,
                    "a disjunction over both inputs and outputs (an input region per output "
                    "case) is not supported; give the input region and the unsafe set as separate assertions",
                )
            in_rows = [row for row in dnf[0] if row.inputs]
            out_rows = [row for row in dnf[0] if row.outputs]
            boxes = _narrow(boxes, [in_rows], labels, source)
            unsafe = and_dnf([unsafe, [out_rows]], source, line)
        elif has_in:
            boxes = _narrow(boxes, dnf, labels, source)
        else:
            unsafe = and_dnf([unsafe, dnf], source, line)
    for lower, upper in boxes:
        for bound, what in ((lower, "lower"), (upper, "upper")):
            missing = np.flatnonzero(~np.isfinite(bound))
            if missing.size:
                i = int(missing[0])
                where = input_line[i] if input_line is not None else None
                raise VnnlibError(source, where, f"input {labels[i]} has no {what} bound")
        empty = np.flatnonzero(lower > upper)
        if empty.size:
            i = int(empty[0])
            where = input_line[i] if input_line is not None else None
            raise VnnlibError(
                source, where, f"input {labels[i]} has an empty range [{lower[i]!r}, {upper[i]!r}]"
            )
    conjuncts = []
    for conj in unsafe:
        a = np.zeros((len(conj), n_outputs))
        for k, row in enumerate(conj):
            for j, c in row.outputs.items():
                a[k, j] += c
        conjuncts.append(Conjunct(a, np.array([row.rhs for row in conj], dtype=np.float64)))
    return [Box(lo, hi) for lo, hi in boxes], conjuncts


def _is_bound(row: Row) -> bool:
    return not row.outputs and len(row.inputs) == 1


def _assemble_mixed(
    assertions: Sequence[tuple[Dnf, int | None]],
    n_inputs: int,
    n_outputs: int,
    source: str,
    input_label: Sequence[str] | None,
    input_line: Sequence[int | None] | None,
    unbounded: bool = False,
) -> tuple[list[Box], list[Conjunct]]:
    labels = list(input_label) if input_label is not None else [f"X_{i}" for i in range(n_inputs)]
    boxes: list[tuple[np.ndarray, np.ndarray]] = [(np.full(n_inputs, -np.inf), np.full(n_inputs, np.inf))]
    unsafe: Dnf = [[]]
    for dnf, line in assertions:
        rows = [row for conj in dnf for row in conj]
        for row in rows:
            if not row.inputs and not row.outputs:
                raise VnnlibUnsupported(source, row.line, "a comparison without variables")
        if all(_is_bound(row) for row in rows):
            boxes = _narrow(boxes, dnf, labels, source)
        elif len(dnf) == 1:  # the bounds narrow the box; the other rows join the unsafe set
            bounds = [row for row in dnf[0] if _is_bound(row)]
            if bounds:
                boxes = _narrow(boxes, [bounds], labels, source)
            unsafe = and_dnf([unsafe, [[row for row in dnf[0] if not _is_bound(row)]]], source, line)
        else:  # a disjunction: kept whole (its bounds as rows too), so nothing is lost
            unsafe = and_dnf([unsafe, dnf], source, line)
    boxes = _checked_boxes(boxes, labels, input_line, source, unbounded)
    reads_inputs = any(row.inputs for conj in unsafe for row in conj)
    width = n_outputs + (n_inputs if reads_inputs else 0)
    conjuncts = []
    for conj in unsafe:
        a = np.zeros((len(conj), width))
        for k, row in enumerate(conj):
            for j, c in row.outputs.items():
                a[k, j] += c
            for i, c in row.inputs.items():
                a[k, n_outputs + i] += c
        rhs = np.array([row.rhs for row in conj], dtype=np.float64)
        conjuncts.append(Conjunct(a, rhs, np.array([row.strict for row in conj], dtype=bool)))
    return [Box(lo, hi) for lo, hi in boxes], conjuncts


def _checked_boxes(
    boxes: list[tuple[np.ndarray, np.ndarray]],
    labels: Sequence[str],
    input_line: Sequence[int | None] | None,
    source: str,
    unbounded: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every input bounded on both sides (unless ``unbounded``); empty boxes (no input at all) are dropped."""
    for lower, upper in [] if unbounded else boxes:
        for bound, what in ((lower, "lower"), (upper, "upper")):
            missing = np.flatnonzero(~np.isfinite(bound))
            if missing.size:
                i = int(missing[0])
                where = input_line[i] if input_line is not None else None
                raise VnnlibUnsupported(source, where, f"input {labels[i]} has no {what} bound")
    kept = [(lo, hi) for lo, hi in boxes if not np.any(lo > hi)]
    if not kept:
        lower, upper = boxes[0]
        i = int(np.flatnonzero(lower > upper)[0])
        where = input_line[i] if input_line is not None else None
        raise VnnlibUnsupported(
            source, where, f"input {labels[i]} has an empty range [{lower[i]!r}, {upper[i]!r}]"
        )
    return kept


def _bound(coef: float, rhs: float) -> tuple[bool, float]:
    """``coef * x <= rhs`` as (is_upper, bound). A division that rounds is widened by one ulp outwards, so
    the box read never shrinks the region the file states (sound for ``unsat``)."""
    value = rhs / coef
    upper = coef > 0
    if abs(coef) != 1.0 and math.isfinite(value) and Fraction(value) != Fraction(rhs) / Fraction(coef):
        value = float(np.nextafter(value, np.inf if upper else -np.inf))
    return upper, value


def _narrow(
    boxes: list[tuple[np.ndarray, np.ndarray]], dnf: Dnf, labels: Sequence[str], source: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Intersect every box with every disjunct of ``dnf`` (box bounds only)."""
    bounds: list[list[tuple[int, bool, float]]] = []
    for conj in dnf:
        found = []
        for row in conj:
            if len(row.inputs) != 1:
                names = ", ".join(labels[i] for i in sorted(row.inputs))
                raise VnnlibError(
                    source,
                    row.line,
                    f"a constraint on several inputs ({names}); only box bounds on inputs are supported",
                )
            ((i, coef),) = row.inputs.items()
            found.append((i, *_bound(coef, row.rhs)))
        bounds.append(found)
    if len(boxes) * len(bounds) > MAX_CONJUNCTS:
        raise VnnlibUnsupported(source, None, f"the input region has more than {MAX_CONJUNCTS} boxes")
    # One disjunct (the usual case) narrows the boxes in place: no copies, so 3072-input files stay linear.
    pairs = boxes if len(bounds) == 1 else [(lo.copy(), hi.copy()) for lo, hi in boxes for _ in bounds]
    for k, (lower, upper) in enumerate(pairs):
        for i, is_upper, value in bounds[k % len(bounds)]:
            if is_upper:
                upper[i] = min(upper[i], value)
            else:
                lower[i] = max(lower[i], value)
    return pairs


# ------------------------------------------------------------------------------------------------------------
# Reading VNN-LIB 1.0

_TOKEN = re.compile(r"[()]|[^\s()]+")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_VARIABLE = re.compile(r"([XY])_(\d+)")
_COMPARISONS = ("<=", ">=", "<", ">", "=")
# SMT-LIB commands that carry no constraint; some generators emit them.
_IGNORED_COMMANDS = frozenset({"check-sat", "get-model", "exit", "set-logic", "set-info", "set-option"})


@dataclass(frozen=True)
class _List:
    items: list[_List | _Atom]
    line: int


@dataclass(frozen=True)
class _Atom:
    text: str
    line: int


def _tokens(text: str) -> Iterator[tuple[str, int]]:
    for number, line in enumerate(text.splitlines(), start=1):
        code = line.split(";", 1)[0]
        for token in _TOKEN.findall(code):
            yield token, number


def _sexprs(text: str, source: str) -> list[_List | _Atom]:
    """The top-level s-expressions of ``text``, built with an explicit stack (no recursion limit)."""
    top: list[_List | _Atom] = []
    stack: list[_List] = []
    for token, line in _tokens(text):
        if token == "(":
            stack.append(_List([], line))
        elif token == ")":
            if not stack:
                raise VnnlibError(source, line, "unbalanced parentheses: ')' without a matching '('")
            done = stack.pop()
            (stack[-1].items if stack else top).append(done)
        else:
            (stack[-1].items if stack else top).append(_Atom(token, line))
    if stack:
        raise VnnlibError(source, stack[-1].line, "unbalanced parentheses: '(' opened here is never closed")
    return top


class _Reader:
    """Evaluates the s-expressions of one VNN-LIB 1.0 file into rows."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.declared: dict[tuple[str, int], int] = {}  # variable -> line of its declaration

    def error(self, line: int, message: str) -> VnnlibError:
        return VnnlibError(self.source, line, message)

    def declare(self, node: _List) -> None:
        items = node.items
        if len(items) != 3 or not all(isinstance(x, _Atom) for x in items[1:]):
            raise self.error(node.line, "expected (declare-const NAME Real)")
        name, sort = items[1], items[2]
        assert isinstance(name, _Atom) and isinstance(sort, _Atom)
        match = _VARIABLE.fullmatch(name.text)
        if match is None:
            raise self.error(
                name.line,
                f"unknown variable {name.text!r}: VNN-LIB 1.0 variables are X_i (inputs) and Y_j (outputs)",
            )
        if sort.text != "Real":
            raise self.error(
                sort.line, f"variable {name.text} has sort {sort.text!r}; only Real is supported"
            )
        key = (match.group(1), int(match.group(2)))
        if key in self.declared:
            raise self.error(name.line, f"variable {name.text} is declared twice")
        self.declared[key] = name.line

    def term(self, node: _List | _Atom) -> tuple[dict[tuple[str, int], float], float]:
        """A linear term as (coefficients by variable, constant)."""
        if isinstance(node, _Atom):
            text = node.text
            if _NUMBER.fullmatch(text):
                return {}, float(text)
            match = _VARIABLE.fullmatch(text)
            if match is None:
                raise self.error(node.line, f"unknown variable or symbol {text!r}")
            key = (match.group(1), int(match.group(2)))
            if key not in self.declared:
                raise self.error(node.line, f"undeclared variable {text}")
            return {key: 1.0}, 0.0
        if not node.items or not isinstance(node.items[0], _Atom):
            raise self.error(node.line, "expected an operator after '('")
        op = node.items[0].text
        args = [self.term(x) for x in node.items[1:]]
        if not args:
            raise self.error(node.line, f"operator {op!r} without operands")
        if op == "+":
            return _linear_sum(args, [1.0] * len(args))
        if op == "-":
            if len(args) == 1:
                return _linear_sum(args, [-1.0])
            return _linear_sum(args, [1.0] + [-1.0] * (len(args) - 1))
        if op == "*":
            variable = [k for k, (coefs, _) in enumerate(args) if coefs]
            if len(variable) > 1:
                raise self.error(node.line, "non-linear term: a product of variables")
            factor = math.prod(c for k, (_, c) in enumerate(args) if k not in variable)
            if not variable:
                return {}, factor
            coefs, const = args[variable[0]]
            return {v: c * factor for v, c in coefs.items()}, const * factor
        if op in _COMPARISONS or op in ("and", "or", "not"):
            raise self.error(node.line, f"{op!r} where a numeric term is expected")
        raise self.error(node.line, f"unknown operator {op!r}")

    def formula(self, node: _List | _Atom) -> Dnf:
        if isinstance(node, _Atom):
            raise self.error(node.line, f"expected a comparison, got {node.text!r}")
        if not node.items or not isinstance(node.items[0], _Atom):
            raise self.error(node.line, "expected an operator after '('")
        op = node.items[0].text
        operands = node.items[1:]
        if op in ("and", "or"):
            if not operands:
                raise self.error(node.line, f"({op}) without operands")
            parts = [self.formula(x) for x in operands]
            return (and_dnf if op == "and" else or_dnf)(parts, self.source, node.line)
        if op in _COMPARISONS:
            if len(operands) < 2:
                raise self.error(node.line, f"comparison {op!r} needs two operands")
            terms = [self.term(x) for x in operands]
            rows: list[Row] = []
            # SMT-LIB chains (<= a b c) mean (<= a b) and (<= b c).
            for (lc, lk), (rc, rk) in itertools.pairwise(terms):
                coefs = dict(lc)
                for v, c in rc.items():
                    coefs[v] = coefs.get(v, 0.0) - c
                rows += rows_of_comparison(op, coefs, lk - rk, node.line)
            return [rows]
        if op in ("+", "-", "*"):
            raise self.error(node.line, f"a numeric term ({op} ...) where a comparison is expected")
        raise self.error(node.line, f"unknown operator {op!r}")


def _linear_sum(
    args: Sequence[tuple[dict[tuple[str, int], float], float]], signs: Sequence[float]
) -> tuple[dict[tuple[str, int], float], float]:
    coefs: dict[tuple[str, int], float] = {}
    const = 0.0
    for (terms, k), sign in zip(args, signs, strict=True):
        for v, c in terms.items():
            coefs[v] = coefs.get(v, 0.0) + sign * c
        const += sign * k
    return coefs, const


def _contiguous(reader: _Reader, kind: str) -> int:
    """The number of declared ``kind`` variables, which must be ``kind_0 .. kind_{n-1}``."""
    indices = sorted(i for k, i in reader.declared if k == kind)
    what = "input" if kind == "X" else "output"
    if not indices:
        raise VnnlibError(reader.source, None, f"no {what} variables declared ({kind}_0 ...)")
    for expected, got in enumerate(indices):
        if got != expected:
            line = reader.declared[(kind, got)]
            raise VnnlibError(reader.source, line, f"{kind}_{got} is declared but {kind}_{expected} is not")
    return len(indices)


def parse_vnnlib(text: str, source: str = "<string>") -> Property:
    """Parse VNN-LIB 1.0 text into a :class:`Property`; ``source`` names it in error messages."""
    dnfs, n_in, n_out, input_line = read_v1_assertions(text, source)
    boxes, unsafe = assemble(dnfs, n_in, n_out, source, input_line=input_line)
    return Property(boxes, unsafe)


def read_v1_assertions(
    text: str, source: str
) -> tuple[list[tuple[Dnf, int | None]], int, int, list[int | None]]:
    """A VNN-LIB 1.0 file's assertions (each a DNF of rows, with its line), its numbers of inputs and outputs
    and the declaration line of each input."""
    reader = _Reader(source)
    assertions: list[tuple[_List, int]] = []
    for node in _sexprs(text, source):
        if isinstance(node, _Atom):
            raise reader.error(node.line, f"unexpected {node.text!r} outside parentheses")
        head = node.items[0] if node.items else None
        if not isinstance(head, _Atom):
            raise reader.error(node.line, "expected a command such as declare-const or assert")
        if head.text == "declare-const":
            reader.declare(node)
        elif head.text == "assert":
            if len(node.items) != 2:
                raise reader.error(node.line, "assert takes exactly one formula")
            assertions.append((node, node.line))
        elif head.text == "declare-fun":
            raise reader.error(
                node.line, "declare-fun is not supported; declare variables with declare-const"
            )
        elif head.text not in _IGNORED_COMMANDS:
            raise reader.error(node.line, f"unknown command {head.text!r}")
    n_in = _contiguous(reader, "X")
    n_out = _contiguous(reader, "Y")
    dnfs: list[tuple[Dnf, int | None]] = [(reader.formula(node.items[1]), line) for node, line in assertions]
    input_line: list[int | None] = [reader.declared[("X", i)] for i in range(n_in)]
    return dnfs, n_in, n_out, input_line


def read_text(path: str | Path) -> str:
    """The text of a ``.vnnlib`` file, gunzipped when it is gzip-compressed (``.gz`` or gzip magic)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise VnnlibError(str(path), None, f"cannot read the file: {exc.strerror or exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise VnnlibError(str(path), None, f"corrupt gzip file: {exc}") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VnnlibError(str(path), None, f"not a text file ({exc.reason})") from exc


def read_vnnlib(path: str | Path) -> Property:
    """Read a VNN-LIB 1.0 property from a ``.vnnlib`` or ``.vnnlib.gz`` file."""
    return parse_vnnlib(read_text(path), source=str(path))


# ------------------------------------------------------------------------------------------------------------
# Writing VNN-LIB 1.0


def format_number(value: float, *, plain: bool = False) -> str:
    """A float64 as the shortest text that reads back to the same double.

    That is its ``repr`` (VNN-LIB 1.0 takes scientific notation), or with ``plain`` a decimal without an exponent
    (VNN-LIB 2.0's grammar has none).
    """
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"VNN-LIB cannot hold the number {value}")
    return np.format_float_positional(value, unique=True, trim="0") if plain else repr(value)


def format_term(coef: float, var: str, *, plain: bool = False) -> str:
    """``coef * var`` as ``(* coef var)``, or ``var`` alone for a coefficient of 1."""
    return var if coef == 1.0 else f"(* {format_number(coef, plain=plain)} {var})"


def format_box(box: Box, names: Sequence[str], *, plain: bool = False) -> list[str]:
    """The bounds of ``box`` on the input variables ``names``: ``(>= x lower)`` and ``(<= x upper)`` per element."""
    return [
        row
        for i in range(box.size)
        for row in (
            f"(>= {names[i]} {format_number(box.lower[i], plain=plain)})",
            f"(<= {names[i]} {format_number(box.upper[i], plain=plain)})",
        )
    ]


def _row(a: np.ndarray, b: float, name: str = "Y") -> str:
    """``a @ y <= b`` as a VNN-LIB comparison, in ``>=`` form when that avoids negative coefficients."""
    nz = np.flatnonzero(a)
    if nz.size == 0:
        raise ValueError("an output constraint without variables")
    if np.all(a[nz] < 0):
        op, coefs, rhs = ">=", -a, -b  # exact: negation never rounds
    else:
        op, coefs, rhs = "<=", a, b
    terms = [format_term(float(coefs[j]), f"{name}_{j}") for j in nz]
    expr = terms[0] if len(terms) == 1 else f"(+ {' '.join(terms)})"
    return f"({op} {expr} {format_number(rhs)})"


def format_vnnlib(prop: Property, comment: str | None = None) -> str:
    """The VNN-LIB 1.0 text of ``prop``; ``comment`` lines go first, as ``;`` comments."""
    out: list[str] = []
    if comment:
        out += [f"; {line}".rstrip() for line in comment.splitlines()]
        out.append("")
    out += [f"(declare-const X_{i} Real)" for i in range(prop.n_inputs)]
    out.append("")
    out += [f"(declare-const Y_{j} Real)" for j in range(prop.n_outputs)]
    out += ["", "; input region"]

    x = [f"X_{i}" for i in range(prop.n_inputs)]
    if len(prop.input_boxes) == 1:
        out += [f"(assert {line})" for line in format_box(prop.input_boxes[0], x)]
    else:
        out.append("(assert (or")
        out += [f"    (and {' '.join(format_box(box, x))})" for box in prop.input_boxes]
        out.append("))")
    out += ["", "; unsafe set"]
    if len(prop.unsafe) == 1:
        c = prop.unsafe[0]
        out += [f"(assert {_row(c.a[k], float(c.b[k]))})" for k in range(len(c.b))]
    else:
        out.append("(assert (or")
        for c in prop.unsafe:
            rows = [_row(c.a[k], float(c.b[k])) for k in range(len(c.b))]
            if not rows:
                raise ValueError("an empty conjunct (any output) inside a disjunction cannot be written")
            out.append(f"    (and {' '.join(rows)})")
        out.append("))")
    return "\n".join(out) + "\n"


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so ``path`` is never half written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8; gzip-compressed when ``path`` ends in ``.gz``) atomically."""
    data = text.encode("utf-8")
    if Path(path).suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    write_bytes_atomic(path, data)


def write_vnnlib(path: str | Path, prop: Property, comment: str | None = None) -> None:
    """Write ``prop`` as VNN-LIB 1.0 (``.gz`` compressed), atomically."""
    write_text_atomic(path, format_vnnlib(prop, comment))
