"""A teacher/student pair as a VNN-COMP-style benchmark suite, in VNN-LIB 1.0 and 2.0.

For a point ``x0``, a radius ``eps`` and a threshold ``delta`` the question is whether some input in the box
``B = [x0 - eps, x0 + eps] ∩ domain`` has a class ``i`` with ``|softmax(teacher(x))_i - softmax(student(x))_i|
>= delta``. Both forms ask it as "is the unsafe set reachable": ``sat`` is a violation, ``unsat`` certifies
``max_x ||f_t(x) - f_s(x)||_inf < delta`` on ``B``.

- **VNN-LIB 1.0** (one network): the paired graph with the single output ``gap = f_t(x) - f_s(x)``
  (``onnx/pair_gap.onnx``) and the unsafe set ``or_i (Y_i >= delta) or (Y_i <= -delta)``.
- **VNN-LIB 2.0** (two networks): ``teacher`` and ``student`` with a Softmax appended
  (``onnx/teacher_softmax.onnx``, ``onnx/student_softmax.onnx``), their inputs declared equal, and the unsafe
  set ``or_i (Yt_i - Ys_i >= delta) or (Ys_i - Yt_i >= delta)``: linear because the outputs are probabilities.

Layout of a suite folder::

    instances.csv           onnx,vnnlib,timeout rows (paths relative to the CSV, no header), the 1.0 instances
    onnx/pair_gap.onnx      input x [1, ...], output gap [1, C]
    onnx/teacher_softmax.onnx, onnx/student_softmax.onnx
    vnnlib/pair_<index>_eps_<eps>.vnnlib     (1.0)
    vnnlib2/pair_<index>_eps_<eps>.vnnlib    (2.0: run with --network teacher=... --network student=...)

Every ONNX model is given a batch dimension of 1, as VNN-COMP models have, and is checked with onnxruntime on
the exported points before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from faithverify.errors import ModelLoadError, ResultsFileError
from faithverify.onnx_io import run_onnxruntime
from faithverify.pair import GAP, Pair
from faithverify.vnn.vnnlib import (
    Box,
    Conjunct,
    Property,
    write_bytes_atomic,
    write_text_atomic,
    write_vnnlib,
)
from faithverify.vnn.vnnlib2 import Network, Query, write_query

GAP_MODEL = "onnx/pair_gap.onnx"
TEACHER_MODEL = "onnx/teacher_softmax.onnx"
STUDENT_MODEL = "onnx/student_softmax.onnx"
INSTANCES = "instances.csv"
_CHECK_TOLERANCE = 1e-5  # probabilities in float32; the exported graphs compute exactly what the pair does


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def batch_of_one(model: onnx.ModelProto) -> None:
    """Fix axis 0 of the graph's real inputs and its outputs to 1 (in place)."""
    initializers = {i.name for i in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in initializers] + list(model.graph.output)
    for value in values:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = 1


def gap_only_onnx(paired: onnx.ModelProto) -> onnx.ModelProto:
    """The paired graph (see :func:`faithverify.pair.build_paired_onnx`) with ``gap`` as its only output.

    ``gap = softmax(z_t) - softmax(z_s)``, shape ``[1, C]``; the input keeps its name ``x``, batch fixed to 1.
    """
    model = _copy(paired)
    keep = [o for o in model.graph.output if o.name == GAP]
    if len(keep) != 1:
        raise ValueError(f"not a paired graph: it has no output {GAP!r}")
    del model.graph.output[:]
    model.graph.output.extend(keep)
    batch_of_one(model)
    model.doc_string = "Paired teacher/student graph with one output: gap = softmax(z_t) - softmax(z_s)."
    onnx.checker.check_model(model)
    return model


def with_softmax(logits_model: onnx.ModelProto) -> onnx.ModelProto:
    """A single-output ``[N, C]`` logits model with ``Softmax`` over the classes appended (batch fixed to 1).

    At every opset, ``axis=-1`` of a 2-D tensor is the class axis (before opset 13 the input is coerced to 2-D
    at that axis, which for ``[N, C]`` changes nothing).
    """
    model = _copy(logits_model)
    graph = model.graph
    if len(graph.output) != 1:
        raise ValueError(f"expected one output, the model has {len(graph.output)}")
    logits = graph.output[0]
    taken = {n for node in graph.node for n in [*node.input, *node.output]} | {i.name for i in graph.input}
    name = "probabilities"
    while name in taken:
        name += "_"
    graph.node.append(helper.make_node("Softmax", [logits.name], [name], name=f"{name}/softmax", axis=-1))
    out = onnx.ValueInfoProto()
    out.CopyFrom(logits)
    out.name = name
    del graph.output[:]
    graph.output.append(out)
    batch_of_one(model)
    onnx.checker.check_model(model)
    return model


def ball(x0: np.ndarray, eps: float, domain: tuple[float, float] = (0.0, 1.0)) -> Box:
    """``[x0 - eps, x0 + eps] ∩ [domain]`` over the flattened ``x0``, in float64."""
    x = np.asarray(x0, dtype=np.float64).reshape(-1)
    return Box(np.clip(x - eps, domain[0], domain[1]), np.clip(x + eps, domain[0], domain[1]))


