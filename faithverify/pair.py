"""The paired graph: one model with input ``x`` and outputs ``z_t``, ``z_s`` and ``f_t(x) - f_s(x)``.

The ONNX form is what ``faithverify pair`` writes and what every witness is re-checked on with onnxruntime;
the two networks' torch modules are what gets attacked. Bounds are computed per network (see
:mod:`faithverify.bounds.bounder`), which is equivalent and faster than bounding the merged graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import compose, helper, version_converter

from faithverify.bounds.softmax import softmax_of
from faithverify.errors import ModelLoadError, ModelMismatchError
from faithverify.onnx_io import LoadedModel, load_model, run_onnxruntime

INPUT = "x"
TEACHER_LOGITS = "z_t"
STUDENT_LOGITS = "z_s"
GAP = "gap"  # softmax(z_t) - softmax(z_s), shape [N, C]
_MIN_OPSET = 13  # Softmax over the last axis only means "per row" without the 2-D coercion from opset 13


@dataclass(frozen=True)
class Pair:
    """A validated teacher/student pair and its paired graph."""

    teacher: LoadedModel
    student: LoadedModel
    onnx_model: onnx.ModelProto

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.teacher.input_shape

    @property
    def num_classes(self) -> int:
        return self.teacher.num_classes

    def gap_onnxruntime(self, x: np.ndarray) -> np.ndarray:
        """``f_t(x) - f_s(x)`` per class, [N, C] float64, evaluated by onnxruntime on the paired graph."""
        return _paired_session(self).run(x)[GAP]

    def outputs_onnxruntime(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """All three outputs (``z_t``, ``z_s``, ``gap``) of the paired graph, by onnxruntime, float64."""
        return _paired_session(self).run(x)


def check_compatible(teacher: LoadedModel, student: LoadedModel) -> None:
    """Teacher and student must read the same input and score the same classes."""
    if teacher.input_shape != student.input_shape:
        raise ModelMismatchError(
            f"teacher and student take different input shapes: {list(teacher.input_shape)} "
            f"vs {list(student.input_shape)}"
        )
    if teacher.num_classes != student.num_classes:
        raise ModelMismatchError(
            f"teacher and student have different class counts: {teacher.num_classes} vs {student.num_classes}"
        )


def _default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return _MIN_OPSET


def _at_opset(model: onnx.ModelProto, opset: int, role: str) -> onnx.ModelProto:
    if _default_opset(model) == opset:
        return model
    try:
        return version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises bare RuntimeErrors with C++ messages
        raise ModelLoadError(f"cannot bring the {role} model to opset {opset} for pairing: {exc}") from exc


def build_paired_onnx(teacher: onnx.ModelProto, student: onnx.ModelProto) -> onnx.ModelProto:
    """Merge two single-input, single-output logits models into the paired graph.

    Every name of each model is prefixed (``teacher/``, ``student/``) so the two cannot clash; the shared input
    is fed to both through Identity nodes, and the head is ``Softmax(z_t) - Softmax(z_s)`` over the class axis.
    Both models are first brought to one opset (at least 13) because a graph has a single opset import.
    """
    opset = max(_default_opset(teacher), _default_opset(student), _MIN_OPSET)
    parts = {}
    for role, model in (("teacher", teacher), ("student", student)):
        parts[role] = compose.add_prefix(_at_opset(model, opset, role), prefix=f"{role}/")
    t_graph, s_graph = parts["teacher"].graph, parts["student"].graph

    def real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
        inits = {i.name for i in graph.initializer}
        return [i for i in graph.input if i.name not in inits]

    t_in, s_in = real_inputs(t_graph)[0], real_inputs(s_graph)[0]
    x = onnx.ValueInfoProto()
    x.CopyFrom(t_in)
    x.name = INPUT
    # A graph with a fixed batch of 1 in either model keeps that fixed batch; otherwise the batch is symbolic.
    s_dim0 = s_in.type.tensor_type.shape.dim[0] if s_in.type.tensor_type.shape.dim else None
    if s_dim0 is not None and s_dim0.HasField("dim_value") and s_dim0.dim_value == 1:
        x.type.tensor_type.shape.dim[0].Clear()
        x.type.tensor_type.shape.dim[0].dim_value = 1

    n_classes = None
    for out in t_graph.output:
        dims = out.type.tensor_type.shape.dim
        if dims and dims[-1].HasField("dim_value"):
            n_classes = dims[-1].dim_value
    head_shape: list[int | str | None] = ["N", n_classes]
    nodes = [
        helper.make_node("Identity", [INPUT], [t_in.name], name="pair/feed_teacher"),
        helper.make_node("Identity", [INPUT], [s_in.name], name="pair/feed_student"),
        *t_graph.node,
        *s_graph.node,
        helper.make_node("Identity", [t_graph.output[0].name], [TEACHER_LOGITS], name="pair/teacher_logits"),
        helper.make_node("Identity", [s_graph.output[0].name], [STUDENT_LOGITS], name="pair/student_logits"),
        helper.make_node("Softmax", [TEACHER_LOGITS], ["pair/p_t"], name="pair/softmax_teacher", axis=-1),
        helper.make_node("Softmax", [STUDENT_LOGITS], ["pair/p_s"], name="pair/softmax_student", axis=-1),
        helper.make_node("Sub", ["pair/p_t", "pair/p_s"], [GAP], name="pair/softmax_difference"),
    ]
    elem = t_graph.output[0].type.tensor_type.elem_type
    graph = helper.make_graph(
        nodes,
        "faithverify_pair",
        inputs=[x],
        outputs=[
            helper.make_tensor_value_info(TEACHER_LOGITS, elem, head_shape),
            helper.make_tensor_value_info(STUDENT_LOGITS, elem, head_shape),
            helper.make_tensor_value_info(GAP, elem, head_shape),
        ],
        initializer=[*t_graph.initializer, *s_graph.initializer],
        value_info=[*t_graph.value_info, *s_graph.value_info],
    )
    merged = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="faithverify",
        doc_string="Paired teacher/student graph: outputs z_t, z_s and softmax(z_t) - softmax(z_s).",
    )
    merged.ir_version = max(parts["teacher"].ir_version, parts["student"].ir_version)
    return merged


def pair_models(
    teacher: LoadedModel, student: LoadedModel, check: bool = True, tolerance: float = 1e-5
) -> Pair:
    """Pair two loaded models; with ``check``, the paired ONNX must reproduce the separate models."""
    check_compatible(teacher, student)
    paired = build_paired_onnx(teacher.onnx_model, student.onnx_model)
    pair = Pair(teacher, student, paired)
    if check:
        rng = np.random.default_rng(0)
        x = rng.random((8, *teacher.input_shape), dtype=np.float32)
        expected = softmax_of(run_onnxruntime(teacher.onnx_model, x)) - softmax_of(
            run_onnxruntime(student.onnx_model, x)
        )
        got = pair.gap_onnxruntime(x)
        diff = float(np.max(np.abs(got - expected)))
        if not diff <= tolerance:
            raise ModelLoadError(f"the paired graph disagrees with the separate models by {diff:.3g}")
    return pair


def load_pair(
    teacher_path: str | Path, student_path: str | Path, domain: tuple[float, float] = (0.0, 1.0)
) -> Pair:
    """Load, validate (against onnxruntime) and pair a teacher and a student ONNX file."""
    teacher = _classifier(load_model(teacher_path, domain=domain), teacher_path)
    student = _classifier(load_model(student_path, domain=domain), student_path)
    return pair_models(teacher, student)


def _classifier(model: LoadedModel, path: str | Path) -> LoadedModel:
    """A pair's model must score at least 2 classes: the softmax of one class is the constant 1, so there is no
    confidence to compare (and every bound of the pipeline assumes some pair of classes)."""
    if model.num_classes < 2:
        raise ModelLoadError(
            f"{path}: {model.num_classes} output class; a teacher or student needs at least 2 (the softmax of "
            "one class is always 1)"
        )
    return model


class _Session:
    """An onnxruntime session over the paired graph that also handles a batch dimension fixed to 1."""

    def __init__(self, model: onnx.ModelProto) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        dims = model.graph.input[0].type.tensor_type.shape.dim
        self.fixed_batch = bool(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1
        self.names = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        chunks = [x[i : i + 1] for i in range(len(x))] if self.fixed_batch else [x]
        outs = [self.session.run(self.names, {INPUT: c}) for c in chunks]
        return {
            name: np.concatenate([o[k] for o in outs]).astype(np.float64) for k, name in enumerate(self.names)
        }


_SESSIONS: dict[int, tuple[onnx.ModelProto, _Session]] = {}


def _paired_session(pair: Pair) -> _Session:
    # Keyed by object identity; the model is kept in the value so its id cannot be reused while cached.
    key = id(pair.onnx_model)
    if key not in _SESSIONS:
        _SESSIONS[key] = (pair.onnx_model, _Session(pair.onnx_model))
    return _SESSIONS[key][1]
