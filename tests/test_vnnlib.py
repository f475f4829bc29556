"""VNN-LIB 1.0 and 2.0: hand-written files in the VNN-COMP style, round trips, every malformed case with its
line number, and ``export-vnn`` on the shipped pair checked against onnxruntime on the original models."""

from __future__ import annotations

import csv
import gzip
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner, Result

import faithverify.vnn.export as export_module
from faithverify.cli import main
from faithverify.errors import FaithverifyError, ResultsFileError
from faithverify.pair import load_pair
from faithverify.vnn import (
    Box,
    Conjunct,
    Network,
    Property,
    Query,
    VnnlibError,
    format_query,
    format_vnnlib,
    parse_query,
    parse_vnnlib,
    read_query,
    read_vnnlib,
    write_query,
    write_vnnlib,
)
from faithverify.vnn.export import ball, export_suite, gap_property
from faithverify.vnn.vnnlib import VnnlibUnsupported
from tests.conftest import SHIPPED


def declarations(n_in: int, n_out: int) -> str:
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(n_in)) + "".join(
        f"(declare-const Y_{j} Real)\n" for j in range(n_out)
    )


# ------------------------------------------------------------------------------------------------------------
# Reading hand-written VNN-LIB 1.0

ACAS_LIKE = """\
; ACAS Xu-like property: 5 inputs, 5 outputs, a disjunctive unsafe set
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const X_2 Real)
(declare-const X_3 Real)
(declare-const X_4 Real)

(declare-const Y_0 Real) ; COC
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(declare-const Y_3 Real)
(declare-const Y_4 Real)

; input region
(assert (<= X_0 0.679857769))
(assert (>= X_0 -0.303531156))
(assert (<= X_1 5e-1))
(assert (>= X_1 -0.5))
(assert (and (<= X_2 -0.4933803236) (>= X_2 -0.5)))
(assert (<= X_3 0.5)) (assert (>= X_3 3.0E-1))
(assert (< X_4 0.5))
(assert (> X_4 (- 0.3)))
(assert (>= (* 2 X_0) -1.0))   ; a scaled bound: X_0 >= -0.5, looser than the one above

; unsafe: Y_0 is the minimal score, or a linear condition on the others
(assert (or
    (and (<= Y_0 Y_1) (<= Y_0 Y_2) (<= Y_0 Y_3) (<= Y_0 Y_4))
    (and (>= (+ Y_1 (* -2 Y_2)) 1.5e-3)
         (< (- Y_3 Y_4 0.5) (- 1)))
))
"""


def test_acas_like_property() -> None:
    prop = parse_vnnlib(ACAS_LIKE, "acas.vnnlib")
    assert prop.n_inputs == 5 and prop.n_outputs == 5
    assert len(prop.input_boxes) == 1
    box = prop.input_boxes[0]
    np.testing.assert_array_equal(box.lower, [-0.303531156, -0.5, -0.5, 0.3, -0.3])
    np.testing.assert_array_equal(box.upper, [0.679857769, 0.5, -0.4933803236, 0.5, 0.5])
    assert len(prop.unsafe) == 2
    first, second = prop.unsafe
    # Y_0 - Y_j <= 0 for j = 1..4
    np.testing.assert_array_equal(
        first.a, [[1, -1, 0, 0, 0], [1, 0, -1, 0, 0], [1, 0, 0, -1, 0], [1, 0, 0, 0, -1]]
    )
    np.testing.assert_array_equal(first.b, [0, 0, 0, 0])
    # Y_1 - 2 Y_2 >= 1.5e-3  ->  -Y_1 + 2 Y_2 <= -1.5e-3 ;  Y_3 - Y_4 - 0.5 <= -1  ->  Y_3 - Y_4 <= -0.5
    np.testing.assert_array_equal(second.a, [[0, -1, 2, 0, 0], [0, 0, 0, 1, -1]])
    np.testing.assert_array_equal(second.b, [-1.5e-3, -0.5])

    assert prop.is_unsafe(np.array([0.0, 1, 1, 1, 1]))  # first disjunct
    assert prop.is_unsafe(np.array([1.0, 1, 0, 0, 1]))  # second disjunct
    assert not prop.is_unsafe(np.array([1.0, 0, 0, 0, 0]))
    near = np.array([1e-6, 0, 0, 0, 0])  # misses the first disjunct by 1e-6
    assert not prop.is_unsafe(near)
    assert prop.is_unsafe(near, tolerance=1e-5)
    assert prop.in_input_region(box.center) and not prop.in_input_region(box.upper + 1e-3)


