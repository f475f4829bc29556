"""The one adapter to auto_LiRPA 0.3: everything the project asks of the library goes through here.

The native engine (:mod:`faithverify.bounds.crown`) computes IBP, CROWN and alpha-CROWN itself; the library is
the independent reference that tests and ``--engine auto_lirpa`` compare it with. The compatibility bridges for
torch 2 live in :mod:`.lirpa_compat`; the private attributes read here (``optimizable_activations``,
``_modules``) and the default-dtype toggling below are the only other places that know the library's insides,
and ``tests/test_lirpa_canary.py`` says which of them broke when the library changes.

The network is bounded on a *flat* input, so that the first Linear layer sees the perturbed input directly and
auto_LiRPA bounds it exactly (an ``nn.Flatten`` in front blocks that); only lower bounds are computed (an upper
bound is minus the lower bound of the negated form). Floating point: float64 by default, and
:mod:`faithverify.bounds.softmax` widens the results by a stated margin before they are used.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from faithverify.bounds.lirpa_compat import import_auto_lirpa
from faithverify.errors import BoundingError
from faithverify.onnx_io.layers import Reshape


class LirpaBounder:
    """Lower bounds of linear forms of one network's logits, computed by auto_LiRPA (IBP, CROWN, alpha-CROWN).

    ``body`` takes flat inputs ``[N, input_dim]``. Its methods take the method's auto_LiRPA name: ``"IBP"``,
    ``"CROWN"`` or ``"CROWN-Optimized"``.
    """

    def __init__(
        self,
        body: nn.Module,
        input_dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
        alpha_iterations: int = 20,
        alpha_lr: float = 0.5,
    ) -> None:
        auto_lirpa = import_auto_lirpa()
        self.device = torch.device(device)
        self.dtype = dtype
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
        # Both sparse-alpha options trip bugs in 0.3's activation.py (docs/design.md); dense alphas are exact too.
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

    def lower_bounds(
        self, lower: torch.Tensor, upper: torch.Tensor, spec: torch.Tensor, method: str
    ) -> torch.Tensor:
        """Lower bounds ``[N, R]`` on ``spec · z`` (``spec``: ``[R, C]``) over flat boxes ``[N, D]``."""
        lower = lower.to(device=self.device, dtype=self.dtype).reshape(len(lower), -1)
        upper = upper.to(device=self.device, dtype=self.dtype).reshape(len(upper), -1)
        spec = spec.to(device=self.device, dtype=self.dtype).unsqueeze(0).expand(len(lower), -1, -1)
        shape = (len(lower), *self._bounded_shape)
        ptb = self._auto_lirpa.PerturbationLpNorm(
            norm=float("inf"), x_L=lower.reshape(shape), x_U=upper.reshape(shape)
        )
        x = self._auto_lirpa.BoundedTensor(((lower + upper) / 2).reshape(shape), ptb)
        grad: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if method == "CROWN-Optimized" else torch.no_grad()
        )
        with grad, _default_dtype(self.dtype), _library_errors(f"compute {method} bounds of"):
            lb, _ = self.module.compute_bounds(x=(x,), C=spec, method=method, bound_upper=False)
        return lb.detach()

    def relu_input_bounds(self) -> list[tuple[str, torch.Tensor | None, torch.Tensor | None]]:
        """After a bound computation: ``(kind, lower, upper)`` of the input of every ReLU and max-pool node, in
        graph order (``kind`` is ``"relu"`` or ``"maxpool"``)."""
        kinds = {"BoundRelu": "relu", "BoundMaxPool": "maxpool"}
        out = []
        for node in self.module._modules.values():
            kind = kinds.get(type(node).__name__)
            if kind is None:
                continue
            source = node.inputs[0]
            out.append((kind, getattr(source, "lower", None), getattr(source, "upper", None)))
        return out


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
