"""Load ONNX classifiers, translate them into chains of torch modules, and cross-check with onnxruntime.

The translator handles feed-forward classifiers: every node takes the output of the previous one plus
constants. The result is built from standard torch modules (Linear, Conv2d, ReLU, pooling, reshapes and a few
tiny constant-operand modules) so that auto_LiRPA can trace and bound it.

Conventions used throughout: a "per-sample shape" excludes the batch axis, which is always axis 0 of the
single input. Internal errors are raised as ``_Unsupported`` / ``_Invalid`` (without the file name) and turned
into :class:`UnsupportedOperatorError` / :class:`ModelLoadError` naming the file at the public boundary.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import Tensor, nn

from faithverify.errors import FaithverifyError, ModelLoadError, UnsupportedOperatorError

__all__ = [
    "ConstAdd",
    "ConstDiv",
    "ConstMul",
    "ConstRSub",
    "ConstSub",
    "ConvertedModel",
    "LoadedModel",
    "Reshape",
    "Transpose",
    "input_and_output",
    "load_model",
    "load_model_proto",
    "run_onnxruntime",
    "strip_trailing_softmax",
]

log = logging.getLogger(__name__)

NOT_A_CHAIN = "graph is not a feed-forward chain"
# Before opset 7, elementwise ops broadcast by an `axis` attribute and BatchNormalization differs.
_MIN_OPSET = 7
_DEFAULT_DOMAINS = ("", "ai.onnx")
# Nodes that may sit between a final Softmax and the graph output without changing which value is which class.
_SOFTMAX_PASS_THROUGH = ("Identity", "Flatten", "Reshape", "Dropout")
# Shape computations are evaluated twice, with these two batch sizes, to see which entries are the batch.
_PROBE_BATCHES = (2, 3)
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


# ----------------------------------------------------------------------------------------------------------
# Errors


class _Unsupported(Exception):
    """An operator or attribute outside the supported set; becomes UnsupportedOperatorError."""

    def __init__(self, op_type: str, node_name: str, detail: str) -> None:
        super().__init__(detail)
        self.op_type, self.node_name, self.detail = op_type, node_name, detail


class _Invalid(Exception):
    """The model is not a classifier we can load; becomes ModelLoadError with the file name in front."""


def _one_line(exc: BaseException, limit: int = 200) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _public_error(exc: Exception, where: str) -> FaithverifyError:
    if isinstance(exc, _Unsupported):
        return UnsupportedOperatorError(exc.op_type, exc.node_name, f"{exc.detail} (in {where})")
    if isinstance(exc, FaithverifyError):
        return exc
    if isinstance(exc, _Invalid):
        return ModelLoadError(f"{where}: {exc}")
    # onnx / protobuf / torch failures on malformed models: one line, never a raw traceback.
    return ModelLoadError(f"{where}: cannot load the model ({type(exc).__name__}: {_one_line(exc)})")


# ----------------------------------------------------------------------------------------------------------
# Torch modules the translation produces


class Reshape(nn.Module):
    """Reshape every sample to ``shape``; the batch size stays free."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(d) for d in shape)

    def forward(self, x: Tensor) -> Tensor:
        if len(self.shape) == 1:
            return x.flatten(1)  # the form auto_LiRPA traces most simply
        # -1, not x.shape[0]: auto_LiRPA's trace would freeze x.shape[0] to the example's batch size.
        return x.reshape(-1, *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Transpose(nn.Module):
    """Permute axes; ``perm`` includes the batch axis, which stays at 0."""

    def __init__(self, perm: Sequence[int]) -> None:
        super().__init__()
        self.perm = tuple(int(p) for p in perm)

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.perm)

    def extra_repr(self) -> str:
        return f"perm={self.perm}"