def test_scaled_bounds_never_shrink_the_box() -> None:
    # 1/3 is not a double: the bounds read must contain the exact region, and be at most one ulp wider.
    text = declarations(1, 1) + "(assert (<= (* 3 X_0) 1))\n(assert (<= (* -3 X_0) 1))\n(assert (<= Y_0 0))\n"
    (box,) = parse_vnnlib(text).input_boxes
    third = Fraction(1, 3)
    assert Fraction(box.upper[0]) >= third > Fraction(float(np.nextafter(box.upper[0], 0.0)))
    assert Fraction(box.lower[0]) <= -third < Fraction(float(np.nextafter(box.lower[0], 0.0)))


def test_disjunction_of_input_boxes() -> None:
    # VNN-COMP's form for an input region made of several boxes, and a top-level bound that narrows all of them.
    text = declarations(2, 2) + (
        "(assert (or\n"
        "  (and (>= X_0 0.0) (<= X_0 0.5) (>= X_1 0.0) (<= X_1 1.0))\n"
        "  (and (>= X_0 0.5) (<= X_0 1.0) (>= X_1 -1.0) (<= X_1 0.0))\n"
        "))\n"
        "(assert (<= X_1 0.75))\n"
        "(assert (>= Y_0 Y_1))\n"
    )
    prop = parse_vnnlib(text)
    assert prop.input_boxes == [
        Box(np.array([0.0, 0.0]), np.array([0.5, 0.75])),
        Box(np.array([0.5, -1.0]), np.array([1.0, 0.0])),
    ]
    assert prop.unsafe == [Conjunct(np.array([[-1.0, 1.0]]), np.array([0.0]))]
    assert prop.in_input_region(np.array([0.75, -0.5])) and not prop.in_input_region(np.array([0.75, 0.5]))


def mnist_robustness_text(x0: np.ndarray, eps: float, label: int, classes: int = 10) -> str:
    """A local robustness property written the way VNN-COMP's MNIST benchmarks write it."""
    lines = [f"; mnist local robustness, label {label}", declarations(x0.size, classes)]
    for i, v in enumerate(x0):
        lines += [f"(assert (<= X_{i} {min(1.0, v + eps)!r}))", f"(assert (>= X_{i} {max(0.0, v - eps)!r}))"]
    lines.append("(assert (or")
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in range(classes) if j != label]
    lines.append("))")
    return "\n".join(lines) + "\n"


def test_mnist_local_robustness_property() -> None:
    rng = np.random.default_rng(3)
    x0 = rng.random(784)
    label, eps = 7, 0.02
    prop = parse_vnnlib(mnist_robustness_text(x0, eps, label))
    (box,) = prop.input_boxes
    np.testing.assert_array_equal(box.lower, [max(0.0, v - eps) for v in x0])
    np.testing.assert_array_equal(box.upper, [min(1.0, v + eps) for v in x0])
    assert len(prop.unsafe) == 9
    for conj, j in zip(prop.unsafe, [j for j in range(10) if j != label], strict=True):
        expected = np.zeros((1, 10))
        expected[0, label], expected[0, j] = 1.0, -1.0  # Y_j >= Y_label  ->  Y_label - Y_j <= 0
        np.testing.assert_array_equal(conj.a, expected)
        np.testing.assert_array_equal(conj.b, [0.0])
    logits = np.zeros(10)
    logits[label] = 5.0
    assert not prop.is_unsafe(logits)
    logits[2] = 5.0
    assert prop.is_unsafe(logits)


