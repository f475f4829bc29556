"""Which torch layers compute what a chain of ONNX nodes computes?

The :class:`_Translator` walks the chain once, emitting float64 torch modules and tracking the per-sample
shape; shape computations and other nodes on constants are evaluated, not translated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from faithverify.onnx_io.errors import _Invalid, _one_line, _Unsupported
from faithverify.onnx_io.graph import (
    _DEFAULT_DOMAINS,
    _attrs,
    _constant_node_value,
    _evaluate_constant,
    _fmt_dims,
    _IOInfo,
    _opset,
)
from faithverify.onnx_io.layers import (
    _MOVEMENT,
    ConstAdd,
    ConstDiv,
    ConstMul,
    ConstRSub,
    ConstSub,
    ConvertedModel,
    Reshape,
    Transpose,
    _per_channel,
)

NOT_A_CHAIN = "graph is not a feed-forward chain"
# Shape computations are evaluated twice, with these two batch sizes, to see which entries are the batch.
_PROBE_BATCHES = (2, 3)


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


Handler = Callable[["_Translator", onnx.NodeProto, str, int], None]


class _Translator:
    """Walks the chain once, emitting float64 torch modules and tracking the per-sample shape."""

    def __init__(self, model: onnx.ModelProto, info: _IOInfo) -> None:
        self.opset = _opset(model)
        self.info = info
        self.batched = info.batched  # without a batch axis, ONNX axes are the per-sample axes themselves
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
        if out.dim() < 2:  # a per-sample scalar: the modules and bounds expect per-sample tensors
            raise _Unsupported(op, label, "a scalar (rank-0) result is not supported")
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
        if self.batched and c.ndim == len(self.shape) + 1:
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
        if len(self.shape) != 1 and self.info.any_output:
            self.reshape_to(
                (math.prod(self.shape),), "Reshape", "<flattened output>"
            )  # row-major, as VNN-LIB
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
            dims = self.dyn_shapes[node.input[0]]
            full = np.array([batch, *dims] if self.batched else dims, dtype=np.int64)
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
        if not self.batched:
            self._gemm_unbatched(node, label, attrs)
            return
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

    def _gemm_unbatched(self, node: onnx.NodeProto, label: str, attrs: dict[str, Any]) -> None:
        """Gemm on a tensor without a batch axis: A is the whole per-sample matrix [M, K] (or [K, M])."""
        if len(self.shape) != 2:
            raise _Unsupported("Gemm", label, f"A must be a matrix, got shape {list(self.shape)}")
        if int(attrs.get("transA", 0)):
            self.transpose([1, 0], "Gemm", label)
        b = self.const(node.input[1], "Gemm", label).astype(np.float64)
        if b.ndim != 2:
            raise _Unsupported("Gemm", label, "B must be a matrix")
        weight = float(attrs.get("alpha", 1.0)) * (b if int(attrs.get("transB", 0)) else b.T)
        self.append(_linear(weight, np.zeros(weight.shape[0])), "Gemm", label)
        if len(node.input) > 2 and node.input[2]:
            c = float(attrs.get("beta", 1.0)) * self.const(node.input[2], "Gemm", label).astype(np.float64)
            c = self.per_sample(c, "Gemm", label)  # C broadcasts onto [M, N]: a bias, per column or not
            self.affine(np.ones(self.shape), c, [ConstAdd(self.full_rank(c))], "Gemm", label)

    def matmul(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        w = self.const(node.input[1 - pos], "MatMul", label).astype(np.float64)
        if w.ndim != 2:
            raise _Unsupported(
                "MatMul", label, f"the constant operand must be a matrix, got shape {list(w.shape)}"
            )
        if pos == 0:  # x @ W acts on the last axis
            self.append(_linear(w.T, np.zeros(w.shape[1])), "MatMul", label)
            return
        if not self.batched and len(self.shape) == 1:  # W @ x for a vector x: a Linear
            self.append(_linear(w, np.zeros(w.shape[0])), "MatMul", label)
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
        if not self.batched:  # the channel axis is axis 1 of the tensor itself
            if len(self.shape) < 2:
                raise _Unsupported("BatchNormalization", label, "the input has no channel axis (axis 1)")
            channels = (1, -1, *[1] * (len(self.shape) - 2))
            target = channels if int(attrs.get("spatial", 1)) else self.shape[1:]
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

    def neg(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        minus = -np.ones(self.shape)
        self.affine(minus, np.zeros(self.shape), [ConstMul(self.full_rank(minus))], "Neg", label)

    # -- selections: Slice, Gather, Squeeze, Unsqueeze move values, so they are exact 0/1 maps or reshapes --

    def _axis(self, axis: int, op: str, label: str) -> int:
        """The per-sample axis of an ONNX axis (normalised); the batch axis itself is refused."""
        rank = len(self.shape) + (1 if self.batched else 0)
        if not -rank <= axis < rank:
            raise _Invalid(f"node {label!r} ({op}): axis {axis} is out of range for rank {rank}")
        axis = axis + rank if axis < 0 else axis
        if self.batched and axis == 0:
            raise _Unsupported(op, label, "the operation acts on the batch axis")
        return axis - (1 if self.batched else 0)

    def _inputs_or_attr(self, node: onnx.NodeProto, k: int, attr: str, label: str) -> list[int] | None:
        """Operand ``k`` (a constant) if given, else attribute ``attr`` (older opsets), else None."""
        if len(node.input) > k and node.input[k]:
            return [int(v) for v in self.const(node.input[k], node.op_type, label).reshape(-1)]
        value = _attrs(node).get(attr)
        return None if value is None else [int(v) for v in value]

    def select(self, index: np.ndarray, op: str, label: str) -> None:
        """The per-sample tensor's flat elements ``index`` (any shape): a 0/1 Linear on the flat input."""
        if index.size == 0 or index.ndim == 0:
            raise _Unsupported(op, label, "an empty or scalar result is not supported")
        size = math.prod(self.shape)
        self.reshape_to((size,), op, label)
        weight = np.zeros((index.size, size))
        weight[np.arange(index.size), index.reshape(-1)] = 1.0
        self.append(_linear(weight, np.zeros(index.size)), op, label)
        self.reshape_to(index.shape, op, label)

    def slice(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        starts = self._inputs_or_attr(node, 1, "starts", label)
        ends = self._inputs_or_attr(node, 2, "ends", label)
        if starts is None or ends is None or len(starts) != len(ends):
            raise _Invalid(f"node {label!r} (Slice): starts and ends must be given, of one length")
        axes = self._inputs_or_attr(node, 3, "axes", label) or list(range(len(starts)))
        steps = self._inputs_or_attr(node, 4, "steps", label) or [1] * len(starts)
        index = np.arange(math.prod(self.shape)).reshape(self.shape)
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
            if step == 0:
                raise _Invalid(f"node {label!r} (Slice): a step of 0")
            rank = len(self.shape) + (1 if self.batched else 0)
            full_axis = axis + rank if axis < 0 else axis
            if self.batched and full_axis == 0:
                if start in (0, -(2**63)) and end >= 2**31 - 1 and step == 1:
                    continue  # the whole batch
                raise _Unsupported("Slice", label, "slicing the batch axis is not supported")
            ax = self._axis(axis, "Slice", label)
            dim = index.shape[ax]
            # ONNX's clamping (not Python's: a negative end of -1 after clamping means "before the first").
            start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
            if step > 0:
                start, end = min(max(start, 0), dim), min(max(end, 0), dim)
            else:
                start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
            index = np.take(index, np.arange(start, end, step, dtype=np.int64), axis=ax)
        self.select(index, "Slice", label)

    def gather(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        if pos != 0:
            raise _Unsupported("Gather", label, "the indices must be constant")
        indices = self.const(node.input[1], "Gather", label).astype(np.int64)
        ax = self._axis(int(_attrs(node).get("axis", 0)), "Gather", label)
        dim = self.shape[ax]
        if np.any(indices < -dim) or np.any(indices >= dim):
            raise _Invalid(f"node {label!r} (Gather): an index is out of range for size {dim}")
        index = np.arange(math.prod(self.shape)).reshape(self.shape)
        self.select(np.take(index, np.where(indices < 0, indices + dim, indices), axis=ax), "Gather", label)

    def squeeze(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        op = node.op_type
        axes = self._inputs_or_attr(node, 1, "axes", label)
        if axes is None:  # every axis of size 1: in a batched tensor that could be the batch axis too
            if self.batched:
                raise _Unsupported(op, label, "without axes it may remove the batch axis")
            kept = [d for d in self.shape if d != 1]
        elif op == "Squeeze":
            gone = {self._axis(a, op, label) for a in axes}
            if any(self.shape[a] != 1 for a in gone):
                raise _Invalid(f"node {label!r} (Squeeze): an axis of size other than 1")
            kept = [d for k, d in enumerate(self.shape) if k not in gone]
        else:  # Unsqueeze: axes index the output, of rank len(input) + len(axes)
            rank = len(self.shape) + (1 if self.batched else 0) + len(axes)
            new = sorted(a + rank if a < 0 else a for a in axes)
            if self.batched and 0 in new:
                raise _Unsupported(op, label, "a new axis in front of the batch axis")
            full: list[int] = [-1, *self.shape] if self.batched else list(self.shape)
            for a in new:
                full.insert(a, 1)
            kept = full[1:] if self.batched else full
        if not kept:
            raise _Unsupported(op, label, "a scalar (rank-0) result is not supported")
        self.reshape_to(tuple(kept), op, label)

    def conv(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        attrs = _attrs(node)
        if pos != 0:
            raise _Unsupported("Conv", label, "the weight must be constant")
        w = self.const(node.input[1], "Conv", label).astype(np.float64)
        if w.ndim == 3 and len(self.shape) == 2 and self.batched:
            self._conv1d(node, label, attrs, w)
            return
        if w.ndim != 4 or len(self.shape) != 3 or not self.batched:
            raise _Unsupported("Conv", label, "only 1-D and 2-D convolutions on [N, C, (H,) W] are supported")
        self._conv_from(node, label, attrs, w)

    def _conv_from(self, node: onnx.NodeProto, label: str, attrs: dict[str, Any], w: np.ndarray) -> None:
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

    def _conv1d(self, node: onnx.NodeProto, label: str, attrs: dict[str, Any], w: np.ndarray) -> None:
        """A 1-D convolution on [N, C, W] as the 2-D one over a height of 1 (exact: the same sums)."""
        one_d = {"kernel_shape": 1, "strides": 1, "dilations": 1}
        attrs2 = dict(attrs)
        for key, fill in one_d.items():
            if key in attrs:
                attrs2[key] = [fill, *[int(v) for v in attrs[key]]]
        if "pads" in attrs:
            begin, end = (int(v) for v in attrs["pads"])
            attrs2["pads"] = [0, begin, 0, end]
        channels, width = self.shape
        self.reshape_to((channels, 1, width), "Conv", label)
        self._conv_from(node, label, attrs2, w[:, :, None, :])
        self.reshape_to((self.shape[0], self.shape[2]), "Conv", label)

    def pool(self, node: onnx.NodeProto, label: str, pos: int) -> None:
        op, attrs = node.op_type, _attrs(node)
        if len(self.shape) != 3 or not self.batched:
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
        if not self.batched:  # [d0, ..., dn] -> [d0 * ... * d(axis-1), d(axis) * ... * dn]
            rank = len(self.shape)
            axis = int(_attrs(node).get("axis", 1))
            axis = axis + rank if axis < 0 else axis
            if not 0 <= axis <= rank:
                raise _Invalid(f"node {label!r} (Flatten): axis {axis} is out of range for rank {rank}")
            shape = (math.prod(self.shape[:axis]), math.prod(self.shape[axis:]))
            self.reshape_to(shape, "Flatten", label)
            return
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
        if not self.batched:  # the target is the whole tensor's: read it as a batch of one
            targets = [[1, *t] for t in targets]
            targets[1][0] = _PROBE_BATCHES[1]  # so the leading entry reads as the batch axis
            targets[0][0] = _PROBE_BATCHES[0]
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
        rank = len(self.shape) + (1 if self.batched else 0)
        perm = [int(p) for p in _attrs(node).get("perm", range(rank - 1, -1, -1))]
        if sorted(perm) != list(range(rank)):
            raise _Invalid(f"node {label!r} (Transpose): perm {perm} is not a permutation of {rank} axes")
        if not self.batched:
            self.transpose(perm, "Transpose", label)
            return
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
    "Neg": _Translator.neg,
    "Slice": _Translator.slice,
    "Gather": _Translator.gather,
    "Squeeze": _Translator.squeeze,
    "Unsqueeze": _Translator.squeeze,
}

# Operators a model may contain on its input-to-output path (plus Constant and shape arithmetic that folds to
# constants, and one final Softmax, which is stripped): what `faithverify-vnnlib supports --onnx-operators` lists.
SUPPORTED_OPERATORS: frozenset[str] = frozenset(_HANDLERS) | {"Constant", "Shape", "Softmax"}
