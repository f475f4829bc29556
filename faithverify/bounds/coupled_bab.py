"""Branch and bound on the coupled bound: each term's linear form maximised over the paired network.

The coupled bound (:mod:`.coupled`) relaxes the softmax of both networks into one linear form of their logits
per term, ``sigma_top,i - sigma_low,i <= w · [z_t(x); z_s(x)] + k`` on the box, and then bounds ``max_x w · z``
with CROWN, whose ReLU relaxations leave most of what is loose. That maximum is a linear form of the paired
network's output (:mod:`.paired`), so branch and bound over ReLU splits of either network (:mod:`.bab`,
beta-CROWN per domain) bounds it as tightly as time allows, and to the exact maximum when run to the end. A
teacher split constrains the shared input and so the student's part too: the one kind of bound that eq. 6,
which bounds each network alone, can never be.

Each term's bound is ``BaB's bound + k + coupled_margin``: sound for the same reasons as the coupled bound (the
softmax lines hold on the whole box, every domain bound is sound, the margin covers float32 evaluation).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from faithverify.bounds.bab import BabSettings, NetworkBaB
from faithverify.bounds.coupled import coupled_forms, coupled_margin
from faithverify.bounds.crown import Box, LayerBounds, Relaxations
from faithverify.bounds.paired import logit_shift, paired_form
from faithverify.bounds.softmax import LogitDiffBounds
from faithverify.bounds.torchnet import Affine, BoundNetwork


@dataclass(frozen=True)
class TermSearch:
    """One term's branch and bound: its sound bound (with the form's constant and the float margin), the
    largest value of the linear form met (plus the constant: what this relaxation can reach at best), and
    whether the search closed every domain."""

    bound: float
    reachable: float
    finished: bool
    domains: int
    seconds: float


class PairedBaB:
    """Branch and bound over the paired network of one box (built once, then one search per term)."""

    def __init__(
        self,
        nets: tuple[BoundNetwork, BoundNetwork],
        layers: tuple[LayerBounds, LayerBounds],
        lower: np.ndarray,
        upper: np.ndarray,
        settings: BabSettings | None = None,
    ) -> None:
        teacher, student = nets
        dtype, device = teacher.dtype, teacher.device
        lo = torch.as_tensor(np.asarray(lower, np.float64).reshape(1, -1)).to(device, dtype)
        hi = torch.as_tensor(np.asarray(upper, np.float64).reshape(1, -1)).to(device, dtype)
        short = 1 if len(student.layers) <= len(teacher.layers) else 0
        # The shorter network's logits over the box (intervals: only the carried ReLUs' stability needs them).
        z_lo, z_hi = nets[short].interval(lo, hi)[-1]
        shift = logit_shift(z_lo[0].cpu().numpy())
        self.net = BoundNetwork.of(paired_form(teacher.form, student.form, shift), device, dtype)
        carried = (z_lo - torch.as_tensor(shift).to(z_lo), z_hi - torch.as_tensor(shift).to(z_hi))
        root = _paired_root(self.net, layers, short, carried)
        self.search = NetworkBaB(self.net, lo, hi, root=root, settings=settings)

    def maximize(
        self,
        weights: torch.Tensor,
        const: float,
        margin: float,
        *,
        time_limit: float,
        below: float | None = None,
    ) -> TermSearch:
        """Sound upper bound on ``max_x weights · [z_t; z_s] + const + margin``; ``below``: enough once the
        bound is under it (domains under it are closed)."""
        began = time.perf_counter()
        stop = None if below is None else below - const - margin
        result = self.search.search(
            weights.detach().cpu().double().numpy(), time_limit=time_limit, stop_below=stop
        )
        bound = result.bound + const + margin
        return TermSearch(
            bound=bound if math.isfinite(bound) else math.inf,
            reachable=result.best + const,
            finished=result.exact or (stop is not None and result.bound <= stop),
            domains=result.domains,
            seconds=time.perf_counter() - began,
        )


def _paired_root(
    net: BoundNetwork,
    layers: tuple[LayerBounds, LayerBounds],
    short: int,
    carried: tuple[torch.Tensor, torch.Tensor],
) -> LayerBounds:
    """The paired network's intermediate bounds from each network's own (the teacher's part first); past the
    shorter network's end, its carried logits' bounds."""
    pre = {}
    relax = Relaxations()
    for k, layer in enumerate(net.layers):
        if isinstance(layer, Affine):
            continue
        parts = [layers[0].pre.get(k), layers[1].pre.get(k)]
        if parts[short] is None:
            parts[short] = carried
        lo = torch.cat([parts[0][0], parts[1][0]], dim=1)  # type: ignore[index]
        hi = torch.cat([parts[0][1], parts[1][1]], dim=1)  # type: ignore[index]
        pre[k] = (lo, hi)
        relax.add(net, k, pre[k])
    return LayerBounds(pre, relax)


@dataclass(frozen=True)
class SearchOutcome:
    """Per-term bounds ``[2, C]`` after the search (never above the ones given), and what it did."""

    terms: np.ndarray
    searched: int  # term searches run
    seconds: float


# The softmax relaxation's tangent points are optimised this many steps before the search (as in screening).
_FORM_ITERATIONS = 20
# A term whose form cannot reach below its bound by more than this is left alone: the relaxation, not the
# search, is what holds it up.
_NO_ROOM = 1e-4


def search_terms(
    nets: tuple[BoundNetwork, BoundNetwork],
    layers: tuple[LayerBounds, LayerBounds],
    diffs: tuple[LogitDiffBounds, LogitDiffBounds],
    lower: np.ndarray,
    upper: np.ndarray,
    anchor: np.ndarray,
    terms: np.ndarray,
    *,
    target: float | None,
    deadline: float,
    settings: BabSettings | None = None,
) -> SearchOutcome:
    """Lower the largest terms of one point by branch and bound on their coupled forms until ``deadline``
    (``time.monotonic()``). ``terms``: sound per-term bounds ``[2, C]`` (row 0 teacher above); ``target``:
    stop once every term is ``<= target`` (with a threshold), or None to lower the largest term as far as it
    goes (the paper's FaithUB): the search on it stops when it is no longer the largest."""
    began = time.perf_counter()
    terms = np.array(terms, dtype=np.float64)
    dtype, device = nets[0].dtype, nets[0].device
    lo = torch.as_tensor(np.asarray(lower, np.float64).reshape(1, -1)).to(device, dtype)
    hi = torch.as_tensor(np.asarray(upper, np.float64).reshape(1, -1)).to(device, dtype)
    x0 = torch.as_tensor(np.clip(np.asarray(anchor, np.float64).reshape(1, -1), lower, upper)).to(
        device, dtype
    )
    searched = 0
    with torch.no_grad():
        forms = coupled_forms(nets, layers, diffs, Box.of(lo, hi), x0, _FORM_ITERATIONS, deadline=deadline)
    d_max = max(float(np.abs(np.stack([d.lower, d.upper])).max()) for d in diffs)
    margin = float(coupled_margin(np.array([d_max]), terms.shape[1])[0])
    paired: PairedBaB | None = None
    done: set[tuple[int, int]] = set()  # terms whose search can go no lower
    while True:
        order = np.argsort(-terms.reshape(-1))
        worst = tuple(int(k) for k in np.unravel_index(int(order[0]), terms.shape))
        value = float(terms[worst])
        if target is not None and value <= target:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0 or worst in done:
            break
        form = forms[worst[0]]
        if paired is None:
            paired = PairedBaB(nets, layers, lower, upper, settings)
        # Enough for this term: the threshold, or (no threshold) the next largest term.
        below = target if target is not None else float(terms.reshape(-1)[order[1]])
        result = paired.maximize(
            form.paired_weights(0, worst[1]),
            float(form.const[0, worst[1]]),
            margin,
            time_limit=remaining,
            below=below,
        )
        searched += 1
        terms[worst] = min(value, result.bound)
        if result.bound > below and (result.finished or result.reachable + margin >= value - _NO_ROOM):
            done.add(worst)  # this relaxation can take the term no lower
    return SearchOutcome(terms, searched, time.perf_counter() - began)