def gap_property(box: Box, delta: float, n_classes: int) -> Property:
    """The 1.0 property on the gap-only graph: unsafe iff some ``Y_i >= delta`` or ``Y_i <= -delta``."""
    unsafe = []
    for i in range(n_classes):
        e = np.zeros((1, n_classes))
        e[0, i] = 1.0
        unsafe += [
            Conjunct(-e, np.array([-delta])),
            Conjunct(e, np.array([-delta])),
        ]  # -Y_i <= -delta ; Y_i <= -delta
    return Property([box], unsafe)


def pair_query(box: Box, delta: float, input_shape: Sequence[int], n_classes: int) -> Query:
    """The 2.0 query: teacher and student on one input; unsafe iff some ``|Yt_i - Ys_i| >= delta``."""
    x_shape, y_shape = (1, *(int(d) for d in input_shape)), (1, n_classes)
    networks = [
        Network("teacher", "Xt", x_shape, "Yt", y_shape),
        Network("student", "Xs", x_shape, "Ys", y_shape),
    ]
    unsafe = []
    for i in range(n_classes):
        d = np.zeros((1, 2 * n_classes))
        d[0, i], d[0, n_classes + i] = 1.0, -1.0  # Yt_i - Ys_i
        unsafe += [Conjunct(-d, np.array([-delta])), Conjunct(d, np.array([-delta]))]
    return Query(networks, [box], unsafe)


@dataclass(frozen=True)
class Instance:
    """One exported instance; the paths are relative to the suite folder."""

    index: int
    eps: float
    onnx: str
    vnnlib: str
    vnnlib2: str
    timeout: float


def _eps_text(eps: float) -> str:
    return repr(float(eps))


def _check_models(pair: Pair, models: dict[str, onnx.ModelProto], x: np.ndarray) -> None:
    """The exported graphs must compute, with onnxruntime, what the pair computes on the exported points."""
    expected = pair.gap_onnxruntime(x)
    gap = run_onnxruntime(models[GAP_MODEL], x)
    split = run_onnxruntime(models[TEACHER_MODEL], x) - run_onnxruntime(models[STUDENT_MODEL], x)
    for what, got in (("the gap-only graph", gap), ("the softmax teacher minus student", split)):
        diff = float(np.max(np.abs(got - expected)))
        if not diff <= _CHECK_TOLERANCE:
            raise ModelLoadError(f"{what} disagrees with the paired graph by {diff:.3g}")


def export_suite(
    pair: Pair,
    x: np.ndarray,
    indices: Sequence[int] | np.ndarray,
    eps_list: Sequence[float],
    delta: float,
    out_dir: str | Path,
    domain: tuple[float, float] = (0.0, 1.0),
    timeout: float = 60.0,
) -> list[Instance]:
    """Write the suite for points ``x [N, *input_shape]`` (dataset indices ``indices``), every eps.

    ``instances.csv`` is written last and atomically: a crash leaves either the previous CSV or the new one.
    """
    if len(x) != len(indices):
        raise ValueError(f"{len(x)} points but {len(indices)} indices")
    if not (math.isfinite(delta) and math.isfinite(timeout) and timeout > 0):
        raise ValueError("delta and timeout must be finite, timeout > 0")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ResultsFileError(f"cannot write the suite to {out}: it is not a directory")
    x = np.asarray(x, dtype=np.float32)
    models = {
        GAP_MODEL: gap_only_onnx(pair.onnx_model),
        TEACHER_MODEL: with_softmax(pair.teacher.onnx_model),
        STUDENT_MODEL: with_softmax(pair.student.onnx_model),
    }
    if len(x):
        _check_models(pair, models, x)
    n_classes = pair.num_classes
    teacher = pair.teacher.path.name if pair.teacher.path else "teacher"
    student = pair.student.path.name if pair.student.path else "student"
    instances: list[Instance] = []
    try:
        for rel, model in models.items():
            write_bytes_atomic(out / rel, model.SerializeToString())
        for index, x0 in zip(indices, x, strict=True):
            for eps in dict.fromkeys(float(e) for e in eps_list):
                box = ball(x0, eps, domain)
                stem = f"pair_{int(index):05d}_eps_{_eps_text(eps)}.vnnlib"
                about = (
                    f"faithverify export-vnn: teacher {teacher}, student {student}, point {int(index)}, "
                    f"eps {_eps_text(eps)}, domain {list(domain)}, delta {delta!r}.\n"
                    f"unsat certifies max |softmax(teacher(x)) - softmax(student(x))|_inf < {delta!r} "
                    "on the box; sat is a violation."
                )
                write_vnnlib(
                    out / "vnnlib" / stem,
                    gap_property(box, delta, n_classes),
                    comment=f"{about}\nNetwork: {GAP_MODEL} (output gap = f_t(x) - f_s(x)).",
                )
                write_query(
                    out / "vnnlib2" / stem,
                    pair_query(box, delta, pair.input_shape, n_classes),
                    comment=f"{about}\nNetworks: teacher={TEACHER_MODEL} student={STUDENT_MODEL}.",
                )
                instances.append(
                    Instance(int(index), eps, GAP_MODEL, f"vnnlib/{stem}", f"vnnlib2/{stem}", timeout)
                )
        rows = "".join(f"{i.onnx},{i.vnnlib},{i.timeout:g}\n" for i in instances)
        write_text_atomic(out / INSTANCES, rows)
    except OSError as exc:
        raise ResultsFileError(f"cannot write the suite to {out}: {exc.strerror or exc}") from exc
    return instances