class _ConstOp(nn.Module):
    """Elementwise operation with a constant ``c`` (a buffer, so .double()/.cuda() move it along)."""

    c: Tensor

    def __init__(self, c: Tensor) -> None:
        super().__init__()
        self.register_buffer("c", c)

    def affine(self) -> tuple[Tensor, Tensor]:
        """``(a, b)`` with ``forward(x) == a * x + b``; used to fold the operation into a Linear."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"c_shape={tuple(self.c.shape)}"


class ConstAdd(_ConstOp):
    def forward(self, x: Tensor) -> Tensor:
        return x + self.c

    def affine(self) -> tuple[Tensor, Tensor]:
        return torch.ones_like(self.c), self.c


class ConstSub(_ConstOp):
    def forward(self, x: Tensor) -> Tensor:
        return x - self.c

    def affine(self) -> tuple[Tensor, Tensor]:
        return torch.ones_like(self.c), -self.c


class ConstRSub(_ConstOp):
    def forward(self, x: Tensor) -> Tensor:
        return self.c - x

    def affine(self) -> tuple[Tensor, Tensor]:
        return -torch.ones_like(self.c), self.c


class ConstMul(_ConstOp):
    def forward(self, x: Tensor) -> Tensor:
        return x * self.c

    def affine(self) -> tuple[Tensor, Tensor]:
        return self.c, torch.zeros_like(self.c)


class ConstDiv(_ConstOp):
    def forward(self, x: Tensor) -> Tensor:
        return x / self.c

    def affine(self) -> tuple[Tensor, Tensor]:
        return 1.0 / self.c, torch.zeros_like(self.c)


_MOVEMENT = (Reshape, Transpose, nn.Flatten)
_LayerT = TypeVar("_LayerT", nn.Linear, nn.Conv2d)


class ConvertedModel(nn.Module):
    """An ONNX classifier as a chain of torch modules: ``[N, *input_shape] -> logits [N, C]``."""

    def __init__(self, layers: Sequence[nn.Module], shapes: Sequence[tuple[int, ...]]) -> None:
        super().__init__()
        if len(shapes) != len(layers) + 1:
            raise ValueError("shapes needs one entry per layer input plus the output")
        self.layers = nn.ModuleList(layers)
        # shapes[i]: per-sample shape entering layers[i]; shapes[-1]: the output's per-sample shape.
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.input_shape = self.shapes[0]
        self.num_classes = self.shapes[-1][-1] if self.shapes[-1] else 1
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def flat_body(self) -> nn.Sequential:
        """The same function for a flat input ``[N, prod(input_shape)]``.

        Leading reshapes, transposes and constant elementwise operations are folded into the first Linear (a
        column permutation and scaling), so that the perturbed input meets the Linear directly, which
        auto_LiRPA bounds exactly and fast. A model that starts with a Conv gets one Reshape in front (with
        leading elementwise operations folded into the Conv where that is exact). Modules other than a folded
        Linear/Conv are shared with this model, not copied.
        """
        layers = list(self.layers)
        n_lead = 0
        while n_lead < len(layers) and isinstance(layers[n_lead], (*_MOVEMENT, _ConstOp)):
            n_lead += 1
        lead, rest = layers[:n_lead], layers[n_lead:]
        shape_in = self.shapes[n_lead]
        first = rest[0] if rest else None
        if isinstance(first, nn.Linear) and math.prod(shape_in[:-1]) == 1:
            linear = _fold_lead_into_linear(lead, first, self.input_shape)
            out_shape = self.shapes[n_lead + 1]
            tail: list[nn.Module] = [Reshape(out_shape)] if len(out_shape) != 1 else []
            return nn.Sequential(linear, *tail, *rest[1:])
        if isinstance(first, nn.Conv2d) and lead:
            conv = _fold_lead_into_conv(lead, first, self.input_shape, shape_in)
            if conv is not None:
                return nn.Sequential(Reshape(shape_in), conv, *rest[1:])
        if all(isinstance(m, _MOVEMENT) for m in lead) and _keeps_flat_order(lead, self.input_shape):
            head = [Reshape(shape_in)] if len(shape_in) != 1 else []
            return nn.Sequential(*head, *rest)
        head = [Reshape(self.input_shape)] if len(self.input_shape) != 1 else []
        return nn.Sequential(*head, *layers)


def _flat_index_map(lead: Sequence[nn.Module], input_shape: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Track the leading movement/elementwise layers on flat positions.

    Returns ``(idx, scale, shift)`` (float64, flat) with ``flatten(lead(x))[j] == scale[j] * x_flat[idx[j]] +
    shift[j]``. Positions are carried as float64 numbers, exact up to 2**53.
    """
    size = math.prod(input_shape)
    idx = torch.arange(size, dtype=torch.float64).reshape(1, *input_shape)
    scale, shift = torch.ones_like(idx), torch.zeros_like(idx)
    with torch.no_grad():
        for module in lead:
            if isinstance(module, _ConstOp):
                a, b = (t.detach().to("cpu", torch.float64) for t in module.affine())
                scale, shift = scale * a, shift * a + b
            else:
                idx, scale, shift = module(idx), module(scale), module(shift)
    return idx.reshape(-1), scale.reshape(-1), shift.reshape(-1)


def _is_identity_order(idx: Tensor) -> bool:
    return bool(torch.equal(idx, torch.arange(len(idx), dtype=torch.float64)))


def _keeps_flat_order(lead: Sequence[nn.Module], input_shape: tuple[int, ...]) -> bool:
    return _is_identity_order(_flat_index_map(lead, input_shape)[0])


def _fold_lead_into_linear(
    lead: Sequence[nn.Module], linear: nn.Linear, input_shape: tuple[int, ...]
) -> nn.Linear:
    """A Linear on the flat input equal to ``linear(lead(x))``."""
    idx, scale, shift = _flat_index_map(lead, input_shape)
    weight = linear.weight.detach().to("cpu", torch.float64)
    bias = _bias64(linear, weight.shape[0])
    new_weight = torch.zeros_like(weight)
    new_weight[:, idx.long()] = weight * scale[None, :]
    return _with_parameters(linear, new_weight, bias + weight @ shift)


def _fold_lead_into_conv(
    lead: Sequence[nn.Module], conv: nn.Conv2d, input_shape: tuple[int, ...], conv_shape: tuple[int, ...]
) -> nn.Conv2d | None:
    """A Conv equal to ``conv(lead(x))`` on ``x`` reshaped to ``conv_shape``, or None where that is not exact:
    the lead must keep the flat order and be per-channel, and a shift cannot pass zero padding."""
    idx, scale, shift = _flat_index_map(lead, input_shape)
    if not _is_identity_order(idx) or conv.groups != 1:
        return None
    a = _per_channel(scale.reshape(conv_shape).numpy(), 0)
    b = _per_channel(shift.reshape(conv_shape).numpy(), 0)
    if a is None or b is None or (np.any(b != 0) and any(int(p) != 0 for p in np.ravel(conv.padding))):
        return None
    weight = conv.weight.detach().to("cpu", torch.float64)
    a_t, b_t = torch.from_numpy(a.copy()), torch.from_numpy(b.copy())
    new_bias = _bias64(conv, weight.shape[0]) + weight.sum(dim=(2, 3)) @ b_t
    return _with_parameters(conv, weight * a_t[None, :, None, None], new_bias)


