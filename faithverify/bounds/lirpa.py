"""Logit-difference bounds of one network over input boxes, through auto_LiRPA (IBP, CROWN, alpha-CROWN).

Each network of a pair is bounded on its own (the paired specification matrix would be half zeros), on a
*flat* input, so that the first Linear layer sees the perturbed input directly and auto_LiRPA bounds it exactly
(an ``nn.Flatten`` in front blocks that). Only lower bounds are computed, for every ordered class pair
``(i, j)``: the upper bound of ``z_j - z_i`` is minus the lower bound of ``z_i - z_j``, so asking auto_LiRPA for
upper bounds too would do the same work twice. Bounds are computed under ``torch.no_grad()`` (alpha-CROWN
needs gradients for its own optimisation and manages them itself). See DESIGN.md for the measurements behind
each of these choices; ``benchmarks/screening_throughput.py`` re-measures them.

CROWN on a chain of Linear and ReLU layers runs in :mod:`faithverify.bounds.crown` instead (the same bound, to
~1e-13, at 3-4 times the speed); ``engine="auto_lirpa"`` forces the library.

Floating point: the default dtype is float64, and :mod:`faithverify.bounds.softmax` widens the results by a
stated margin before they are used.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from torch import nn

from faithverify.bounds.crown import ChainCrown, LinearReluChain
from faithverify.bounds.lirpa_compat import import_auto_lirpa
from faithverify.bounds.softmax import LogitDiffBounds
from faithverify.errors import BoundingError
from faithverify.onnx_io.layers import Reshape


class BoundMethod(StrEnum):
    IBP = "ibp"
    CROWN = "crown"
    ALPHA_CROWN = "alpha-crown"


_AUTO_LIRPA_METHOD = {
    BoundMethod.IBP: "IBP",
    BoundMethod.CROWN: "CROWN",
    BoundMethod.ALPHA_CROWN: "CROWN-Optimized",
}


def ordered_pairs(num_classes: int) -> list[tuple[int, int]]:
    """All ``(i, j)`` with ``i != j``; row ``k`` of :func:`pair_specification` bounds ``z_j - z_i``."""
    return [(i, j) for i in range(num_classes) for j in range(num_classes) if i != j]


def pair_specification(num_classes: int) -> torch.Tensor:
    """Specification matrix ``C`` with one row ``e_j - e_i`` per ordered pair (eq. 4), ``[C(C-1), C]``."""
    pairs = ordered_pairs(num_classes)
    spec = torch.zeros(len(pairs), num_classes, dtype=torch.float64)
    for row, (i, j) in enumerate(pairs):
        spec[row, j] = 1.0
        spec[row, i] = -1.0
    return spec


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(device)


class NetworkBounder:
    """Bounds ``z_j - z_i`` of one network (taking a flat input) over batches of input boxes."""

    def __init__(
        self,
        body: nn.Module,
        input_dim: int,
        num_classes: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
        alpha_iterations: int = 20,
        alpha_lr: float = 0.5,
        engine: str = "auto",
    ) -> None:
        if engine not in ("auto", "auto_lirpa"):
            raise ValueError(f"unknown bounding engine {engine!r}")
        auto_lirpa = import_auto_lirpa()
        self.device = torch.device(device)
        self.dtype = dtype
        self.input_dim = input_dim
        self.num_classes = num_classes
        self.alpha_iterations = alpha_iterations
        # A private copy: auto_LiRPA keeps references to the parameters, and a later .to() elsewhere would
        # silently change their dtype under it.
        body = copy.deepcopy(body).to(device=self.device, dtype=dtype).eval()
        for p in body.parameters():
            p.requires_grad_(False)
        # A flat body of a CNN starts with Reshape(flat -> C, H, W). auto_LiRPA 0.3 cannot pass the conv's
        # patches-mode bounds back through that Reshape (operators/shape.py indexes a 9-dim patches tensor that
        # is 7-dim: IndexError for larger batches or radii), so the library sees the image-shaped input and
        # the boxes are reshaped instead.
        self._bounded_shape: tuple[int, ...] = (input_dim,)
        layers = list(body.children()) if isinstance(body, nn.Sequential) else []
        if len(layers) > 1 and isinstance(layers[0], Reshape) and isinstance(layers[1], nn.Conv2d):
            self._bounded_shape = layers[0].shape
            body = nn.Sequential(*layers[1:])
        example = torch.zeros(1, *self._bounded_shape, device=self.device, dtype=dtype)
        # Both sparse-alpha options trip bugs in 0.3's activation.py (DESIGN.md); dense alphas are exact too.
        with warnings.catch_warnings(), _library_errors("build a bounded module for"):
            # auto_LiRPA traces through torch.jit, which torch 2 marks deprecated on every call.
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module: Any = auto_lirpa.BoundedModule(
                body,
                example,
                bound_opts={
                    "sparse_features_alpha": False,
                    "sparse_spec_alpha": False,
                    "optimize_bound_args": {"iteration": alpha_iterations, "lr_alpha": alpha_lr},
                },
                device=str(self.device),
                verbose=False,
            )
        # MaxPool keeps its fixed CROWN relaxation under alpha-CROWN: optimising it costs minutes for <1%.
        from auto_LiRPA.operators import BoundMaxPool

        self.module.optimizable_activations = [
            n for n in self.module.optimizable_activations if not isinstance(n, BoundMaxPool)
        ]
        self._auto_lirpa = auto_lirpa
        # CROWN on a Linear/ReLU chain runs natively (same bound, 3-4x the throughput; see crown.py) unless
        # the library is asked for explicitly.
        chain = LinearReluChain.from_module(body, dtype) if engine == "auto" else None
        self._native = ChainCrown(chain.to(self.device)) if chain is not None else None
        self.spec = pair_specification(num_classes).to(device=self.device, dtype=dtype)
        self._pairs = ordered_pairs(num_classes)
        self._rows = torch.tensor([i for i, _ in self._pairs])
        self._cols = torch.tensor([j for _, j in self._pairs])

    def _bounded_input(self, lower: torch.Tensor, upper: torch.Tensor) -> Any:
        ptb = self._auto_lirpa.PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper)
        return self._auto_lirpa.BoundedTensor((lower + upper) / 2, ptb)

    def pair_lower_bounds(
        self, lower: torch.Tensor, upper: torch.Tensor, method: BoundMethod
    ) -> torch.Tensor:
        """Lower bounds on every ``z_j - z_i`` (one row per ordered pair) for a batch of boxes ``[N, D]``."""
        return self.linear_lower_bounds(lower, upper, self.spec, method)

    def linear_lower_bounds(
        self, lower: torch.Tensor, upper: torch.Tensor, spec: torch.Tensor, method: BoundMethod
    ) -> torch.Tensor:
        """Lower bounds ``[N, R]`` on ``spec · z`` (``spec``: ``[R, C]``, any linear forms of the logits)."""
        lower = lower.to(device=self.device, dtype=self.dtype).reshape(len(lower), -1)
        upper = upper.to(device=self.device, dtype=self.dtype).reshape(len(upper), -1)
        spec = spec.to(device=self.device, dtype=self.dtype)
        if method is BoundMethod.CROWN and self._native is not None:
            with torch.no_grad():
                return self._native.bounds(lower, upper, spec)[0]
        spec = spec.unsqueeze(0).expand(len(lower), -1, -1)
        shape = (len(lower), *self._bounded_shape)
        x = self._bounded_input(lower.reshape(shape), upper.reshape(shape))
        grad: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if method is BoundMethod.ALPHA_CROWN else torch.no_grad()
        )
        with grad, _default_dtype(self.dtype), _library_errors(f"compute {method.value} bounds of"):
            lb, _ = self.module.compute_bounds(
                x=(x,), C=spec, method=_AUTO_LIRPA_METHOD[method], bound_upper=False
            )
        return lb.detach()

    def logit_diff_bounds(
        self, lower: torch.Tensor, upper: torch.Tensor, method: BoundMethod, batch_size: int = 1000
    ) -> LogitDiffBounds:
        """``LogitDiffBounds`` for boxes ``[N, D]``, computed in batches of ``batch_size``."""
        out = np.zeros((len(lower), self.num_classes, self.num_classes))
        for start, stop in _batches(len(lower), batch_size):
            lb = self.pair_lower_bounds(lower[start:stop], upper[start:stop], method).cpu().double().numpy()
            out[start:stop, self._rows.numpy(), self._cols.numpy()] = lb
        return LogitDiffBounds.from_lower(out)


@contextlib.contextmanager
def _library_errors(action: str) -> Iterator[None]:
    """auto_LiRPA fails on some graphs it does not support (e.g. a constant shift in front of a padded Conv in
    its default patches mode) with assorted exceptions deep inside; report them as one line instead."""
    try:
        yield
    except (RuntimeError, ValueError, NotImplementedError, AssertionError, IndexError, TypeError) as exc:
        raise BoundingError(
            f"auto_LiRPA 0.3 could not {action} this model: {type(exc).__name__}: {exc}"
        ) from exc


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """auto_LiRPA 0.3's alpha-CROWN casts its kept-best bounds to ``torch.get_default_dtype()`` in its last
    iteration (optimized_bounds.py), which fails for a float64 model under a float32 default (and would round a
    float64 bound to nearest, not outward). So the default dtype follows the model's while bounds are computed."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _batches(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, max(1, size)):
        yield start, min(n, start + size)
