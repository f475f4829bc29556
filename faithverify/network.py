"""A network as the MILP sees it: sparse affine maps, ReLUs and max-pools on flat (C-order) vectors.

:meth:`PiecewiseLinearNetwork.from_module` reads the ``nn.Sequential`` of ``ConvertedModel.flat_body()``:

- shape-only modules (``Reshape``, ``nn.Flatten``, ``nn.Unflatten``) change no value of the flat vector;
- affine modules become one :class:`AffineOp` ``y = W x + b`` with ``W`` sparse: ``nn.Linear`` (also on the last
  axis of a multi-axis tensor), ``nn.Conv2d`` (written out index by index for zero padding), the constant
  elementwise layers of :mod:`faithverify.onnx_io.layers`, ``Transpose``, and, read off by probing the module
  with unit vectors (exact for a module that is affine), ``nn.AvgPool2d``, ``nn.AdaptiveAvgPool2d``,
  ``nn.BatchNorm1d/2d`` in eval mode, ``nn.ZeroPad2d`` and ``nn.Conv2d`` with other padding modes;
- consecutive affine maps are composed into one;
- ``nn.ReLU`` and ``nn.MaxPool2d`` stay as they are (:class:`ReluOp`, :class:`MaxPoolOp`).

Anything else raises :class:`~faithverify.errors.BoundingError`: the encoding must be exact, so nothing is
approximated silently.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from faithverify.errors import BoundingError
from faithverify.onnx_io.layers import Reshape, Transpose, _ConstOp

# Dense probe outputs per chunk (unit vectors x output size), ~32 MB of float64.
_PROBE_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class SparseMatrix:
    """A coalesced COO matrix: entries sorted by (row, column), no duplicates, no explicit zeros."""

    rows: np.ndarray  # int64 [nnz]
    cols: np.ndarray  # int64 [nnz]
    vals: np.ndarray  # float64 [nnz]
    shape: tuple[int, int]

    @staticmethod
    def from_coo(
        rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]
    ) -> SparseMatrix:
        """Sum duplicate entries, drop zeros, sort."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        vals = np.asarray(vals, dtype=np.float64)
        key = rows * max(1, shape[1]) + cols
        uniq, inverse = np.unique(key, return_inverse=True)
        summed = np.bincount(inverse.reshape(-1), weights=vals, minlength=len(uniq))
        keep = summed != 0.0
        uniq = uniq[keep]
        return SparseMatrix(uniq // max(1, shape[1]), uniq % max(1, shape[1]), summed[keep], shape)

    @staticmethod
    def identity(n: int) -> SparseMatrix:
        idx = np.arange(n, dtype=np.int64)
        return SparseMatrix(idx, idx.copy(), np.ones(n), (n, n))

    @property
    def nnz(self) -> int:
        return len(self.vals)

    def indptr(self) -> np.ndarray:
        """CSR row starts (entries are sorted by row)."""
        return np.concatenate([[0], np.cumsum(np.bincount(self.rows, minlength=self.shape[0]))]).astype(
            np.int64
        )

    def with_cols(self, n_cols: int) -> SparseMatrix:
        """The same entries in a matrix with more columns (the MILP adds variables as it goes)."""
        return SparseMatrix(self.rows, self.cols, self.vals, (self.shape[0], n_cols))

    def take_rows(self, idx: np.ndarray) -> SparseMatrix:
        """Rows ``idx`` (in that order, repeats allowed) as a new matrix."""
        idx = np.asarray(idx, dtype=np.int64)
        ptr = self.indptr()
        starts, counts = ptr[idx], ptr[idx + 1] - ptr[idx]
        pos = _gather_ranges(starts, counts)
        new_rows = np.repeat(np.arange(len(idx), dtype=np.int64), counts)
        return SparseMatrix(new_rows, self.cols[pos], self.vals[pos], (len(idx), self.shape[1]))

    def __matmul__(self, other: SparseMatrix) -> SparseMatrix:
        if self.shape[1] != other.shape[0]:
            raise ValueError(f"shape mismatch {self.shape} @ {other.shape}")
        ptr = other.indptr()
        starts, counts = ptr[self.cols], ptr[self.cols + 1] - ptr[self.cols]
        pos = _gather_ranges(starts, counts)
        return SparseMatrix.from_coo(
            np.repeat(self.rows, counts),
            other.cols[pos],
            np.repeat(self.vals, counts) * other.vals[pos],
            (self.shape[0], other.shape[1]),
        )

    def matvec(self, v: np.ndarray) -> np.ndarray:
        return np.bincount(self.rows, weights=self.vals * v[self.cols], minlength=self.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``x @ self.T`` for a batch ``x`` of shape ``[N, shape[1]]``."""
        t = torch.sparse_coo_tensor(
            torch.from_numpy(np.stack([self.rows, self.cols])),
            torch.from_numpy(self.vals),
            self.shape,
            is_coalesced=True,
            check_invariants=False,  # coalesced by construction
        )
        return torch.sparse.mm(t, torch.from_numpy(np.ascontiguousarray(x.T, dtype=np.float64))).numpy().T

    def interval(self, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact range of every row ``a·v`` over the box ``lower <= v <= upper`` (interval arithmetic)."""
        pos = self.vals > 0
        lo_terms = np.where(pos, self.vals * lower[self.cols], self.vals * upper[self.cols])
        hi_terms = np.where(pos, self.vals * upper[self.cols], self.vals * lower[self.cols])
        n = self.shape[0]
        return np.bincount(self.rows, lo_terms, n), np.bincount(self.rows, hi_terms, n)

    def transpose(self) -> SparseMatrix:
        return SparseMatrix.from_coo(self.cols, self.rows, self.vals, (self.shape[1], self.shape[0]))

    def scaled(self, factor: float) -> SparseMatrix:
        return SparseMatrix(self.rows, self.cols, self.vals * factor, self.shape)


def _gather_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for every pair, without a Python loop."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(counts) - counts
    return np.repeat(starts - offsets, counts) + np.arange(total, dtype=np.int64)


def stack_rows(blocks: list[SparseMatrix], n_cols: int) -> SparseMatrix:
    """The blocks one below the other (each already in global column numbering)."""
    offsets = np.cumsum([0] + [b.shape[0] for b in blocks])
    if not blocks:
        return SparseMatrix(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), (0, n_cols))
    rows = np.concatenate([b.rows + o for b, o in zip(blocks, offsets, strict=False)])
    cols = np.concatenate([b.cols for b in blocks])
    vals = np.concatenate([b.vals for b in blocks])
    return SparseMatrix.from_coo(rows, cols, vals, (int(offsets[-1]), n_cols))


@dataclass(frozen=True)
class AffineOp:
    """``y = matrix @ x + bias``."""

    matrix: SparseMatrix
    bias: np.ndarray

    @functools.cached_property
    def transposed(self) -> SparseMatrix:
        """``matrix.T``, for gradients (built once)."""
        return self.matrix.transpose()


@dataclass(frozen=True)
class ReluOp:
    """``y = max(x, 0)`` elementwise."""

    size: int


@dataclass(frozen=True)
class MaxPoolOp:
    """``y[w] = max_k x[windows[w, k]]`` over the entries ``>= 0`` of each row (``-1`` pads short windows)."""

    windows: np.ndarray  # int64 [out, k]
    in_size: int


Op = AffineOp | ReluOp | MaxPoolOp


@dataclass(frozen=True)
class PiecewiseLinearNetwork:
    """The function ``ops[-1](...ops[0](x))`` on flat inputs ``x`` of size ``input_dim``."""

    input_dim: int
    ops: tuple[Op, ...]

    @staticmethod
    def from_module(body: nn.Module, input_dim: int) -> PiecewiseLinearNetwork:
        """Convert ``body`` (taking ``[N, input_dim]``); raises BoundingError for a module it cannot encode."""
        ops: list[Op] = []
        shape: tuple[int, ...] = (input_dim,)
        for module in _leaves(body):
            new_ops, shape = _convert(module, shape)
            for op in new_ops:
                _append(ops, op)
        return PiecewiseLinearNetwork(input_dim, tuple(ops))

    @property
    def output_dim(self) -> int:
        size = self.input_dim
        for op in self.ops:
            size = op.matrix.shape[0] if isinstance(op, AffineOp) else _op_out_size(op)
        return size

    def nonlinear_ops(self) -> list[ReluOp | MaxPoolOp]:
        return [op for op in self.ops if not isinstance(op, AffineOp)]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The network in float64 on a batch ``[N, input_dim]`` (to check encodings and witnesses)."""
        return self._run(x)[0]

    def nonlinear_inputs(self, x: np.ndarray) -> list[np.ndarray]:
        """The input of every ReLU / max-pool layer, in order, for a batch ``[N, input_dim]``."""
        return self._run(x)[1]

    def gradient(self, x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(weights · f(x), d/dx weights · f(x))`` for a batch (a subgradient at the kinks)."""
        out, inputs = self._run(x)
        g = np.broadcast_to(np.asarray(weights, dtype=np.float64), out.shape).copy()
        k = len(inputs)
        for op in reversed(self.ops):
            if isinstance(op, AffineOp):
                g = op.transposed.apply(g)
                continue
            k -= 1
            g = g * (inputs[k] > 0) if isinstance(op, ReluOp) else _maxpool_backward(op, inputs[k], g)
        return out @ np.asarray(weights, dtype=np.float64), g

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        h = np.asarray(x, dtype=np.float64).reshape(-1, self.input_dim)
        inputs = []
        for op in self.ops:
            if isinstance(op, AffineOp):
                h = op.matrix.apply(h) + op.bias
                continue
            inputs.append(h)
            h = np.maximum(h, 0.0) if isinstance(op, ReluOp) else _maxpool_forward(op, h)
        return h, inputs


def _maxpool_forward(op: MaxPoolOp, h: np.ndarray) -> np.ndarray:
    padded = np.concatenate([h, np.full((len(h), 1), -np.inf)], axis=1)
    return padded[:, op.windows].max(axis=2)  # index -1 picks the -inf column


def _maxpool_backward(op: MaxPoolOp, h: np.ndarray, g: np.ndarray) -> np.ndarray:
    padded = np.concatenate([h, np.full((len(h), 1), -np.inf)], axis=1)
    winner = op.windows[np.arange(len(op.windows))[None, :], padded[:, op.windows].argmax(axis=2)]
    out = np.zeros((len(h), op.in_size))
    np.add.at(out, (np.arange(len(h))[:, None], winner), g)
    return out


def _op_out_size(op: ReluOp | MaxPoolOp) -> int:
    return op.size if isinstance(op, ReluOp) else len(op.windows)


def _append(ops: list[Op], op: Op) -> None:
    """Append, composing consecutive affine maps: ``W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2)``."""
    if isinstance(op, AffineOp) and ops and isinstance(ops[-1], AffineOp):
        prev = ops[-1]
        ops[-1] = AffineOp(op.matrix @ prev.matrix, op.matrix.matvec(prev.bias) + op.bias)
    else:
        ops.append(op)


def _leaves(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [leaf for child in module.children() for leaf in _leaves(child)]
    return [module]


_SHAPE_ONLY = (Reshape, nn.Flatten, nn.Unflatten)
_PROBED = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.ZeroPad2d)
_IDENTITY = (nn.Identity, nn.Dropout)


def _convert(module: nn.Module, shape: tuple[int, ...]) -> tuple[list[Op], tuple[int, ...]]:
    """The ops of one module and the per-sample shape after it."""
    if isinstance(module, _IDENTITY):
        _require_eval(module)
        return [], shape
    if isinstance(module, _SHAPE_ONLY):
        return [], _out_shape(module, shape)
    if isinstance(module, nn.ReLU):
        return [ReluOp(math.prod(shape))], shape
    if isinstance(module, nn.MaxPool2d):
        return _maxpool(module, shape)
    if isinstance(module, nn.Linear):
        return [_linear(module, shape)], (*shape[:-1], module.out_features)
    if isinstance(module, Transpose):
        return [_transpose(module, shape)], _out_shape(module, shape)
    if isinstance(module, _ConstOp):
        return [_elementwise(module, shape)], shape
    if (
        isinstance(module, nn.Conv2d)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    ):
        return _conv2d(module, shape)
    if isinstance(module, (*_PROBED, nn.Conv2d)):
        _require_eval(module)
        return _probe(module, shape)
    raise BoundingError(f"the MILP encoding does not support the layer {type(module).__name__} ({module})")


def _require_eval(module: nn.Module) -> None:
    if module.training and isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)):
        raise BoundingError(f"{type(module).__name__} is in training mode; call .eval() on the model first")