def test_cifar_sized_property_reads_fast(tmp_path: Path) -> None:
    x0 = np.random.default_rng(0).random(3072)
    path = tmp_path / "cifar.vnnlib.gz"
    path.write_bytes(gzip.compress(mnist_robustness_text(x0, 2 / 255, 3).encode()))
    start = time.perf_counter()
    prop = read_vnnlib(path)
    seconds = time.perf_counter() - start
    assert prop.n_inputs == 3072 and len(prop.unsafe) == 9
    # Measured ~0.25 s on one busy core; a quadratic reader takes many seconds at this size.
    assert seconds < 3.0, seconds


# ------------------------------------------------------------------------------------------------------------
# Round trips

AWKWARD = [0.1 + 0.2, 1e-300, -0.0, 5e-324, 123456789.123456789, -2.5e-7, 1.0 / 3.0, 1e22]


def random_property(seed: int, boxes: int, conjuncts: int) -> Property:
    rng = np.random.default_rng(seed)
    n_in, n_out = 6, 4
    input_boxes = []
    for _ in range(boxes):
        lower = rng.normal(size=n_in)
        lower[: len(AWKWARD) % n_in] = AWKWARD[: len(AWKWARD) % n_in]
        input_boxes.append(Box(lower, lower + rng.random(n_in)))
    unsafe = []
    for k in range(conjuncts):
        a = rng.normal(size=(k + 1, n_out)) * (rng.random((k + 1, n_out)) < 0.7)
        a[0] = 0.0
        a[0, k % n_out] = -1.0  # an all-negative row, written in >= form
        a[-1, 0] = AWKWARD[k % len(AWKWARD)] or 1.0
        unsafe.append(Conjunct(a, rng.normal(size=k + 1) * 1e-3))
    return Property(input_boxes, unsafe)


@pytest.mark.parametrize(("boxes", "conjuncts"), [(1, 1), (1, 3), (3, 1), (2, 4)])
@pytest.mark.parametrize("suffix", [".vnnlib", ".vnnlib.gz"])
def test_vnnlib_round_trip(tmp_path: Path, boxes: int, conjuncts: int, suffix: str) -> None:
    prop = random_property(boxes * 10 + conjuncts, boxes, conjuncts)
    path = tmp_path / f"p{suffix}"
    write_vnnlib(path, prop, comment="round trip\nsecond line")
    if suffix.endswith(".gz"):
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    back = read_vnnlib(path)
    assert back == prop
    for mine, theirs in zip(back.input_boxes, prop.input_boxes, strict=True):
        assert mine.lower.tobytes() == theirs.lower.tobytes()  # bit for bit, -0.0 included
    assert not list(tmp_path.glob(".*tmp")), "the atomic write left a temporary file"


def test_round_trip_preserves_every_digit() -> None:
    values = np.array(AWKWARD)
    prop = Property([Box(values, values + 1.0)], [Conjunct(np.array([[1.0, -1.0]]), np.array([1e-17]))])
    back = parse_vnnlib(format_vnnlib(prop))
    assert back.input_boxes[0].lower.tobytes() == values.tobytes()
    assert back.unsafe[0].b[0] == 1e-17


def test_writer_refuses_non_finite_bounds() -> None:
    prop = Property(
        [Box(np.array([0.0]), np.array([np.inf]))], [Conjunct(np.array([[1.0]]), np.array([0.0]))]
    )
    with pytest.raises(ValueError, match="inf"):
        format_vnnlib(prop)


# ------------------------------------------------------------------------------------------------------------
# Malformed VNN-LIB 1.0: every error names the file and the line

HEAD = declarations(2, 2)  # lines 1-4
BOUNDS = "(assert (>= X_0 0.0))\n(assert (<= X_0 1.0))\n(assert (>= X_1 0.0))\n(assert (<= X_1 1.0))\n"  # 5-8

