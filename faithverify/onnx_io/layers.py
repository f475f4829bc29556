"""What are the torch layers a translated model is made of, and what is the model on a flat input?

:class:`ConvertedModel` chains standard torch modules plus the small ones defined here (reshapes, transposes
and constant-operand elementwise operations); :meth:`ConvertedModel.flat_body` folds the leading ones into the
first Linear/Conv so that auto_LiRPA meets the perturbed input at a Linear/Conv.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor, nn


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


def _per_channel(full: np.ndarray, axis: int) -> np.ndarray | None:
    """The values along ``axis`` if ``full`` is constant over all other axes, else None."""
    moved = np.moveaxis(full, axis, 0).reshape(full.shape[axis], -1)
    return moved[:, 0] if np.all(moved == moved[:, :1]) else None