def _run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def _out_shape(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(_run(module, torch.zeros(1, *shape, dtype=_dtype(module))).shape[1:])


def _dtype(module: nn.Module) -> torch.dtype:
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float64


def _need_image(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise BoundingError(f"{type(module).__name__} needs a [C, H, W] input, got per-sample shape {shape}")
    c, h, w = shape
    return c, h, w


def _linear(module: nn.Linear, shape: tuple[int, ...]) -> AffineOp:
    """``nn.Linear`` on the last axis, block-diagonal over the others: ``y[p, o] = sum_i W[o, i] x[p, i] + b[o]``."""
    if shape[-1] != module.in_features:
        raise BoundingError(f"Linear expects {module.in_features} features, gets shape {shape}")
    w = module.weight.detach().cpu().double().numpy()
    b = module.bias.detach().cpu().double().numpy() if module.bias is not None else np.zeros(w.shape[0])
    blocks = math.prod(shape[:-1])
    out_f, in_f = w.shape
    r, c = np.nonzero(w)
    p = np.repeat(np.arange(blocks, dtype=np.int64), len(r))
    rows = p * out_f + np.tile(r, blocks)
    cols = p * in_f + np.tile(c, blocks)
    vals = np.tile(w[r, c], blocks)
    matrix = SparseMatrix.from_coo(rows, cols, vals, (blocks * out_f, blocks * in_f))
    return AffineOp(matrix, np.tile(b, blocks))


def _transpose(module: Transpose, shape: tuple[int, ...]) -> AffineOp:
    """A permutation: output position ``j`` holds input position ``source[j]``."""
    n = math.prod(shape)
    source = _run(module, torch.arange(n, dtype=torch.float64).reshape(1, *shape)).reshape(-1)
    cols = source.numpy().astype(np.int64)
    return AffineOp(SparseMatrix.from_coo(np.arange(n), cols, np.ones(n), (n, n)), np.zeros(n))


def _elementwise(module: _ConstOp, shape: tuple[int, ...]) -> AffineOp:
    """``y = a * x + b`` elementwise (constants broadcast over the sample)."""
    if _out_shape(module, shape) != shape:
        raise BoundingError(
            f"{type(module).__name__} with constant shape {tuple(module.c.shape)} changes {shape}"
        )
    a, b = (t.detach().cpu().double() for t in module.affine())
    a_full = torch.broadcast_to(a, (1, *shape)).reshape(-1).numpy()
    b_full = torch.broadcast_to(b, (1, *shape)).reshape(-1).numpy().copy()
    n = math.prod(shape)
    return AffineOp(SparseMatrix.from_coo(np.arange(n), np.arange(n), a_full, (n, n)), b_full)


def _conv2d(module: nn.Conv2d, shape: tuple[int, ...]) -> tuple[list[Op], tuple[int, ...]]:
    """Zero-padded convolution as a sparse map: ``y[o, i, j] = b[o] + sum_{c, p, q} W[o, c, p, q] ·
    x[g·C_g + c, i·s_h - pad_h + p·d_h, j·s_w - pad_w + q·d_w]`` over the taps that land inside the image."""
    c_in, h, w = _need_image(module, shape)
    out_shape = _out_shape(module, shape)
    o_ch, oh, ow = out_shape
    weight = module.weight.detach().cpu().double().numpy()  # [O, C_g, KH, KW]
    _, c_g, kh, kw = weight.shape
    (sh, sw), (dh, dw) = _pair(module.stride), _pair(module.dilation)
    assert not isinstance(module.padding, str)  # string paddings take the probing path
    ph, pw = _pair(module.padding)
    per_group = o_ch // module.groups
    o, c, p, q, i, j = np.meshgrid(
        *(np.arange(n, dtype=np.int64) for n in (o_ch, c_g, kh, kw, oh, ow)), indexing="ij", sparse=True
    )
    ih = i * sh - ph + p * dh
    iw = j * sw - pw + q * dw
    full = np.broadcast_shapes(o.shape, c.shape, p.shape, q.shape, i.shape, j.shape)
    inside = np.broadcast_to((ih >= 0) & (ih < h) & (iw >= 0) & (iw < w), full)
    rows = np.broadcast_to(o * (oh * ow) + i * ow + j, full)[inside]
    cols = np.broadcast_to(((o // per_group) * c_g + c) * (h * w) + ih * w + iw, full)[inside]
    vals = np.broadcast_to(weight[o, c, p, q], full)[inside]
    matrix = SparseMatrix.from_coo(rows, cols, vals, (o_ch * oh * ow, c_in * h * w))
    bias = module.bias.detach().cpu().double().numpy() if module.bias is not None else np.zeros(o_ch)
    return [AffineOp(matrix, np.repeat(bias, oh * ow))], out_shape


def _probe(module: nn.Module, shape: tuple[int, ...]) -> tuple[list[Op], tuple[int, ...]]:
    """An affine module read off column by column: ``b = f(0)``, ``W[:, k] = f(e_k) - f(0)``."""
    dtype = torch.float64
    # float32 parameters widen to float64 exactly; the module itself is left as it is.
    module_64 = module if _dtype(module) == dtype else copy.deepcopy(module).double().eval()
    n = math.prod(shape)
    bias_t = _run(module_64, torch.zeros(1, *shape, dtype=dtype))
    out_shape = tuple(bias_t.shape[1:])
    bias = bias_t.reshape(-1).numpy()
    chunk = max(1, _PROBE_ELEMENTS // max(1, len(bias)))
    rows, cols, vals = [], [], []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        eye = torch.zeros(stop - start, n, dtype=dtype)
        eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        out = (
            _run(module_64, eye.reshape(-1, *shape)).reshape(stop - start, -1) - bias_t.reshape(1, -1)
        ).numpy()
        k, r = np.nonzero(out)
        rows.append(r)
        cols.append(k + start)
        vals.append(out[k, r])
    matrix = SparseMatrix.from_coo(
        np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), (len(bias), n)
    )
    return [AffineOp(matrix, bias.copy())], out_shape


def _maxpool(module: nn.MaxPool2d, shape: tuple[int, ...]) -> tuple[list[Op], tuple[int, ...]]:
    """Windows of input positions ``(c, i·s_h - pad_h + p·d_h, j·s_w - pad_w + q·d_w)``; padding (-inf) is left out."""
    if module.return_indices:
        raise BoundingError("MaxPool2d with return_indices is not supported")
    c_in, h, w = _need_image(module, shape)
    out_shape = _out_shape(module, shape)
    _, oh, ow = out_shape
    kh, kw = _pair(module.kernel_size)
    sh, sw = _pair(module.stride if module.stride is not None else module.kernel_size)
    ph, pw = _pair(module.padding)
    dh, dw = _pair(module.dilation)
    c, i, j, p, q = np.meshgrid(*(np.arange(n) for n in (c_in, oh, ow, kh, kw)), indexing="ij")
    ih, iw = i * sh - ph + p * dh, j * sw - pw + q * dw
    inside = (ih >= 0) & (ih < h) & (iw >= 0) & (iw < w)
    windows = (
        np.where(inside, c * (h * w) + ih * w + iw, -1).reshape(c_in * oh * ow, kh * kw).astype(np.int64)
    )
    if np.any((windows < 0).all(axis=1)):
        raise BoundingError("MaxPool2d has a window that lies entirely in the padding")
    return [MaxPoolOp(windows, c_in * h * w)], out_shape


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    return int(v[0]), int(v[1])
