"""What does the ONNX graph say: opset, attributes, the one input and output, shapes, the trailing Softmax,
the chain of nodes the output depends on, and the values of nodes computed from constants?
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from faithverify.onnx_io.errors import _Invalid, _one_line, _public_error, _Unsupported

log = logging.getLogger(__name__)

_DEFAULT_DOMAINS = ("", "ai.onnx")
# Nodes that may sit between a final Softmax and the graph output without changing which value is which class.
_SOFTMAX_PASS_THROUGH = ("Identity", "Flatten", "Reshape", "Dropout")


# ----------------------------------------------------------------------------------------------------------
# Small helpers on ONNX protos


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in _DEFAULT_DOMAINS:
            return int(entry.version)
    raise _Invalid("the model imports no default-domain ONNX opset")


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    values = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        values[attr.name] = value.decode() if isinstance(value, bytes) else value
    return values


def _node_labels(graph: onnx.GraphProto) -> list[str]:
    return [node.name or f"<unnamed {node.op_type} node #{k}>" for k, node in enumerate(graph.node)]


def _copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _declared_dims(value: onnx.ValueInfoProto) -> list[int | None] | None:
    """Dims of a declared tensor type (None for a symbolic dim), or None when no shape is declared."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim
    ]


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # shape inference is only a convenience; the converter tracks shapes itself
        log.debug("ONNX shape inference failed: %s", _one_line(exc))
        return model


def _value_dims(model: onnx.ModelProto, name: str) -> list[int | None] | None:
    graph = model.graph
    for value in (*graph.value_info, *graph.input, *graph.output):
        if value.name == name:
            return _declared_dims(value)
    return None


# ----------------------------------------------------------------------------------------------------------
# Inputs, outputs and the trailing Softmax


@dataclass(frozen=True)
class _IOInfo:
    input_name: str
    input_shape: tuple[int, ...]  # per sample: without the batch axis when ``batched``
    output_name: str
    num_classes: int | None  # None when the output's size is not declared
    # Whether the graph's first axis is a batch axis. Without one (a VNN-LIB network over a tensor ``[3]`` or
    # ``[2, 3]``), the whole input is one sample and the torch module adds a batch axis the graph never sees.
    batched: bool = True
    any_output: bool = False  # an output of any shape, flattened row-major (VNN-LIB); else logits [N, C]