def _bias64(layer: nn.Linear | nn.Conv2d, size: int) -> Tensor:
    if layer.bias is None:
        return torch.zeros(size, dtype=torch.float64)
    return layer.bias.detach().to("cpu", torch.float64)


def _with_parameters(layer: _LayerT, weight: Tensor, bias: Tensor) -> _LayerT:
    """A copy of ``layer`` (same device, dtype, hyper-parameters) with new weight and bias."""
    new = copy.deepcopy(layer)
    if new.bias is None:
        new.bias = nn.Parameter(new.weight.new_zeros(new.weight.shape[0]))
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    new.requires_grad_(False)
    return new.eval()


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
    input_shape: tuple[int, ...]
    output_name: str
    num_classes: int | None  # None when the output's class dim is not declared


def _io_info(model: onnx.ModelProto) -> _IOInfo:
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
    out = graph.output[0]
    out_dims = _declared_dims(out)
    if out_dims is not None and len(out_dims) != 2:
        raise _Invalid(f"output {out.name!r} has shape {_fmt_dims(out_dims)}; expected logits [N, C]")
    classes = out_dims[1] if out_dims is not None else None
    return _IOInfo(value.name, tuple(int(d) for d in dims[1:] if d is not None), out.name, classes)


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


def _strip_trailing_softmax(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
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
    _check_softmax_axis(model, k)
    softmax = graph.node[k]
    stripped = _copy_model(model)
    identity = helper.make_node("Identity", [softmax.input[0]], [softmax.output[0]], name=softmax.name)
    stripped.graph.node[k].CopyFrom(identity)
    return stripped, True


def _check_softmax_axis(model: onnx.ModelProto, k: int) -> None:
    """The Softmax must normalise over the class axis: every non-batch axis of size > 1, never the batch."""
    node = model.graph.node[k]
    dims = _value_dims(_infer_shapes(model), node.input[0]) or [None, None]
    rank = len(dims)
    opset = _opset(model)
    # Before opset 13, Softmax coerces its input to 2-D at `axis` (default 1); since, it uses one axis (-1).
    axis = int(_attrs(node).get("axis", 1 if opset < 13 else -1))
    axis = axis + rank if axis < 0 else axis
    axes = set(range(axis, rank)) if opset < 13 else {axis}
    needed = {i for i in range(1, rank) if dims[i] != 1}
    if 0 in axes or not needed <= axes or not 0 <= axis < rank:
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
# The translator


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


def _flat_order_kept(shape: tuple[int, ...], perm: Sequence[int]) -> bool:
    """Whether permuting a per-sample tensor keeps the flat order: the axes of size > 1 keep their order."""
    moved = [p for p in perm if shape[p] > 1]
    return moved == sorted(moved)


def _linear(weight: np.ndarray, bias: np.ndarray) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], dtype=torch.float64)
    _set_parameters(layer, weight, bias)
    return layer


def _set_parameters(layer: nn.Linear | nn.Conv2d, weight: np.ndarray, bias: np.ndarray) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float64)))
        if layer.bias is not None:
            layer.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float64)))


def _per_channel(full: np.ndarray, axis: int) -> np.ndarray | None:
    """The values along ``axis`` if ``full`` is constant over all other axes, else None."""
    moved = np.moveaxis(full, axis, 0).reshape(full.shape[axis], -1)
    return moved[:, 0] if np.all(moved == moved[:, :1]) else None


Handler = Callable[["_Translator", onnx.NodeProto, str, int], None]


