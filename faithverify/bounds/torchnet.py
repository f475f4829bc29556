"""The one network form (:class:`faithverify.network.PiecewiseLinearNetwork`) as torch tensors.

Every native bound (interval, CROWN, alpha-CROWN, beta-CROWN in branch and bound) reads a network through this
module, so a layer type is taught to the bounds once: here, and its relaxation in :mod:`.relax`.

- :class:`Affine` keeps ``W`` dense when that is small or dense enough, and in CSR form otherwise (a
  convolution's matrix is mostly zeros: the CIFAR-10 teacher's first layer has 48,600 non-zeros of 5.5
  million entries, and ``A @ W`` is 2-5 times faster sparse on CPU);
- :class:`Relu` and :class:`MaxPool` are the two piecewise-linear layers. A max-pool's windows are indices
  into its flat input; padding points at one extra column that holds ``-inf``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from faithverify.network import AffineOp, MaxPoolOp, PiecewiseLinearNetwork, ReluOp, SparseMatrix

# A matrix with more entries than this, and at most a tenth of them non-zero, is kept in CSR form.
_DENSE_ENTRIES = 1_000_000


def _matmul_2d(a: Tensor, matrix: Tensor) -> Tensor:
    """``a @ matrix`` for ``a`` of any leading shape, as one 2-D product (sparse matrices need a 2-D left
    operand, and a dense 2-D product was faster than the batched one on CPU)."""
    lead = a.shape[:-1]
    flat = a.reshape(-1, a.shape[-1])
    if matrix.layout == torch.strided:
        out = flat @ matrix
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = flat @ matrix
    return out.reshape(*lead, out.shape[-1])


@dataclass(frozen=True)
class Affine:
    """``y = W x + b`` on the last axis."""

    weight: Tensor  # [out, in], dense or CSR
    weight_t: Tensor  # [in, out]: W transposed, same layout
    abs_weight_t: Tensor  # |W| transposed, for interval arithmetic
    bias: Tensor  # [out]

    @property
    def in_size(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_size(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        return _matmul_2d(x, self.weight_t) + self.bias

    def back(self, a: Tensor) -> Tensor:
        """``a @ W``: a linear form over the output as one over the input (without the bias)."""
        return _matmul_2d(a, self.weight)

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """Exact range of each output over the box ``lower <= x <= upper``."""
        mid = self.forward((lower + upper) / 2)
        rad = _matmul_2d((upper - lower) / 2, self.abs_weight_t)
        return mid - rad, mid + rad


@dataclass(frozen=True)
class Relu:
    size: int


@dataclass(frozen=True)
class MaxPool:
    """``y[w] = max_k x[windows[w, k]]``; index ``in_size`` (padding) reads ``-inf``."""

    windows: Tensor  # long [out, k]
    in_size: int

    @property
    def out_size(self) -> int:
        return int(self.windows.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        return _pad(x, -torch.inf)[..., self.windows].amax(dim=-1)


def _pad(x: Tensor, value: float) -> Tensor:
    return torch.cat([x, x.new_full((*x.shape[:-1], 1), value)], dim=-1)


Layer = Affine | Relu | MaxPool


def _csr_of(m: SparseMatrix, dtype: torch.dtype) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": it is what we measured and test
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr()),
            torch.from_numpy(m.cols),
            torch.from_numpy(m.vals).to(dtype),
            m.shape,
        )


def _dense_of(m: SparseMatrix, dtype: torch.dtype) -> Tensor:
    out = torch.zeros(m.shape, dtype=dtype)
    out[torch.from_numpy(m.rows), torch.from_numpy(m.cols)] = torch.from_numpy(m.vals).to(dtype)
    return out


def _affine(op: AffineOp, device: torch.device, dtype: torch.dtype) -> Affine:
    m = op.matrix
    entries = m.shape[0] * m.shape[1]
    if entries <= _DENSE_ENTRIES or m.nnz > 0.1 * entries:
        weight = _dense_of(m, dtype)
        weight_t = weight.T.contiguous()
        abs_t = weight_t.abs()
    else:
        m_t = m.transpose()
        weight, weight_t = _csr_of(m, dtype), _csr_of(m_t, dtype)
        abs_t = _csr_of(SparseMatrix(m_t.rows, m_t.cols, np.abs(m_t.vals), m_t.shape), dtype)
    bias = torch.from_numpy(op.bias).to(dtype)
    return Affine(weight.to(device), weight_t.to(device), abs_t.to(device), bias.to(device))


def _layer(op: AffineOp | ReluOp | MaxPoolOp, device: torch.device, dtype: torch.dtype) -> Layer:
    if isinstance(op, AffineOp):
        return _affine(op, device, dtype)
    if isinstance(op, ReluOp):
        return Relu(op.size)
    windows = np.where(op.windows < 0, op.in_size, op.windows)
    return MaxPool(torch.from_numpy(windows).to(device), op.in_size)


@dataclass(frozen=True, eq=False)
class BoundNetwork:
    """``layers[-1](...layers[0](x))`` on flat inputs, on one device and in one dtype."""

    form: PiecewiseLinearNetwork
    layers: tuple[Layer, ...]
    device: torch.device
    dtype: torch.dtype
    _copies: dict[tuple[torch.dtype, torch.device], BoundNetwork] = field(default_factory=dict, repr=False)

    @staticmethod
    def of(
        form: PiecewiseLinearNetwork,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ) -> BoundNetwork:
        device = torch.device(device)
        layers = tuple(_layer(op, device, dtype) for op in form.ops)
        if not layers or not isinstance(layers[-1], Affine):
            # Logits from a ReLU or max-pool: an identity map at the end keeps "last layer is affine" true.
            size = form.output_dim
            eye = AffineOp(SparseMatrix.identity(size), np.zeros(size))
            layers = (*layers, _affine(eye, device, dtype))
        return BoundNetwork(form, layers, device, dtype)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> BoundNetwork:
        """The same network in another dtype or on another device (built once, then kept)."""
        key = (dtype or self.dtype, torch.device(device) if device is not None else self.device)
        if key == (self.dtype, self.device):
            return self
        if key not in self._copies:
            self._copies[key] = BoundNetwork.of(self.form, key[1], key[0])
        return self._copies[key]

    @property
    def input_dim(self) -> int:
        return self.form.input_dim

    @property
    def output_dim(self) -> int:
        last = self.layers[-1]
        assert isinstance(last, Affine)
        return last.out_size

    def nonlinear(self) -> list[int]:
        """Positions of the ReLU and max-pool layers."""
        return [k for k, layer in enumerate(self.layers) if not isinstance(layer, Affine)]

    def forward(self, x: Tensor) -> Tensor:
        return self.activations(x)[-1]

    def activations(self, x: Tensor) -> list[Tensor]:
        """``[x, layers[0](x), layers[1](layers[0](x)), ...]``."""
        out = [x]
        for layer in self.layers:
            h = out[-1]
            out.append(layer.forward(h) if not isinstance(layer, Relu) else h.clamp(min=0))
        return out

    def interval(self, lower: Tensor, upper: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Interval bounds of every ``activations`` entry over the box."""
        out = [(lower, upper)]
        for layer in self.layers:
            lo, hi = out[-1]
            if isinstance(layer, Affine):
                out.append(layer.interval(lo, hi))
            elif isinstance(layer, Relu):
                out.append((lo.clamp(min=0), hi.clamp(min=0)))
            else:
                out.append((layer.forward(lo), layer.forward(hi)))
        return out