MALFORMED = [
    ("unclosed paren", HEAD + BOUNDS + "(assert (>= Y_0 Y_1)\n\n", 9, "never closed"),
    ("extra paren", HEAD + BOUNDS + "(assert (>= Y_0 Y_1)))\n", 9, "without a matching"),
    ("unknown variable", HEAD + "(declare-const Z_0 Real)\n" + BOUNDS, 5, "unknown variable 'Z_0'"),
    ("unknown symbol", HEAD + BOUNDS + "(assert (>= Y_0 foo))\n", 9, "unknown variable or symbol 'foo'"),
    ("undeclared variable", HEAD + BOUNDS + "(assert\n  (>= Y_0 Y_7))\n", 10, "undeclared variable Y_7"),
    ("undeclared input", HEAD + BOUNDS + "(assert (<= X_2 1.0))\n", 9, "undeclared variable X_2"),
    ("no upper bound", HEAD + BOUNDS.replace("(assert (<= X_1 1.0))\n", ""), 2, "X_1 has no upper bound"),
    ("no lower bound", HEAD + BOUNDS.replace("(assert (>= X_0 0.0))\n", ""), 1, "X_0 has no lower bound"),
    ("non-linear term", HEAD + BOUNDS + "(assert (<= (* Y_0 Y_1) 1.0))\n", 9, "non-linear"),
    ("unknown operator", HEAD + BOUNDS + "(assert (<= (/ Y_0 2) 1.0))\n", 9, "unknown operator '/'"),
    ("unknown connective", HEAD + BOUNDS + "(assert (xor (<= Y_0 1) (<= Y_1 1)))\n", 9, "unknown operator 'xor'"),
    ("unknown command", HEAD + BOUNDS + "(maximize Y_0)\n", 9, "unknown command 'maximize'"),
    ("mixed input and output", HEAD + BOUNDS + "(assert (<= (+ X_0 Y_0) 1.0))\n", 9, "mixes inputs and outputs"),
    ("input relation", HEAD + BOUNDS + "(assert (<= X_0 X_1))\n", 9, "only box bounds on inputs"),
    ("bad sort", "(declare-const X_0 Int)\n" + HEAD[24:], 1, "only Real"),
    ("gap in declarations", "(declare-const X_0 Real)\n(declare-const X_2 Real)\n(declare-const Y_0 Real)\n", 2,
     "X_2 is declared but X_1 is not"),
    ("declared twice", HEAD + "(declare-const Y_1 Real)\n", 5, "declared twice"),
    ("comparison of a term", HEAD + BOUNDS + "(assert (+ Y_0 1))\n", 9, "where a comparison is expected"),
    ("per-case input region", HEAD + "(assert (or (and (>= X_0 0) (<= X_0 1) (>= Y_0 1))\n"
     "            (and (>= X_0 1) (<= X_0 2) (>= Y_1 1))))\n", 5, "not supported"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "fragment"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_files_name_file_and_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = tmp_path / "bad.vnnlib"
    path.write_text(text)
    with pytest.raises(VnnlibError) as info:
        read_vnnlib(path)
    message = str(info.value)
    assert isinstance(info.value, FaithverifyError)
    assert info.value.line == line, message
    assert message.startswith(f"{path}, line {line}: "), message
    assert fragment in message, message


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(VnnlibError, match="cannot read"):
        read_vnnlib(tmp_path / "missing.vnnlib")
    broken = tmp_path / "broken.vnnlib.gz"
    broken.write_bytes(gzip.compress(b"(declare-const X_0 Real)")[:15])
    with pytest.raises(VnnlibError, match="gzip"):
        read_vnnlib(broken)


# ------------------------------------------------------------------------------------------------------------
# VNN-LIB 2.0

ONE_NETWORK = """\
; a single-network query (ACAS Xu-like) in VNN-LIB 2.0
(vnnlib-version <2.0>)
(declare-network acas
    (declare-input X float32 [1,3])
    (declare-output Y float32 [1,3])
)
(assert (and (>= X[0,0] -0.5) (<= X[0,0] 0.5)))
(assert (>= X[0,1] 0.0))
(assert (<= X[0,1] 0.25))
(assert (and (>= X[0,2] 0.125) (<= X[0,2] 0.375)))
(assert (or
    (and (<= Y[0,0] Y[0,1]) (<= Y[0,0] Y[0,2]))
    (>= (+ Y[0,1] (* -2.0 Y[0,2])) 0.0015)
))
"""

TWO_NETWORKS = """\
; teacher and student reading one input
(vnnlib-version <2.0>)
(declare-network teacher
    (declare-input Xt float32 [1,2,2])
    (declare-output Yt float32 [1,2])
)
(declare-network student
    (declare-input Xs float32 [1,2,2])
    (declare-output Ys float32 [1,2])
)
(assert (and (== Xs[0,0,0] Xt[0,0,0]) (== Xs[0,0,1] Xt[0,0,1])))
(assert (== Xt[0,1,0] Xs[0,1,0]))
(assert (== Xs[0,1,1] Xt[0,1,1]))
(assert (and (>= Xt[0,0,0] 0.0) (<= Xt[0,0,0] 1.0) (>= Xt[0,0,1] 0.25) (<= Xt[0,0,1] 0.5)))
(assert (and (>= Xs[0,1,0] -1.0) (<= Xs[0,1,0] 0.0) (>= Xs[0,1,1] 0.5) (<= Xs[0,1,1] 0.75)))
(assert (or
    (>= (- Yt[0,0] Ys[0,0]) 0.2)
    (<= (- Yt[0,1] Ys[0,1]) -0.2)
    (and (>= Ys[0,1] 0.5) (<= (+ Yt[0,0] Ys[0,0]) 1.5))
))
"""


def test_one_network_query() -> None:
    query = parse_query(ONE_NETWORK, "acas2.vnnlib")
    assert query.networks == [Network("acas", "X", (1, 3), "Y", (1, 3), "float32")]
    (box,) = query.input_boxes
    np.testing.assert_array_equal(box.lower, [-0.5, 0.0, 0.125])
    np.testing.assert_array_equal(box.upper, [0.5, 0.25, 0.375])
    first, second = query.unsafe
    np.testing.assert_array_equal(first.a, [[1, -1, 0], [1, 0, -1]])
    np.testing.assert_array_equal(first.b, [0, 0])
    np.testing.assert_array_equal(second.a, [[0, -1, 2]])
    np.testing.assert_array_equal(second.b, [-0.0015])
    assert query.is_unsafe(np.array([0.0, 1.0, 1.0])) and not query.is_unsafe(np.array([1.0, 0.0, 0.0]))


def test_two_network_query() -> None:
    query = parse_query(TWO_NETWORKS)
    assert [n.name for n in query.networks] == ["teacher", "student"]
    assert query.n_inputs == 4 and query.n_outputs == 4
    assert query.output_slices() == {"teacher": slice(0, 2), "student": slice(2, 4)}
    # Bounds stated on either network's input land on the one shared input (flattened row-major).
    (box,) = query.input_boxes
    np.testing.assert_array_equal(box.lower, [0.0, 0.25, -1.0, 0.5])
    np.testing.assert_array_equal(box.upper, [1.0, 0.5, 0.0, 0.75])
    # Outputs are y = [Yt_0, Yt_1, Ys_0, Ys_1].
    expected = [
        ([[-1, 0, 1, 0]], [-0.2]),
        ([[0, 1, 0, -1]], [-0.2]),
        ([[0, 0, 0, -1], [1, 0, 1, 0]], [-0.5, 1.5]),
    ]
    assert len(query.unsafe) == 3
    for conj, (a, b) in zip(query.unsafe, expected, strict=True):
        np.testing.assert_array_equal(conj.a, a)
        np.testing.assert_array_equal(conj.b, b)
    assert query.is_unsafe(np.array([0.7, 0.3, 0.4, 0.6]))  # Yt_0 - Ys_0 = 0.3
    assert not query.is_unsafe(np.array([0.5, 0.5, 0.45, 0.45]))


def pair_like_query(seed: int, boxes: int) -> Query:
    rng = np.random.default_rng(seed)
    nets = [
        Network("teacher", "Xt", (1, 2, 3), "Yt", (1, 3)),
        Network("student", "Xs", (1, 2, 3), "Ys", (1, 3)),
    ]
    input_boxes = []
    for _ in range(boxes):
        lower = rng.normal(size=6)
        lower[:3] = [0.1 + 0.2, 1e-300, -0.0]
        input_boxes.append(Box(lower, lower + rng.random(6)))
    unsafe = [
        Conjunct(np.array([[1.0, 0, 0, -1.0, 0, 0]]), np.array([-0.2])),
        Conjunct(np.array([[-1.0, 0, 0, 1.0, 0, 0]]), np.array([-0.2])),
        Conjunct(rng.normal(size=(2, 6)), np.array([1e-7, 123456789.125])),
        Conjunct(np.array([[0, 0, 0, 0, 0, -1.0]]), np.array([0.0])),
    ]
    return Query(nets, input_boxes, unsafe)


@pytest.mark.parametrize("boxes", [1, 2])
@pytest.mark.parametrize("suffix", [".vnnlib", ".vnnlib.gz"])
def test_query_round_trip(tmp_path: Path, boxes: int, suffix: str) -> None:
    query = pair_like_query(boxes, boxes)
    path = tmp_path / f"q{suffix}"
    write_query(path, query, comment="a two-network query")
    back = read_query(path)
    assert back == query
    assert back.input_boxes[0].lower.tobytes() == query.input_boxes[0].lower.tobytes()


def test_query_written_for_a_pair_reads_like_the_standard_example() -> None:
    text = format_query(pair_like_query(0, 1))
    assert text.startswith("(vnnlib-version <2.0>)")
    assert "(declare-network teacher" in text and "(declare-input Xs float32 [1,2,3])" in text
    assert "(== Xs[0,1,2] Xt[0,1,2])" in text
    assert "(>= (- Ys[0,0] Yt[0,0]) 0.2)" in text and "(>= (- Yt[0,0] Ys[0,0]) 0.2)" in text
    assert (
        "e-" not in text.split("; unsafe set")[0].split("; input region")[1]
    )  # 2.0 numbers have no exponent


V2_HEAD = """\
(vnnlib-version <2.0>)
(declare-network n
    (declare-input X float32 [1,2])
    (declare-output Y float32 [1,2])
)
(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0) (>= X[0,1] 0.0) (<= X[0,1] 1.0)))
"""  # lines 1-6

V2_TWO = """\
(vnnlib-version <2.0>)
(declare-network a
    (declare-input Xa float32 [1,2])
    (declare-output Ya float32 [1,2])
)
(declare-network b
    (declare-input Xb float32 [1,2])
    (declare-output Yb float32 [1,2])
)
(assert (== Xa[0,0] Xb[0,0]))
(assert (and (>= Xa[0,0] 0.0) (<= Xa[0,0] 1.0) (>= Xa[0,1] 0.0) (<= Xa[0,1] 1.0)))
(assert (>= Ya[0,0] Yb[0,0]))
"""

MALFORMED_2 = [
    ("exponent", V2_HEAD + "(assert (>= Y[0,0] 1e-05))\n", 7, "without an exponent"),
    ("unbalanced", V2_HEAD + "(assert (>= Y[0,0] 1.0)\n", 7, "syntax error"),
    ("undeclared variable", V2_HEAD + "\n(assert (>= Z[0,0] 1.0))\n", 8, "Undeclared variable"),
    ("index out of range", V2_HEAD + "(assert (>= Y[0,5] 1.0))\n", 7, "out of bounds"),
    ("non-linear term", V2_HEAD + "(assert (>= (* Y[0,0] Y[0,1]) 1.0))\n", 7, "Non-linear"),
    ("not-equal", V2_HEAD + "(assert (!= Y[0,0] 1.0))\n", 7, "!= is not supported"),
    ("no upper bound", V2_HEAD.replace("(<= X[0,1] 1.0)", "") + "(assert (>= Y[0,0] 1.0))\n", 3, "X[0,1] has no upper"),
    ("untied input without bounds", V2_TWO, 7, "Xb[0,1] has no lower bound"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "fragment"), [m[1:] for m in MALFORMED_2], ids=[m[0] for m in MALFORMED_2]
)
def test_malformed_queries_name_file_and_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = tmp_path / "bad2.vnnlib"
    path.write_text(text)
    with pytest.raises(VnnlibError) as info:
        read_query(path)
    message = str(info.value)
    assert info.value.line == line, message
    assert message.startswith(f"{path}, line {line}: "), message
    assert fragment in message, message


def test_constraints_across_inputs_and_outputs_read_the_input_after_the_outputs() -> None:
    # Y[0,0] >= X[0,0] and X[0,0] + X[0,1] <= 1.5: rows over [Y (2 values), X (2 values)].
    query = parse_query(V2_HEAD + "(assert (>= Y[0,0] X[0,0]))\n(assert (<= (+ X[0,0] X[0,1]) 1.5))\n")
    assert query.reads_inputs and query.shared_input
    (conj,) = query.unsafe
    assert conj.a.tolist() == [[-1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]] and conj.b.tolist() == [0.0, 1.5]
    assert query.is_unsafe(np.array([0.9, 0.0, 0.5, 1.0])) and not query.is_unsafe(
        np.array([0.4, 0, 0.5, 1.0])
    )
    assert parse_query(format_query(query)) == query


def test_networks_with_independent_and_permuted_inputs() -> None:
    text = V2_TWO.replace("(assert (== Xa[0,0] Xb[0,0]))", "(assert (== Xa[0,0] Xb[0,1]))") + (
        "(assert (and (>= Xb[0,0] 2.0) (<= Xb[0,0] 3.0)))\n"
    )
    query = parse_query(text)
    # Xa[0,0] (= Xb[0,1]) and Xa[0,1] are entries 0 and 1; Xb[0,0] is a third, independent one.
    assert not query.shared_input and query.n_inputs == 3
    assert query.input_index is not None and query.input_index["b"].tolist() == [2, 0]
    assert query.input_boxes[0].lower.tolist() == [0.0, 0.0, 2.0]
    assert query.network_input("b", np.array([10.0, 11.0, 12.0])).tolist() == [12.0, 10.0]
    again = parse_query(format_query(query))
    assert again.input_index is not None and again.input_index["b"].tolist() == [2, 0]
    assert again.input_boxes == query.input_boxes and again.unsafe == query.unsafe


def test_real_element_type_and_well_formed_but_unsupported_queries() -> None:
    query = parse_query(V2_HEAD.replace("float32", "real") + "(assert (>= (* 2.0 Y[0,0]) 1.0))\n")
    assert query.networks[0].dtype == "real"
    for extra in ["(assert (!= Y[0,0] 1.0))", "(assert (>= (* Y[0,0] Y[0,1]) 1.0))"]:
        with pytest.raises(VnnlibUnsupported):
            parse_query(V2_HEAD + extra + "\n")
    with pytest.raises(VnnlibUnsupported, match="no upper bound"):
        parse_query(V2_HEAD.replace("(<= X[0,1] 1.0)", "") + "(assert (>= Y[0,0] 1.0))\n")


# ------------------------------------------------------------------------------------------------------------
# export-vnn on the shipped pair


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return session.run(None, {name: x.astype(np.float32)})[0].astype(np.float64)


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, shipped_pair_paths: tuple[Path, Path]) -> Path:
    teacher, student = shipped_pair_paths
    out = tmp_path_factory.mktemp("suite")
    result = invoke("export-vnn", teacher, student, "--n", "2", "--start", "3", "--eps", "0.05", "--eps", "0.3",
                    "--delta", "0.2", "--timeout", "30", "-o", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_export_writes_a_vnncomp_suite(suite: Path) -> None:
    with (suite / "instances.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 4  # 2 points x 2 eps, no header
    for onnx_path, vnnlib_path, timeout in rows:
        assert onnx_path == "onnx/pair_gap.onnx" and float(timeout) == 30
        assert (suite / onnx_path).is_file() and (suite / vnnlib_path).is_file()
        assert (suite / vnnlib_path.replace("vnnlib/", "vnnlib2/", 1)).is_file()
    assert {r[1] for r in rows} == {
        f"vnnlib/pair_{i:05d}_eps_{e}.vnnlib" for i in (3, 4) for e in ("0.05", "0.3")
    }


def test_exported_instances_match_the_original_models(
    suite: Path, shipped_pair_paths: tuple[Path, Path]
) -> None:
    teacher, student = shipped_pair_paths
    sample = np.load(SHIPPED / "sample.npz")
    delta = 0.2
    for index in (3, 4):
        x0 = sample["x"][index].reshape(-1).astype(np.float64)
        for eps in (0.05, 0.3):
            name = f"pair_{index:05d}_eps_{eps!r}.vnnlib"
            prop = read_vnnlib(suite / "vnnlib" / name)
            (box,) = prop.input_boxes
            np.testing.assert_array_equal(box.lower, np.clip(x0 - eps, 0.0, 1.0))
            np.testing.assert_array_equal(box.upper, np.clip(x0 + eps, 0.0, 1.0))
            assert box.lower.min() == 0.0 or eps == 0.05  # the clip did something at the large radius

            centre = box.center.reshape(1, 784)
            expected = softmax(run_ort(teacher, centre)) - softmax(run_ort(student, centre))
            gap = run_ort(suite / "onnx" / "pair_gap.onnx", centre)
            assert gap.shape == (1, 10)
            np.testing.assert_allclose(gap, expected, atol=1e-6)
            # unsafe iff some class's gap reaches delta, in either direction
            for y in (
                gap[0],
                np.full(10, 0.19),
                np.eye(10)[2] * 0.2,
                -np.eye(10)[5] * 0.21,
                np.eye(10)[1] * 0.199,
            ):
                assert prop.is_unsafe(y) == bool(np.max(np.abs(y)) >= delta)

            query = read_query(suite / "vnnlib2" / name)
            assert [n.name for n in query.networks] == ["teacher", "student"]
            assert query.input_boxes == [box]
            p_t = run_ort(suite / "onnx" / "teacher_softmax.onnx", centre)
            p_s = run_ort(suite / "onnx" / "student_softmax.onnx", centre)
            np.testing.assert_allclose(p_t, softmax(run_ort(teacher, centre)), atol=1e-6)
            np.testing.assert_allclose(p_s, softmax(run_ort(student, centre)), atol=1e-6)
            for y in (gap[0], np.eye(10)[2] * 0.2, np.eye(10)[1] * 0.199):
                stacked = np.concatenate([p_s[0] + y, p_s[0]])  # teacher = student + y
                assert query.is_unsafe(stacked) == prop.is_unsafe(y)


def test_export_rejects_bad_input(shipped_pair_paths: tuple[Path, Path], tmp_path: Path) -> None:
    teacher, student = shipped_pair_paths
    out = tmp_path / "s"
    for args, fragment in (
        (["--delta", "1.5"], "delta"),
        (["--delta", "0.2", "--domain", "1", "0"], "domain"),
        (["--delta", "0.2", "--start", "500"], "(200 points)"),
    ):
        result = invoke("export-vnn", teacher, student, "--eps", "0.1", "-o", out, *args)
        assert result.exit_code == 2, result.output
        assert fragment in result.output and "Traceback" not in result.output
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(teacher.read_bytes())
    result = invoke("export-vnn", lone, student, "--eps", "0.1", "--delta", "0.2", "-o", out)
    assert result.exit_code == 2 and "sample.npz" in result.output
    assert not (out / "instances.csv").exists()


def test_a_crash_never_leaves_a_half_written_csv(
    shipped_pair_paths: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = load_pair(*shipped_pair_paths)
    x = np.load(SHIPPED / "sample.npz")["x"][:3]
    (tmp_path / "instances.csv").write_text("old\n")
    calls = []

    def failing_write(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "write_query", failing_write)
    with pytest.raises(ResultsFileError, match="No space left"):
        export_suite(pair, x, [0, 1, 2], [0.1], 0.2, tmp_path)
    assert (tmp_path / "instances.csv").read_text() == "old\n"
    assert not list(tmp_path.rglob("*.tmp"))


def test_gap_property_and_ball() -> None:
    box = ball(np.array([0.0, 0.5, 0.98], dtype=np.float32), 0.05, (0.0, 1.0))
    np.testing.assert_array_equal(box.lower, [0.0, 0.45, np.float64(np.float32(0.98)) - 0.05])
    np.testing.assert_array_equal(box.upper, [0.05, 0.55, 1.0])
    prop = gap_property(box, 0.25, 3)
    assert len(prop.unsafe) == 6
    assert prop.is_unsafe(np.array([0.0, 0.25, -0.25])) and prop.is_unsafe(np.array([0.0, 0.0, -0.25]))
    assert not prop.is_unsafe(np.array([0.24, -0.24, 0.0]))