class _Translator:
    """Walks the chain once, emitting float64 torch modules and tracking the per-sample shape."""

    def __init__(self, model: onnx.ModelProto, info: _IOInfo) -> None:
        self.opset = _opset(model)
        self.info = info
        consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        # Two worlds differing only in the batch size, so shape arithmetic reveals which values are the batch.
        self.consts: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] = (consts, dict(consts))
        self.batch_dependent: set[str] = set()
        self.dyn_shapes: dict[str, tuple[int, ...]] = {info.input_name: info.input_shape}
        self.current = info.input_name
        self.layers: list[nn.Module] = []
        self.shapes: list[tuple[int, ...]] = [info.input_shape]
        self.graph = model.graph

    # -- bookkeeping ---------------------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        return self.shapes[-1]

    def const(self, name: str, op: str, label: str) -> np.ndarray:
        if name in self.batch_dependent:
            raise _Unsupported(op, label, f"operand {name!r} depends on the batch size")
        return self.consts[0][name]

    def append(self, module: nn.Module, op: str, label: str) -> None:
        probe = torch.zeros(_PROBE_BATCHES[0], *self.shape, dtype=torch.float64)
        try:
            with torch.no_grad():
                out = module(probe)
        except RuntimeError as exc:
            shape = _fmt_dims([None, *self.shape])
            raise _Invalid(f"node {label!r} ({op}) does not fit its input {shape}: {_one_line(exc)}") from exc
        self.layers.append(module)
        self.shapes.append(tuple(out.shape[1:]))

    def reshape_to(self, shape: Sequence[int], op: str, label: str) -> None:
        if tuple(shape) != self.shape:
            self.append(Reshape(shape), op, label)

    def transpose(self, perm: Sequence[int], op: str, label: str) -> None:
        """Per-sample ``perm``; a permutation that keeps the flat order becomes a cheaper Reshape."""
        new_shape = tuple(self.shape[p] for p in perm)
        if _flat_order_kept(self.shape, perm):
            self.reshape_to(new_shape, op, label)
        else:
            self.append(Transpose((0, *(p + 1 for p in perm))), op, label)

    def per_sample(self, c: np.ndarray, op: str, label: str) -> np.ndarray:
        """A constant operand of an elementwise op, without the batch axis; it must not grow the tensor."""
        c = np.asarray(c, dtype=np.float64)
        if c.ndim == len(self.shape) + 1:
            if c.shape[0] != 1:
                raise _Unsupported(
                    op, label, f"constant of shape {list(c.shape)} varies along the batch axis"
                )
            c = c[0]
        try:
            grown = np.broadcast_shapes(c.shape, self.shape) != self.shape
        except ValueError:
            grown = True
        if c.ndim > len(self.shape) or grown:
            shape = _fmt_dims([None, *self.shape])
            raise _Unsupported(
                op, label, f"constant of shape {list(c.shape)} does not broadcast onto {shape}"
            )
        return c

    def full_rank(self, c: np.ndarray) -> Tensor:
        """``c`` as a tensor with a leading batch axis of 1 and the input's rank: auto_LiRPA 0.3 reads the
        first axis of a constant operand as the batch axis."""
        c = np.asarray(c, dtype=np.float64)
        return torch.from_numpy(c.reshape(1, *[1] * (len(self.shape) - c.ndim), *c.shape).copy())

    def affine(self, a: np.ndarray, b: np.ndarray, modules: Sequence[nn.Module], op: str, label: str) -> None:
        """Apply ``a * x + b``: folded into the previous Linear/Conv when per-channel, else as ``modules``."""
        a_full = np.broadcast_to(np.asarray(a, dtype=np.float64), self.shape)
        b_full = np.broadcast_to(np.asarray(b, dtype=np.float64), self.shape)
        if not self._fold_into_previous(a_full, b_full):
            for module in modules:
                self.append(module, op, label)

    def _fold_into_previous(self, a_full: np.ndarray, b_full: np.ndarray) -> bool:
        """Fold into the last Linear/Conv, looking through the reshapes/transposes emitted after it."""
        k = len(self.layers) - 1
        while k >= 0 and isinstance(self.layers[k], _MOVEMENT):
            k -= 1
        last = self.layers[k] if k >= 0 else None
        if not isinstance(last, (nn.Linear, nn.Conv2d)) or last.bias is None:
            return False
        if not (np.all(np.isfinite(a_full)) and np.all(np.isfinite(b_full))):
            return False
        out_shape = self.shapes[k + 1]
        # Where each value of the layer's output ends up after the trailing movement layers.
        idx = torch.arange(math.prod(out_shape), dtype=torch.float64).reshape(1, *out_shape)
        with torch.no_grad():
            for module in self.layers[k + 1 :]:
                idx = module(idx)
        order = idx.reshape(-1).long().numpy()
        a_out, b_out = np.empty(len(order)), np.empty(len(order))
        a_out[order], b_out[order] = a_full.reshape(-1), b_full.reshape(-1)
        axis = len(out_shape) - 1 if isinstance(last, nn.Linear) else 0
        a = _per_channel(a_out.reshape(out_shape), axis)
        b = _per_channel(b_out.reshape(out_shape), axis)
        if a is None or b is None:
            return False
        with torch.no_grad():
            scale = torch.from_numpy(a.copy())
            last.weight.mul_(scale.reshape(-1, *[1] * (last.weight.dim() - 1)))
            last.bias.mul_(scale).add_(torch.from_numpy(b.copy()))
        return True

    # -- the walk ------------------------------------------------------------------------------------------

    def run(self, nodes: Sequence[tuple[str, onnx.NodeProto]]) -> ConvertedModel:
        for label, node in nodes:
            self.visit(node, label)
        if self.current != self.info.output_name:
            raise _Invalid(
                f"output {self.info.output_name!r} is not computed from the input by a chain of nodes"
            )
        if len(self.shape) != 1:
            shape = _fmt_dims([None, *self.shape])
            raise _Invalid(f"output {self.info.output_name!r} has shape {shape}; expected logits [N, C]")
        return ConvertedModel(self.layers, self.shapes).float()

    def visit(self, node: onnx.NodeProto, label: str) -> None:
        op = node.op_type
        if node.domain not in _DEFAULT_DOMAINS:
            raise _Unsupported(op, label, f"operators of domain {node.domain!r} are not supported")
        if op == "Constant":
            value = _constant_node_value(node, label)
            for world in self.consts:
                world[node.output[0]] = value
            return
        for name in node.input:
            if name and name not in self.consts[0] and name not in self.dyn_shapes:
                raise _Unsupported(op, label, f"input {name!r} comes from an unsupported secondary output")
        dynamic = [k for k, name in enumerate(node.input) if name and name in self.dyn_shapes]
        if op == "Shape" and dynamic == [0]:
            self._shape_of(node)
            return
        if not dynamic:
            self._fold_constant(node, label)
            return
        handler = _HANDLERS.get(op)
        if handler is None:
            detail = (
                "Softmax is supported only as the final operation (it is stripped: bounds work on logits)"
                if op == "Softmax"
                else "not in the supported operator set"
            )
            raise _Unsupported(op, label, detail)
        if len(dynamic) != 1 or node.input[dynamic[0]] != self.current:
            raise _Unsupported(op, label, NOT_A_CHAIN)
        self._check_extra_outputs(node, label)
        handler(self, node, label, dynamic[0])
        self.current = node.output[0]
        self.dyn_shapes[self.current] = self.shape

    def _check_extra_outputs(self, node: onnx.NodeProto, label: str) -> None:
        extra = [name for name in node.output[1:] if name]
        if not extra:
            return
        if node.op_type == "MaxPool":
            raise _Unsupported("MaxPool", label, "the Indices output is not supported")
        used = {name for n in self.graph.node for name in n.input} | {v.name for v in self.graph.output}
        if any(name in used for name in extra):
            raise _Unsupported(node.op_type, label, "only the first output may be used")

    def _shape_of(self, node: onnx.NodeProto) -> None:
        attrs = _attrs(node)
        start, end = int(attrs.get("start", 0)), attrs.get("end")
        name = node.output[0]
        for world, batch in zip(self.consts, _PROBE_BATCHES, strict=True):
            full = np.array([batch, *self.dyn_shapes[node.input[0]]], dtype=np.int64)
            world[name] = full[start : None if end is None else int(end)]
        if not np.array_equal(self.consts[0][name], self.consts[1][name]):
            self.batch_dependent.add(name)

    def _fold_constant(self, node: onnx.NodeProto, label: str) -> None:
        outputs = [o for o in node.output if o]
        dependent = any(name in self.batch_dependent for name in node.input)
        # A value that does not depend on the batch is computed once and shared by both worlds.
        for k, world in enumerate(self.consts if dependent else self.consts[:1]):
            feeds = {name: world[name] for name in node.input if name}
            try:
                values = _evaluate_constant(node, self.opset, feeds)
            except Exception as exc:
                raise _Unsupported(
                    node.op_type, label, f"cannot evaluate on constants: {_one_line(exc)}"
                ) from exc
            for name, value in zip(outputs, values, strict=False):
                world[name] = value
                if not dependent:
                    self.consts[1 - k][name] = value
        if dependent:
            self.batch_dependent.update(outputs)

    # -- operators -----------------------------------------------------------------------------------------

    def gemm(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        attrs = _attrs(node)
        if pos != 0:
            raise _Unsupported("Gemm", label, "only operand A may be the non-constant input")
        if int(attrs.get("transA", 0)):
            raise _Unsupported("Gemm", label, "transA=1 would transpose the batch axis")
        if len(self.shape) != 1:
            raise _Unsupported("Gemm", label, f"input must be [N, K], got {_fmt_dims([None, *self.shape])}")
        b = self.const(node.input[1], "Gemm", label).astype(np.float64)
        if b.ndim != 2:
            raise _Unsupported("Gemm", label, "B must be a matrix")
        weight = float(attrs.get("alpha", 1.0)) * (b if int(attrs.get("transB", 0)) else b.T)
        bias = np.zeros(weight.shape[0])
        if len(node.input) > 2 and node.input[2]:
            c = self.const(node.input[2], "Gemm", label).astype(np.float64)
            if c.ndim == 2 and c.shape[0] != 1:
                raise _Unsupported("Gemm", label, "C varies along the batch axis")
            bias = float(attrs.get("beta", 1.0)) * np.broadcast_to(c.reshape(-1), weight.shape[:1])
        self.append(_linear(weight, bias), "Gemm", label)

    def matmul(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        w = self.const(node.input[1 - pos], "MatMul", label).astype(np.float64)
        if w.ndim != 2:
            raise _Unsupported(
                "MatMul", label, f"the constant operand must be a matrix, got shape {list(w.shape)}"
            )
        if pos == 0:  # x @ W acts on the last axis
            self.append(_linear(w.T, np.zeros(w.shape[1])), "MatMul", label)
            return
        # W @ x acts on the second-to-last axis: transpose, apply on the last axis, transpose back.
        rank = len(self.shape)
        if rank < 2:
            raise _Unsupported("MatMul", label, "constant @ x needs a per-sample input of rank 2 or more")
        swap = [*range(rank - 2), rank - 1, rank - 2]
        self.transpose(swap, "MatMul", label)
        self.append(_linear(w, np.zeros(w.shape[0])), "MatMul", label)
        self.transpose(swap, "MatMul", label)

    def elementwise(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        op = node.op_type
        c = self.per_sample(self.const(node.input[1 - pos], op, label), op, label)
        tensor = self.full_rank(c)
        one, zero = np.ones_like(c), np.zeros_like(c)
        if op == "Add":
            self.affine(one, c, [ConstAdd(tensor)], op, label)
        elif op == "Mul":
            self.affine(c, zero, [ConstMul(tensor)], op, label)
        elif op == "Sub" and pos == 0:
            self.affine(one, -c, [ConstSub(tensor)], op, label)
        elif op == "Sub":
            self.affine(-one, c, [ConstRSub(tensor)], op, label)
        elif op == "Div" and pos == 0:
            with np.errstate(divide="ignore"):
                self.affine(1.0 / c, zero, [ConstDiv(tensor)], op, label)
        else:
            raise _Unsupported(op, label, "only x / constant is supported")

    def batchnorm(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        attrs = _attrs(node)
        if int(attrs.get("training_mode", 0)):
            raise _Unsupported("BatchNormalization", label, "training_mode=1 is not inference")
        scale, bias, mean, var = (
            self.const(n, "BatchNormalization", label).astype(np.float64) for n in node.input[1:5]
        )
        a = scale / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
        b = bias - mean * a
        # spatial=1 (the default; the attribute is gone since opset 9): one value per channel (axis 1).
        target = (-1, *[1] * (len(self.shape) - 1)) if int(attrs.get("spatial", 1)) else self.shape
        try:
            a, b = a.reshape(target), b.reshape(target)
        except ValueError as exc:
            raise _Invalid(f"node {label!r} (BatchNormalization): parameters do not fit the input") from exc
        ta, tb = self.full_rank(a), self.full_rank(b)
        self.affine(a, b, [ConstMul(ta), ConstAdd(tb)], "BatchNormalization", label)

    def relu(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        self.append(nn.ReLU(), "Relu", label)

    def identity(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        training = node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]
        if training and bool(np.any(self.const(node.input[2], "Dropout", label))):
            raise _Unsupported("Dropout", label, "training_mode=True is not inference")

    def conv(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        attrs = _attrs(node)
        if pos != 0:
            raise _Unsupported("Conv", label, "the weight must be constant")
        w = self.const(node.input[1], "Conv", label).astype(np.float64)
        if w.ndim != 4 or len(self.shape) != 3:
            raise _Unsupported("Conv", label, "only 2-D convolutions on [N, C, H, W] are supported")
        kernel = (w.shape[2], w.shape[3])
        strides = tuple(attrs.get("strides", (1, 1)))
        dilations = tuple(attrs.get("dilations", (1, 1)))
        padding = self._padding("Conv", label, attrs, kernel, strides, dilations)
        groups = int(attrs.get("group", 1))
        bias = np.zeros(w.shape[0])
        if len(node.input) > 2 and node.input[2]:
            bias = self.const(node.input[2], "Conv", label).astype(np.float64).reshape(-1)
        layer = nn.Conv2d(
            w.shape[1] * groups, w.shape[0], kernel, strides, padding, dilations, groups, dtype=torch.float64
        )
        _set_parameters(layer, w, bias)
        self.append(layer, "Conv", label)

    def pool(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        op, attrs = node.op_type, _attrs(node)
        if len(self.shape) != 3:
            raise _Unsupported(op, label, "only 2-D pooling on [N, C, H, W] is supported")
        if op.startswith("Global"):
            kernel = (self.shape[1], self.shape[2])
            strides, padding, include_pad = kernel, (0, 0), True
        else:
            if len(attrs.get("kernel_shape", ())) != 2:
                raise _Unsupported(op, label, "only 2-D pooling is supported")
            kernel = (int(attrs["kernel_shape"][0]), int(attrs["kernel_shape"][1]))
            stride_list = [int(v) for v in attrs.get("strides", (1, 1))]
            strides = (stride_list[0], stride_list[1])
            if int(attrs.get("ceil_mode", 0)):
                raise _Unsupported(op, label, "ceil_mode=1 is not supported")
            if any(int(d) != 1 for d in attrs.get("dilations", (1, 1))):
                raise _Unsupported(op, label, "dilations other than 1 are not supported")
            padding = self._padding(op, label, attrs, kernel, strides, (1, 1))
            if any(2 * p > k for p, k in zip(padding, kernel, strict=True)):
                raise _Unsupported(op, label, "padding larger than half the kernel is not supported")
            # Without padding count_include_pad changes nothing; torch's default form is the best supported.
            include_pad = bool(attrs.get("count_include_pad", 0)) or padding == (0, 0)
        layer: nn.Module
        if "Max" in op:
            layer = nn.MaxPool2d(kernel, strides, padding)
        else:
            layer = nn.AvgPool2d(kernel, strides, padding, count_include_pad=include_pad)
        self.append(layer, op, label)

    def _padding(
        self,
        op: str,
        label: str,
        attrs: dict[str, Any],
        kernel: Sequence[int],
        strides: Sequence[int],
        dilations: Sequence[int],
    ) -> tuple[int, int]:
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if auto_pad in ("NOTSET", ""):
            pads = [int(p) for p in attrs.get("pads", (0, 0, 0, 0))]
        elif auto_pad == "VALID":
            pads = [0, 0, 0, 0]
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begin, end = [], []
            for size, k, s, d in zip(self.shape[1:], kernel, strides, dilations, strict=True):
                total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                small = total // 2
                begin.append(small if auto_pad == "SAME_UPPER" else total - small)
                end.append(total - begin[-1])
            pads = [*begin, *end]
        else:
            raise _Unsupported(op, label, f"auto_pad={auto_pad!r} is not supported")
        if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
            raise _Unsupported(op, label, f"asymmetric padding {pads} is not supported")
        return pads[0], pads[1]

    def flatten(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        rank = len(self.shape) + 1
        axis = int(_attrs(node).get("axis", 1))
        axis = axis + rank if axis < 0 else axis
        if axis == 0 or math.prod(self.shape[: axis - 1]) != 1:
            raise _Unsupported("Flatten", label, f"axis={axis} merges the batch axis into the features")
        self.reshape_to((math.prod(self.shape[axis - 1 :]),), "Flatten", label)

    def reshape(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        attrs = _attrs(node)
        if len(node.input) > 1 and node.input[1]:
            targets = [[int(v) for v in world[node.input[1]].reshape(-1)] for world in self.consts]
        elif "shape" in attrs:  # opset < 5
            targets = [list(attrs["shape"])] * 2
        else:
            raise _Unsupported("Reshape", label, "no target shape")
        self.reshape_to(
            self._reshape_target(targets, bool(attrs.get("allowzero", 0)), label), "Reshape", label
        )

    def _reshape_target(self, targets: list[list[int]], allowzero: bool, label: str) -> tuple[int, ...]:
        """The per-sample target of a Reshape; the batch axis must stay first and whole for any batch size."""
        full_in: list[int | None] = [None, *self.shape]  # None stands for the batch size
        dims: list[int | None] = []
        for i, (u, v) in enumerate(zip(*targets, strict=True)):
            if u != v:
                if i == 0 and (u, v) == _PROBE_BATCHES:
                    dims.append(None)
                    continue
                raise _Unsupported("Reshape", label, "the target shape depends on the batch size")
            if u == 0 and not allowzero:
                if i >= len(full_in):
                    raise _Invalid(f"node {label!r} (Reshape): a 0 entry has no matching input axis")
                dims.append(full_in[i])
            elif u < -1 or (u == 0 and allowzero):
                raise _Unsupported("Reshape", label, f"target entry {u} is not supported")
            else:
                dims.append(u)
        size = math.prod(self.shape)
        if not dims or None in dims[1:]:
            raise _Unsupported("Reshape", label, "the batch axis must stay first")
        head, rest = dims[0], [int(d) for d in dims[1:] if d is not None]
        if head == -1 and (-1 in rest or math.prod(rest) != size):
            raise _Unsupported("Reshape", label, "the target merges the batch axis into the features")
        if head not in (None, 1, -1):  # 1: a model exported with its batch size fixed to 1
            raise _Unsupported("Reshape", label, f"the target hard-codes the batch size {head}")
        if rest.count(-1) > 1:
            raise _Invalid(f"node {label!r} (Reshape): more than one -1 in the target shape")
        if -1 in rest:
            known = math.prod(d for d in rest if d != -1)
            if known == 0 or size % known:
                raise _Invalid(f"node {label!r} (Reshape): cannot reshape {list(self.shape)} to {rest}")
            rest[rest.index(-1)] = size // known
        if math.prod(rest) != size:
            raise _Invalid(f"node {label!r} (Reshape): cannot reshape {list(self.shape)} to {rest}")
        return tuple(rest)

    def transpose_node(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        rank = len(self.shape) + 1
        perm = [int(p) for p in _attrs(node).get("perm", range(rank - 1, -1, -1))]
        if sorted(perm) != list(range(rank)):
            raise _Invalid(f"node {label!r} (Transpose): perm {perm} is not a permutation of {rank} axes")
        if perm[0] != 0:
            raise _Unsupported("Transpose", label, f"perm {perm} moves the batch axis")
        self.transpose([p - 1 for p in perm[1:]], "Transpose", label)


_HANDLERS: dict[str, Handler] = {
    "Gemm": _Translator.gemm,
    "MatMul": _Translator.matmul,
    "Add": _Translator.elementwise,
    "Sub": _Translator.elementwise,
    "Mul": _Translator.elementwise,
    "Div": _Translator.elementwise,
    "BatchNormalization": _Translator.batchnorm,
    "Relu": _Translator.relu,
    "Identity": _Translator.identity,
    "Dropout": _Translator.identity,
    "Conv": _Translator.conv,
    "MaxPool": _Translator.pool,
    "AveragePool": _Translator.pool,
    "GlobalAveragePool": _Translator.pool,
    "GlobalMaxPool": _Translator.pool,
    "Flatten": _Translator.flatten,
    "Reshape": _Translator.reshape,
    "Transpose": _Translator.transpose_node,
}


# ----------------------------------------------------------------------------------------------------------
# onnxruntime


def _ort_session(model: onnx.ModelProto | bytes | str | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings about unused initializers and the like
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    source = str(source) if isinstance(source, Path) else source
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise _Invalid(f"onnxruntime cannot load the model: {_one_line(exc)}") from exc


def _run_session(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise _Invalid(f"onnxruntime sees {len(inputs)} inputs; a classifier must have exactly one")
    spec = inputs[0]
    x = np.asarray(x, dtype=_ORT_DTYPES.get(spec.type, np.float32))
    if x.ndim != len(spec.shape) or x.shape[0] == 0:
        raise ValueError(
            f"x has shape {list(x.shape)}; the model takes a non-empty batch of shape {spec.shape}"
        )
    batch = spec.shape[0]
    # A fixed batch dimension (exporters write 1) can only take that many samples at a time.
    step = batch if isinstance(batch, int) and batch > 0 else len(x)
    if len(x) % step:
        raise ValueError(f"the model's batch size is fixed to {step}; got {len(x)} samples")
    try:
        parts = [session.run(None, {spec.name: x[i : i + step]})[0] for i in range(0, len(x), step)]
    except Exception as exc:
        raise _Invalid(f"onnxruntime failed to run the model: {_one_line(exc)}") from exc
    return np.concatenate(parts).astype(np.float64)


def run_onnxruntime(model: onnx.ModelProto | bytes | str | Path, x: np.ndarray) -> np.ndarray:
    """The model's first output for ``x [N, *input_shape]`` (cast to the input dtype) as float64 ``[N, ...]``.

    Models with a batch dimension fixed to 1 are run one sample at a time.
    """
    where = str(model) if isinstance(model, (str, Path)) else "in-memory ONNX model"
    try:
        return _run_session(_ort_session(model), x)
    except _Invalid as exc:
        raise _public_error(exc, where) from None


# ----------------------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class LoadedModel:
    """A classifier ready for verification.

    ``onnx_model`` is the logits model (a final Softmax replaced by Identity); ``module`` computes the same
    logits in torch, ``[N, *input_shape] -> [N, num_classes]``.
    """

    path: Path | None
    onnx_model: onnx.ModelProto
    module: ConvertedModel
    input_name: str
    input_shape: tuple[int, ...]
    num_classes: int
    softmax_stripped: bool
    max_abs_diff: (
        float  # max |torch - onnxruntime| on the check inputs (logits); NaN if the check was skipped
    )


def _read_model(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty, not an ONNX model")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError for truncated or foreign files, OSError, ...
        raise ModelLoadError(f"{path}: not a readable ONNX model ({_one_line(exc)})") from exc


def load_model(
    path: str | Path,
    domain: tuple[float, float] = (0.0, 1.0),
    check: bool = True,
    n_check: int = 32,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> LoadedModel:
    """Load an ONNX classifier, convert it to torch and (with ``check``) compare it with onnxruntime.

    The check draws ``n_check`` seeded inputs uniformly in ``domain`` plus the two corners of the domain box
    and requires ``max |torch(float64) - onnxruntime| <= tolerance`` on the logits.
    """
    path = Path(path)
    return _load(_read_model(path), path, domain, check, n_check, tolerance, seed)


def load_model_proto(
    model: onnx.ModelProto,
    domain: tuple[float, float] = (0.0, 1.0),
    check: bool = True,
    n_check: int = 32,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> LoadedModel:
    """:func:`load_model` for a model already in memory (``path`` is None)."""
    return _load(model, None, domain, check, n_check, tolerance, seed)


def _load(
    model: onnx.ModelProto,
    path: Path | None,
    domain: tuple[float, float],
    check: bool,
    n_check: int,
    tolerance: float,
    seed: int,
) -> LoadedModel:
    where = str(path) if path is not None else "in-memory ONNX model"
    if not domain[0] <= domain[1]:
        raise ValueError(f"domain {domain} is not an interval (low <= high)")
    try:
        return _load_unwrapped(model, path, domain, check, n_check, tolerance, seed)
    except FaithverifyError:
        raise
    except (_Invalid, _Unsupported) as exc:
        raise _public_error(exc, where) from None
    except Exception as exc:
        raise _public_error(exc, where) from exc


def _load_unwrapped(
    model: onnx.ModelProto,
    path: Path | None,
    domain: tuple[float, float],
    check: bool,
    n_check: int,
    tolerance: float,
    seed: int,
) -> LoadedModel:
    if not model.HasField("graph") or not model.graph.output:
        raise _Invalid("not an ONNX model (no graph with an output)")
    opset = _opset(model)
    if opset < _MIN_OPSET:
        raise _Invalid(f"opset {opset} is too old; opset {_MIN_OPSET} or newer is needed")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # a model that fails the checker may still run; the onnxruntime check decides
        log.info("onnx.checker: %s", _one_line(exc))
    info = _io_info(model)
    logits_model, stripped = _strip_trailing_softmax(model)
    nodes = _chain_nodes(logits_model.graph, info.input_name, info.output_name)
    module = _Translator(logits_model, info).run(nodes)
    if info.num_classes is not None and info.num_classes != module.num_classes:
        raise _Invalid(
            f"output declares {info.num_classes} classes but the graph computes {module.num_classes}"
        )
    diff = _check_against_onnxruntime(logits_model, module, domain, n_check, seed) if check else math.nan
    if check and not diff <= tolerance:
        raise _Invalid(
            f"the converted model disagrees with onnxruntime: max |difference| {diff:.3g} "
            f"> tolerance {tolerance:g}"
        )
    return LoadedModel(
        path=path,
        onnx_model=logits_model,
        module=module,
        input_name=info.input_name,
        input_shape=info.input_shape,
        num_classes=module.num_classes,
        softmax_stripped=stripped,
        max_abs_diff=diff,
    )


def _check_against_onnxruntime(
    logits_model: onnx.ModelProto,
    module: ConvertedModel,
    domain: tuple[float, float],
    n_check: int,
    seed: int,
) -> float:
    low, high = domain
    shape = module.input_shape
    rng = np.random.default_rng(seed)
    x = np.concatenate(
        [
            rng.uniform(low, high, size=(n_check, *shape)),
            np.full((1, *shape), low),
            np.full((1, *shape), high),
        ]
    )
    x = x.astype(np.float32).astype(np.float64)  # both sides see exactly the same (float32) inputs
    expected = _run_session(_ort_session(logits_model), x)
    with torch.no_grad():
        got = copy.deepcopy(module).double()(torch.from_numpy(x)).numpy()
    if expected.shape != got.shape:
        raise _Invalid(
            f"onnxruntime output shape {list(expected.shape)} differs from the converted {list(got.shape)}"
        )
    # Equal values (infinities included) count as no difference; a NaN anywhere makes the check fail.
    diff = np.where(got == expected, 0.0, np.abs(got - expected))
    return float(np.max(diff)) if not np.isnan(diff).any() else math.nan
