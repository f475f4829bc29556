"""Logit-difference bounds of one network, or of a teacher/student pair, over input boxes.

Every ordered class pair ``(i, j)`` gets a lower bound on ``z_j - z_i`` (eq. 4); the upper bound of ``z_j - z_i``
is minus the lower bound of ``z_i - z_j``, so only lower bounds are computed. Each network of a pair is bounded
on its own (a paired specification would be half zeros). The bounds come from the native engine
(:mod:`.crown`: IBP, CROWN, alpha-CROWN) over the one network form; ``engine="auto_lirpa"`` asks auto_LiRPA
instead (:mod:`.lirpa`), the independent reference.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from faithverify.bounds import crown
from faithverify.bounds.coupled import CoupledBound, coupled_bound
from faithverify.bounds.crown import Box, LayerBounds
from faithverify.bounds.softmax import LogitDiffBounds, faithfulness_from_logit_bounds
from faithverify.bounds.torchnet import BoundNetwork
from faithverify.errors import DeviceError
from faithverify.methods import BoundMethod, Engine
from faithverify.network import PiecewiseLinearNetwork
from faithverify.pair import Pair

# alpha-CROWN in screening stops once its last two iterations raised the mean bound by less than this share of
# what the optimisation had gained so far (crown.alpha_crown's min_gain). On the shipped MNIST pair this is
# 2.5x fewer iterations than a fixed 20 for mean FaithUB at most 0.0012 (0.2%) looser, at the paper's eps 0.025
# to 0.2 (benchmarks/results/screening_throughput.md).
ALPHA_MIN_GAIN = 0.03

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
        raise DeviceError(
            "--device cuda was asked for, but torch sees no CUDA device (use --device cpu or auto)"
        )
    return torch.device(device)


@dataclass(frozen=True)
class SpecBounds:
    """Lower bounds ``[N, R]`` (float64, CPU) of the rows of a specification, and the intermediate bounds they
    were computed with (on the bounder's device; ``None`` from auto_LiRPA)."""

    lower: torch.Tensor
    layers: LayerBounds | None


class NetworkBounder:
    """Bounds ``z_j - z_i`` of one network (taking a flat input) over batches of input boxes."""

    def __init__(
        self,
        body: nn.Module | PiecewiseLinearNetwork,
        input_dim: int,
        num_classes: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
        alpha_iterations: int = 20,
        alpha_lr: float = crown.ALPHA_LR,
        engine: Engine | str = Engine.NATIVE,
        alpha_min_gain: float | None = ALPHA_MIN_GAIN,
    ) -> None:
        self.engine = Engine(engine)
        self.device = torch.device(device)
        self.dtype = dtype
        self.input_dim = input_dim
        self.num_classes = num_classes
        self.alpha_iterations = alpha_iterations
        self.alpha_lr = alpha_lr
        self.alpha_min_gain = alpha_min_gain  # None: always alpha_iterations
        if isinstance(body, PiecewiseLinearNetwork):
            self.form, self._body = body, None
        else:
            self.form = PiecewiseLinearNetwork.from_module(body, input_dim)
            self._body = body
        self.network = BoundNetwork.of(self.form, self.device, dtype)
        self._lirpa = None
        if self.engine is Engine.AUTO_LIRPA:
            from faithverify.bounds.lirpa import LirpaBounder

            if self._body is None:
                raise ValueError("auto_LiRPA needs the network as a torch module")
            self._lirpa = LirpaBounder(
                self._body, input_dim, self.device, dtype, max(1, alpha_iterations), alpha_lr
            )
        self.spec = pair_specification(num_classes).to(device=self.device, dtype=dtype)
        pairs = ordered_pairs(num_classes)
        self._rows = np.array([i for i, _ in pairs], dtype=np.int64)
        self._cols = np.array([j for _, j in pairs], dtype=np.int64)

    def bound(
        self,
        lower: torch.Tensor,
        upper: torch.Tensor,
        spec: torch.Tensor,
        method: BoundMethod,
        deadline: float | None = None,
    ) -> SpecBounds:
        """Lower bounds of ``spec · z`` (``spec``: ``[R, C]``) for flat boxes ``[N, D]``; alpha-CROWN's iterations
        stop by ``deadline`` (``time.monotonic()``)."""
        lower = lower.to(device=self.device, dtype=self.dtype).reshape(len(lower), -1)
        upper = upper.to(device=self.device, dtype=self.dtype).reshape(len(upper), -1)
        spec = spec.to(device=self.device, dtype=self.dtype)
        if self._lirpa is not None:
            lb = self._lirpa.lower_bounds(lower, upper, spec, _AUTO_LIRPA_METHOD[method])
            return SpecBounds(lb.to("cpu", torch.float64), None)
        box = Box.of(lower, upper)
        with torch.no_grad():
            if method is BoundMethod.IBP:
                return SpecBounds(crown.interval_bound(self.network, box, spec).cpu().double(), None)
            if method is BoundMethod.CROWN:
                lb, layers = crown.crown(self.network, box, spec)
                return SpecBounds(lb.cpu().double(), layers)
        # The slopes are optimised in float32 (1.5x faster, the same bounds to 1e-4) and every bound is then
        # recomputed from them in float64 (crown.alpha_crown).
        result = crown.alpha_crown(
            self.network,
            box,
            spec,
            iterations=self.alpha_iterations,
            lr=self.alpha_lr,
            optimize_dtype=torch.float32,
            deadline=deadline,
            min_gain=self.alpha_min_gain,
        )
        return SpecBounds(result.lower.cpu().double(), result.layers)

    def linear_lower_bounds(
        self,
        lower: torch.Tensor,
        upper: torch.Tensor,
        spec: torch.Tensor,
        method: BoundMethod,
        deadline: float | None = None,
    ) -> torch.Tensor:
        """Lower bounds ``[N, R]`` on ``spec · z`` (``spec``: ``[R, C]``, any linear forms of the logits)."""
        return self.bound(lower, upper, spec, method, deadline).lower

    def pair_lower_bounds(
        self, lower: torch.Tensor, upper: torch.Tensor, method: BoundMethod
    ) -> torch.Tensor:
        """Lower bounds on every ``z_j - z_i`` (one row per ordered pair) for a batch of boxes ``[N, D]``."""
        return self.linear_lower_bounds(lower, upper, self.spec, method)

    def logit_diff_bounds(
        self, lower: torch.Tensor, upper: torch.Tensor, method: BoundMethod, batch_size: int = 1000
    ) -> LogitDiffBounds:
        """``LogitDiffBounds`` for boxes ``[N, D]``, computed in batches of ``batch_size``."""
        out = np.zeros((len(lower), self.num_classes, self.num_classes))
        for start, stop in crown.batches(len(lower), batch_size):
            lb = self.pair_lower_bounds(lower[start:stop], upper[start:stop], method).numpy()
            out[start:stop, self._rows, self._cols] = lb
        return LogitDiffBounds.from_lower(out)

    def logit_diff_bounds_with_layers(
        self, lower: torch.Tensor, upper: torch.Tensor, method: BoundMethod
    ) -> tuple[LogitDiffBounds, LayerBounds | None]:
        """``LogitDiffBounds`` for boxes ``[N, D]`` in one batch, and the intermediate bounds behind them."""
        result = self.bound(lower, upper, self.spec, method)
        out = np.zeros((len(lower), self.num_classes, self.num_classes))
        out[:, self._rows, self._cols] = result.lower.numpy()
        return LogitDiffBounds.from_lower(out), result.layers


class PairBounder:
    """Logit-difference bounds for both networks of a pair, by any of the methods, and float32 copies of the
    networks for the attacks."""

    def __init__(
        self,
        pair: Pair,
        device: torch.device,
        alpha_iterations: int = 20,
        engine: Engine | str = Engine.NATIVE,
        alpha_min_gain: float | None = ALPHA_MIN_GAIN,
    ) -> None:
        dim = int(np.prod(pair.input_shape))
        self.teacher = copy.deepcopy(pair.teacher.module).to(device=device, dtype=torch.float32).eval()
        self.student = copy.deepcopy(pair.student.module).to(device=device, dtype=torch.float32).eval()
        # The one network form of each (auto_LiRPA, when asked for, needs the torch module instead).
        self.forms = (pair.teacher.network, pair.student.network)
        sources = (
            self.forms
            if Engine(engine) is Engine.NATIVE
            else (pair.teacher.module.flat_body(), pair.student.module.flat_body())
        )
        self.bounders = [
            NetworkBounder(
                src,
                dim,
                pair.num_classes,
                device=device,
                alpha_iterations=alpha_iterations,
                engine=engine,
                alpha_min_gain=alpha_min_gain,
            )
            for src in sources
        ]

    def logit_bounds(
        self, lower: np.ndarray, upper: np.ndarray, method: BoundMethod
    ) -> tuple[LogitDiffBounds, LogitDiffBounds]:
        """Teacher's and student's logit-difference bounds for boxes in the model's input shape."""
        lo = torch.from_numpy(lower.reshape(len(lower), -1))
        hi = torch.from_numpy(upper.reshape(len(upper), -1))
        t, s = (b.logit_diff_bounds(lo, hi, method, batch_size=len(lo)) for b in self.bounders)
        return t, s

    def logit_bounds_with_layers(
        self, lower: np.ndarray, upper: np.ndarray, method: BoundMethod
    ) -> tuple[tuple[LogitDiffBounds, LayerBounds | None], tuple[LogitDiffBounds, LayerBounds | None]]:
        """Per network: logit-difference bounds and the intermediate bounds behind them (None for IBP)."""
        lo = torch.from_numpy(lower.reshape(len(lower), -1))
        hi = torch.from_numpy(upper.reshape(len(upper), -1))
        t, s = (b.logit_diff_bounds_with_layers(lo, hi, method) for b in self.bounders)
        return t, s

    def faith_ub(self, lower: np.ndarray, upper: np.ndarray, method: BoundMethod) -> np.ndarray:
        """FaithUB per point for boxes given in the model's input shape (float64)."""
        if method is BoundMethod.COUPLED:
            lo = torch.from_numpy(lower.reshape(len(lower), -1))
            hi = torch.from_numpy(upper.reshape(len(upper), -1))
            (t, t_layers), (s, s_layers) = (
                b.logit_diff_bounds_with_layers(lo, hi, BoundMethod.CROWN) for b in self.bounders
            )
            assert t_layers is not None and s_layers is not None
            centre = ((lo + hi) / 2).to(self.bounders[0].device, self.bounders[0].dtype)
            return self.coupled(lower, upper, (t, s), (t_layers, s_layers), [centre]).value
        return faithfulness_from_logit_bounds(*self.logit_bounds(lower, upper, method)).value

    def coupled(
        self,
        lower: np.ndarray,
        upper: np.ndarray,
        diffs: tuple[LogitDiffBounds, LogitDiffBounds],
        layers: tuple[LayerBounds, LayerBounds],
        anchors: list[torch.Tensor],
    ) -> CoupledBound:
        """The coupled FaithUB (:mod:`.coupled`) on these per-network bounds, tangents at the ``anchors``."""
        nets = (self.bounders[0].network, self.bounders[1].network)
        dev, dtype = nets[0].device, nets[0].dtype
        lo = torch.from_numpy(lower.reshape(len(lower), -1)).to(dev, dtype)
        hi = torch.from_numpy(upper.reshape(len(upper), -1)).to(dev, dtype)
        points = [a.reshape(len(lower), -1).to(dev, dtype) for a in anchors]
        return coupled_bound(nets, layers, diffs, Box.of(lo, hi), points)