def _io_info(model: onnx.ModelProto, any_shape: bool = False, batched: bool = True) -> _IOInfo:
    """The model's one input and output. ``any_shape`` (VNN-LIB networks): any declared input and output
    shape; the first input axis is read as a batch axis only if ``batched`` and it is 1 or symbolic."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    # Older exporters list initializers among the graph inputs; those are not real inputs.
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(repr(v.name) for v in inputs) or "none"
        raise _Invalid(f"the model has {len(inputs)} inputs ({names}); a classifier must have exactly one")
    if len(graph.output) != 1:
        names = ", ".join(repr(v.name) for v in graph.output) or "none"
        raise _Invalid(
            f"the model has {len(graph.output)} outputs ({names}); a classifier must have exactly one"
        )
    value = inputs[0]
    if value.type.tensor_type.elem_type not in (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.FLOAT16,
    ):
        raise _Invalid(f"input {value.name!r} is not a floating-point tensor")
    dims = _declared_dims(value)
    out = graph.output[0]
    out_dims = _declared_dims(out)
    if any_shape:
        return _any_shape_info(value.name, dims, out.name, out_dims, batched)
    if dims is None or len(dims) < 2:
        raise _Invalid(f"input {value.name!r} must have a declared shape [N, ...] with a batch axis first")
    batch = value.type.tensor_type.shape.dim[0]
    if batch.HasField("dim_value") and batch.dim_value > 1:
        raise _Invalid(
            f"input {value.name!r} fixes the batch size to {batch.dim_value}; only 1 or dynamic is supported"
        )
    if any(d is None for d in dims[1:]):
        raise _Invalid(
            f"input {value.name!r} has shape {_fmt_dims(dims)}; all but the batch axis must be fixed"
        )
    if out_dims is not None and len(out_dims) != 2:
        raise _Invalid(f"output {out.name!r} has shape {_fmt_dims(out_dims)}; expected logits [N, C]")
    classes = out_dims[1] if out_dims is not None else None
    return _IOInfo(value.name, tuple(int(d) for d in dims[1:] if d is not None), out.name, classes)


def _any_shape_info(
    name: str, dims: list[int | None] | None, out_name: str, out_dims: list[int | None] | None, batched: bool
) -> _IOInfo:
    if dims is None:
        raise _Invalid(f"input {name!r} has no declared shape")
    if not dims:
        raise _Invalid(f"input {name!r} is a scalar; a tensor of rank 1 or more is needed")
    # A leading 1 or symbolic axis is tried as a batch axis first (the torch module is then the familiar one,
    # convolutions included); a symbolic axis anywhere else leaves the input's size unknown.
    batched = batched and len(dims) >= 2 and dims[0] in (None, 1)
    if any(d is None for d in dims[1 if batched else 0 :]):
        raise _Invalid(
            f"input {name!r} has shape {_fmt_dims(dims)}; all but a leading batch axis must be fixed"
        )
    shape = tuple(int(d) for d in (dims[1:] if batched else dims) if d is not None)
    classes = None
    if out_dims is not None:
        per_sample = out_dims
        if batched:  # without a batch axis in front of the output, the translation decides
            per_sample = out_dims[1:] if out_dims and out_dims[0] in (None, 1) else [None]
        if all(d is not None for d in per_sample):
            classes = math.prod(int(d) for d in per_sample if d is not None)
    return _IOInfo(name, shape, out_name, classes, batched=batched, any_output=True)


def _fmt_dims(dims: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def input_and_output(model: onnx.ModelProto) -> tuple[str, tuple[int, ...], str, int]:
    """``(input name, per-sample input shape, output name, number of classes)`` of a classifier model.

    Raises ModelLoadError when the model does not have one input and one ``[N, C]`` output, or when ``C``
    cannot be found even with ONNX shape inference.
    """
    where = "ONNX model"
    try:
        info = _io_info(model)
        classes = info.num_classes
        if classes is None:
            dims = _value_dims(_infer_shapes(model), info.output_name)
            classes = dims[-1] if dims else None
        if classes is None:
            raise _Invalid(f"the class count of output {info.output_name!r} is not declared")
        return info.input_name, info.input_shape, info.output_name, int(classes)
    except Exception as exc:
        raise _public_error(exc, where) from None


def strip_trailing_softmax(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """The logits model: a copy whose final Softmax (possibly followed by Identity/Flatten/Reshape no-ops) is
    replaced by an Identity, so the output keeps its name; and whether a Softmax was removed.

    A final Softmax over an axis other than the class axis raises UnsupportedOperatorError.
    """
    try:
        return _strip_trailing_softmax(model)
    except _Unsupported as exc:
        raise _public_error(exc, "ONNX model") from None


def _strip_trailing_softmax(model: onnx.ModelProto, batched: bool = True) -> tuple[onnx.ModelProto, bool]:
    graph = model.graph
    if len(graph.output) != 1:
        return model, False
    producer = {out: k for k, node in enumerate(graph.node) for out in node.output if out}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    uses[graph.output[0].name] = uses.get(graph.output[0].name, 0) + 1
    k = producer.get(graph.output[0].name)
    while k is not None and graph.node[k].op_type in _SOFTMAX_PASS_THROUGH:
        data = graph.node[k].input[0]
        if uses.get(data, 0) != 1:
            return model, False
        k = producer.get(data)
    if k is None or graph.node[k].op_type != "Softmax" or uses.get(graph.node[k].output[0], 0) != 1:
        return model, False
    _check_softmax_axis(model, k, batched)
    softmax = graph.node[k]
    stripped = _copy_model(model)
    identity = helper.make_node("Identity", [softmax.input[0]], [softmax.output[0]], name=softmax.name)
    stripped.graph.node[k].CopyFrom(identity)
    return stripped, True


def _check_softmax_axis(model: onnx.ModelProto, k: int, batched: bool = True) -> None:
    """The Softmax must normalise over the class axis: every non-batch axis of size > 1, never the batch
    (without a batch axis: every axis of size > 1, so the flattened output is one softmax)."""
    node = model.graph.node[k]
    dims = _value_dims(_infer_shapes(model), node.input[0]) or [None, None]
    rank = len(dims)
    opset = _opset(model)
    # Before opset 13, Softmax coerces its input to 2-D at `axis` (default 1); since, it uses one axis (-1).
    axis = int(_attrs(node).get("axis", 1 if opset < 13 else -1))
    axis = axis + rank if axis < 0 else axis
    axes = set(range(axis, rank)) if opset < 13 else {axis}
    needed = {i for i in range(1 if batched else 0, rank) if dims[i] != 1}
    if (batched and 0 in axes) or not needed <= axes or not 0 <= axis < rank:
        label = node.name or f"<unnamed Softmax node #{k}>"
        raise _Unsupported(
            "Softmax", label, f"softmax over axis {axis} of a rank-{rank} tensor is not over the classes"
        )


# ----------------------------------------------------------------------------------------------------------
# Graph order


def _chain_nodes(
    graph: onnx.GraphProto, input_name: str, output_name: str
) -> list[tuple[str, onnx.NodeProto]]:
    """Nodes in topological order, labelled, without those the output does not depend on."""
    labels = _node_labels(graph)
    available = {init.name for init in graph.initializer} | {v.name for v in graph.input} | {input_name, ""}
    pending = list(zip(labels, graph.node, strict=True))
    ordered: list[tuple[str, onnx.NodeProto]] = []
    while pending:
        ready = [(lab, n) for lab, n in pending if all(i in available for i in n.input)]
        if not ready:
            label, node = pending[0]
            missing = next(i for i in node.input if i not in available)
            raise _Invalid(f"tensor {missing!r} used by node {label!r} is not produced by any node")
        for _, node in ready:
            available.update(node.output)
        ordered += ready
        pending = [(lab, n) for lab, n in pending if all(n is not r for _, r in ready)]
    needed = {output_name}
    kept = []
    for label, node in reversed(ordered):
        if any(out in needed for out in node.output):
            kept.append((label, node))
            needed.update(node.input)
    return kept[::-1]


# ----------------------------------------------------------------------------------------------------------
# Constant evaluation


def _evaluate_constant(node: onnx.NodeProto, opset: int, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run one node on constant inputs with ONNX's reference evaluator (handles every opset's attributes)."""
    inputs = [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None) for name in feeds]
    outputs = [
        helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None) for name in node.output if name
    ]
    graph = helper.make_graph([node], "constant", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]


def _constant_node_value(node: onnx.NodeProto, label: str) -> np.ndarray:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    names = ", ".join(a.name for a in node.attribute) or "none"
    raise _Unsupported("Constant", label, f"constant attribute ({names}) is not supported")
