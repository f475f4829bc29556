"""Branch and bound on the coupled bound's terms, over teacher and student as one network.

The coupled bound (:mod:`.coupled`) relaxes the softmax of both networks into one linear form of their logits
per term, ``sigma_top,i - sigma_low,i <= w · [z_t(x); z_s(x)] + k`` on the box, and bounds ``max_x w · z`` with
CROWN. That form is a linear form of the paired network's output (:mod:`.paired`), so branch and bound over ReLU
splits of *either* network (:mod:`.bab`, beta-CROWN per domain) can bound it: a teacher split constrains the
shared input and so the student's part too, the one kind of bound that eq. 6, which bounds each network alone,
can never be. Two searches:

- :meth:`PairedBaB.maximize`: the root's linear form, to its exact maximum when run to the end (then only the
  softmax lines, fixed at the root's intervals, are loose);
- :meth:`PairedBaB.term` (:class:`TermBaB`, what the refinement uses): the softmax relaxed again on every
  domain, from the domain's own logit-difference bounds; incumbents are the term's true values, so the search
  closes on the term's maximum itself (up to the lines on the smallest domains, about 1e-3). It splits on a
  ReLU of either network or on a logit difference ``d_j`` (``d_j >= c`` / ``d_j <= c``: narrower softmax
  lines), whichever a one-pass look-ahead favours; a logit split enters the domain's bound as a constraint on
  the paired network's output with its own Lagrange multiplier (``bab._OutputConstraints``).

Soundness: every domain bound is sound on its domain (as in :class:`NetworkBaB`), the domains cover the box,
the softmax lines hold on the intervals they were drawn on (sound bounds, widened by the float margin), and
``coupled_margin`` covers float32 evaluation as for the coupled bound.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from faithverify.bounds import crown
from faithverify.bounds.bab import BabSettings, NetworkBaB, _Domains
from faithverify.bounds.coupled import (
    EXP_CLIP,
    TermForms,
    coupled_forms,
    coupled_margin,
    sigma_lower_line,
    sigma_upper_line,
)
from faithverify.bounds.crown import Box, LayerBounds, Relaxations
from faithverify.bounds.paired import UnpairableError, logit_shift, paired_form
from faithverify.bounds.softmax import LogitDiffBounds, float_margin
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
    witness: np.ndarray | None = None  # (term searches) the input where the term reached ``reachable``


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
        self.root = _paired_root(self.net, layers, short, carried)
        self.box = (np.asarray(lower, np.float64).reshape(-1), np.asarray(upper, np.float64).reshape(-1))
        self.settings = settings or BabSettings()
        self.search = NetworkBaB(self.net, *self.box, root=self.root, settings=self.settings)

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

    def term(
        self,
        forms: TermForms,
        cls: int,
        margin: float,
        *,
        time_limit: float,
        below: float | None = None,
        start: np.ndarray | None = None,
        stall: tuple[float, float] | None = None,
    ) -> TermSearch:
        """Sound upper bound on the term ``(forms' direction, cls)`` by :class:`TermBaB`; ``below``: enough once
        the bound is under it; ``stall``: as :meth:`NetworkBaB.search`. ``reachable`` is then the term's
        largest true value met (at ``witness``)."""
        began = time.perf_counter()
        search = TermBaB(self.net, *self.box, self.root, forms, cls, margin, self.settings)
        result = search.search(
            np.zeros(self.net.output_dim), time_limit=time_limit, stop_below=below, start=start, stall=stall
        )
        return TermSearch(
            bound=result.bound if math.isfinite(result.bound) else math.inf,
            reachable=result.best,
            finished=result.exact or (below is not None and result.bound <= below),
            domains=result.domains,
            seconds=time.perf_counter() - began,
            witness=result.witness,
        )


# A logit difference whose exp(d_j) varies by less than this over a domain is not split (the softmax lines are
# within about this of the softmax there).
_LOGIT_SPLIT_MIN = 1e-4


class TermBaB(NetworkBaB):
    """Branch and bound on one coupled term ``sigma_top,i(x) - sigma_low,i(x)`` over the paired network, with
    the softmax re-relaxed on every domain: a domain's own CROWN bounds on both networks' logit differences
    (narrower than the box's once ReLUs are split) give it narrower softmax lines, so its linear form and its
    constant are its own. The domain bound is ``const_D + max w_D · z + margin`` in the term's own units, an
    incumbent is the term's true value (float64) at an input of the box, and so the search closes on the term's
    exact maximum, not on a relaxation's.

    Soundness per domain: the root's intervals hold on it, CROWN's intervals on the domain hold there (its
    intermediate bounds are clamped by its splits, as in :class:`NetworkBaB`), both are widened by the float
    margin of :func:`~faithverify.bounds.softmax.float_margin` and intersected; any tangent point gives sound
    lines; the rest is :class:`NetworkBaB`'s bound of a linear form on a domain.
    """

    def __init__(
        self,
        net: BoundNetwork,
        lower: np.ndarray,
        upper: np.ndarray,
        root: LayerBounds,
        forms: TermForms,
        cls: int,
        margin: float,
        settings: BabSettings,
    ) -> None:
        super().__init__(net, lower, upper, root=root, settings=replace(settings, candidates=1))
        c = forms.top.shape[-1]
        self.cls, self.margin, self.c = cls, margin, c
        self.top_at, self.low_at = (p * c for p in forms.nets)  # where each network's logits sit in the pair
        self.others = forms.others[cls]
        self.root_top = (forms.top_interval[0][0, cls], forms.top_interval[1][0, cls])
        self.root_low = (forms.low_interval[0][0, cls], forms.low_interval[1][0, cls])
        self.theta_top, self.theta_low = forms.theta_top[0, cls], forms.theta_low[0, cls]
        # Rows of the paired output whose lower bounds give the intervals: +-(z_j - z_i), top network then low.
        rows = []
        for at in (self.top_at, self.low_at):
            for sign in (1.0, -1.0):
                r = torch.zeros(c - 1, 2 * c, dtype=net.dtype, device=net.device)
                r[torch.arange(c - 1), at + self.others] = sign
                r[:, at + cls] = -sign
                rows.append(r)
        self.interval_rows = torch.cat(rows)  # [4 (C-1), 2C]
        self.output_rows = self.interval_rows  # a domain's logit splits constrain these (``_Domains.rows``)

    def _bound_into(
        self,
        d: _Domains,
        spec: Tensor,
        iterations: int,
        w: Tensor,
        best: float,
        witness: np.ndarray | None,
        deadline: float = math.inf,
    ) -> tuple[float, np.ndarray | None]:
        weights, const = self._domain_forms(d)
        lb, d.alpha, d.beta, d.lam, primal = self._bound(d, -weights.unsqueeze(1), iterations, deadline)
        d.bound = torch.maximum(
            lb - const - self.margin, d.bound
        )  # -(term's upper bound); never below the parent's
        return self._evaluate_tensor(primal, w, best, witness)

    def _root_domains(self) -> _Domains:
        root = super()._root_domains()
        root.rows = torch.full(
            (1, self.interval_rows.shape[0]), -math.inf, dtype=self.net.dtype, device=self.net.device
        )
        return root

    def _intervals(self, d: _Domains) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Each domain's logit-difference intervals ``[M, C-1]`` (top network's lower, upper, low network's
        lower, upper): CROWN's under its ReLU splits, within its logit splits and its parent's intervals (kept
        in ``d.rows``: a child lies inside its parent), widened by the float margin, within the root's."""
        m = len(d)
        box = Box(self.box.center.expand(m, -1), self.box.radius.expand(m, -1))
        extra = {k: -(d.beta[k] * d.split[k].to(self.net.dtype)).unsqueeze(1) for k in d.beta}
        alpha = {k: v.unsqueeze(1) for k, v in d.alpha.items()}
        with torch.no_grad():
            lb = crown.final_bound(
                self.net, box, self.interval_rows.expand(m, -1, -1), self._layers(d), alpha, extra
            )
        if d.rows is not None:
            lb = torch.maximum(lb, d.rows)
            d.rows = lb
        return self._narrowed_rows(lb)

    def _narrowed_rows(self, lb: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        j = self.c - 1
        top_lo, top_hi, low_lo, low_hi = lb[:, :j], -lb[:, j : 2 * j], lb[:, 2 * j : 3 * j], -lb[:, 3 * j :]
        return (*_narrowed(top_lo, top_hi, self.root_top), *_narrowed(low_lo, low_hi, self.root_low))

    # --- branching: a ReLU of either network, or a logit difference -------------------------------------------

    def _branch(self, d: _Domains, spec: Tensor) -> tuple[_Domains | None, _Domains]:
        """Two children per domain: split on the best-scored ReLU, or on the logit difference whose softmax
        line is loosest (its range of ``exp(d_j)`` halved), whichever leaves the better worse child in one cheap
        pass with the parent's multipliers (as filtered smart branching does between neurons). ReLU splits
        tighten the networks' relaxations; only logit splits narrow the intervals the softmax lines are drawn
        on when those stay wide once the ReLUs are fixed (the lines' looseness is then the whole gap)."""
        relu_scores = self._relu_scores(d)
        has_relu = relu_scores.max(dim=1).values >= 0
        row, cut, has_logit = self._logit_choice(d)
        use_logit = has_logit & ~has_relu
        both = torch.nonzero(has_relu & has_logit).squeeze(1)
        if len(both):
            cand = d.take(both)
            by_relu = self._worse_child(*self._split(cand, relu_scores[both].argmax(dim=1)))
            by_logit = self._worse_child(*self._logit_split(cand, row[both], cut[both]))
            use_logit[both] = by_logit > by_relu
        use_relu = has_relu & ~use_logit
        final = d.take(torch.nonzero(~has_relu & ~has_logit).squeeze(1))
        parts: list[_Domains] = []
        if bool(use_relu.any()):
            on = torch.nonzero(use_relu).squeeze(1)
            parts.extend(self._split(d.take(on), relu_scores[on].argmax(dim=1)))
        if bool(use_logit.any()):
            on = torch.nonzero(use_logit).squeeze(1)
            parts.extend(self._logit_split(d.take(on), row[on], cut[on]))
        return (_Domains.cat(parts) if parts else None), final

    def _logit_choice(self, d: _Domains) -> tuple[Tensor, Tensor, Tensor]:
        """Per domain: the row of ``d.rows`` to split (a lower bound of ``d_j`` of one network), where (the
        ``d_j`` at which ``exp(d_j)`` is halfway through its range) and whether any range is worth a split."""
        assert d.rows is not None
        top_lo, top_hi, low_lo, low_hi = self._narrowed_rows(d.rows)
        ranges = torch.cat([top_hi.exp() - top_lo.exp(), low_hi.exp() - low_lo.exp()], dim=1)  # [M, 2(C-1)]
        widest, at = ranges.max(dim=1)
        lo, hi = torch.cat([top_lo, low_lo], dim=1), torch.cat([top_hi, low_hi], dim=1)
        lo_j, hi_j = lo.gather(1, at[:, None])[:, 0], hi.gather(1, at[:, None])[:, 0]
        cut = torch.logaddexp(lo_j, hi_j) - math.log(2.0)
        j = self.c - 1
        row = torch.where(at < j, at, at + j)  # the lower-bound row of d_j: top network's, or the low one's
        worth = (widest > _LOGIT_SPLIT_MIN) & (cut > lo_j) & (cut < hi_j)
        return row, cut, worth

    def _worse_child(self, first: _Domains, second: _Domains) -> Tensor:
        """The smaller of the two children's cheap bounds of ``-term`` (parent's multipliers, own lines)."""
        both = _Domains.cat([first, second])
        weights, const = self._domain_forms(both)
        with torch.no_grad():
            lb = self._quick_bound(both, -weights.unsqueeze(1)) - const
        return torch.minimum(lb[: len(first)], lb[len(first) :])

    def _logit_split(self, d: _Domains, row: Tensor, cut: Tensor) -> tuple[_Domains, _Domains]:
        """Copies of the domains with ``d_j >= cut`` and with ``d_j <= cut`` (``-d_j >= -cut``): together they
        cover the domain, and each child's intervals are its parent's with one end moved. The new constraint
        enters the child's bound through a Lagrange multiplier (``bab._OutputConstraints``), from 0: a choice
        of a small grid of starting values was measured no better (it favoured logit splits too much)."""
        assert d.rows is not None
        m = len(d)
        at = torch.arange(m, device=d.bound.device)
        above, below = d.take(at), d.take(at)
        assert above.rows is not None and below.rows is not None
        j = self.c - 1
        above.rows[at, row] = torch.maximum(above.rows[at, row], cut)
        upper_row = row + j  # the same d_j's upper-bound row (-d_j >= -u)
        below.rows[at, upper_row] = torch.maximum(below.rows[at, upper_row], -cut)
        return above, below

    def _domain_forms(self, d: _Domains) -> tuple[Tensor, Tensor]:
        """Each domain's linear form ``[M, 2C]`` and constant ``[M]``: the softmax lines on its own intervals."""
        m = len(d)
        top_lo, top_hi, low_lo, low_hi = self._intervals(d)
        t = top_lo + torch.sigmoid(self.theta_top) * (top_hi - top_lo)
        up_slopes, up_const = sigma_upper_line(top_lo, top_hi, t)
        s_lo, s_hi = low_lo.exp().sum(-1), low_hi.exp().sum(-1)
        s0 = s_lo + torch.sigmoid(self.theta_low) * (s_hi - s_lo)
        low_slopes, low_const = sigma_lower_line(low_lo, low_hi, s0)
        # sigma_top,i <= sum_j up_j (z_j - z_i) + up_const; sigma_low,i >= sum_j low_j (z_j - z_i) + low_const
        weights = torch.zeros(m, 2 * self.c, dtype=self.net.dtype, device=self.net.device)
        weights[:, self.top_at + self.others] = up_slopes
        weights[:, self.top_at + self.cls] = -up_slopes.sum(-1)
        weights[:, self.low_at + self.others] = -low_slopes
        weights[:, self.low_at + self.cls] = low_slopes.sum(-1)
        return weights, up_const - low_const

    def _leaves(
        self, d: _Domains, w: Tensor, best: float, witness: np.ndarray | None
    ) -> tuple[float, float, np.ndarray | None]:
        # Every ReLU decided: the networks are affine there, the softmax is not; the domain's bound stands.
        return float((-d.bound).max()), best, witness

    def _evaluate_tensor(
        self, x: Tensor, w: Tensor, best: float, witness: np.ndarray | None
    ) -> tuple[float, np.ndarray | None]:
        with torch.no_grad():
            z = self.net.forward(x)
            top = torch.softmax(z[:, self.top_at : self.top_at + self.c], dim=-1)[:, self.cls]
            low = torch.softmax(z[:, self.low_at : self.low_at + self.c], dim=-1)[:, self.cls]
            values = top - low
        k = int(values.argmax())
        if float(values[k]) > best:
            return float(values[k]), x[k].detach().cpu().double().numpy().copy()
        return best, witness


def _narrowed(lo: Tensor, hi: Tensor, root: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """A domain's intervals, widened by the float margin, within the root's (already widened), clipped for exp."""
    lo, hi = lo - float_margin(lo), hi + float_margin(hi)
    lo, hi = torch.maximum(lo, root[0]), torch.minimum(hi, root[1])
    return lo.clamp(-EXP_CLIP, EXP_CLIP), torch.maximum(lo, hi).clamp(-EXP_CLIP, EXP_CLIP)


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
    """Per-term bounds ``[2, C]`` after the search (never above the ones given), the inputs where terms
    reached their largest values met (candidate witnesses), and what it did."""

    terms: np.ndarray
    witnesses: list[np.ndarray]
    reached: float  # the largest term value met at those inputs (float64; 0 when none)
    searched: int  # term searches run
    seconds: float


# The softmax relaxation's tangent points are optimised this many steps before the search (as in screening).
_FORM_ITERATIONS = 20
# A term bounded this close to a value it takes is settled: its worst case is known (results.EXACT_GAP / 2).
_SETTLED = 5e-4
_STALL_SHARE, _STALL_MIN, _STALL_GAIN = 0.3, 1.0, 1e-4


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
    """Lower the largest terms of one point by branch and bound (:class:`TermBaB`) until ``deadline``
    (``time.monotonic()``). ``terms``: sound per-term bounds ``[2, C]`` (row 0 teacher above); ``target``:
    stop once every term is ``<= target``, or once a term is found to take a value above it (a witness);
    None: lower the largest term until it is no longer the largest, or settled (within ``_SETTLED`` of a value
    it takes: the point's worst case is then known), and go on with the next largest (the paper's FaithUB)."""
    began = time.perf_counter()
    terms = np.array(terms, dtype=np.float64)
    dtype, device = nets[0].dtype, nets[0].device
    lo = torch.as_tensor(np.asarray(lower, np.float64).reshape(1, -1)).to(device, dtype)
    hi = torch.as_tensor(np.asarray(upper, np.float64).reshape(1, -1)).to(device, dtype)
    start = np.clip(np.asarray(anchor, np.float64).reshape(1, -1), lower, upper)
    searched, witnesses, reached = 0, [], 0.0
    with torch.no_grad():
        forms = coupled_forms(
            nets, layers, diffs, Box.of(lo, hi), torch.as_tensor(start).to(device, dtype), _FORM_ITERATIONS,
            deadline=deadline,
        )  # fmt: skip
    d_max = max(float(np.abs(np.stack([d.lower, d.upper])).max()) for d in diffs)
    margin = float(coupled_margin(np.array([d_max]), terms.shape[1])[0])
    paired: PairedBaB | None = None
    done: set[tuple[int, int]] = set()  # terms that can go no lower
    while True:
        order = np.argsort(-terms.reshape(-1))
        row, col = np.unravel_index(int(order[0]), terms.shape)
        worst = (int(row), int(col))
        value = float(terms[worst])
        if (
            (target is not None and value <= target)
            or worst in done
            or (target is not None and reached > target)
        ):
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if paired is None:
            try:
                paired = PairedBaB(nets, layers, lower, upper, settings)
            except UnpairableError:
                break  # layer kinds that do not line up (a ReLU against a max-pool): the coupled bound stands
        # Enough for this term: the threshold, or (no threshold) the next largest term.
        below = target if target is not None else float(terms.reshape(-1)[order[1]])
        # A search whose bound has not moved for a while is given up (the rest of the budget is the point's
        # to keep, not to spend on a plateau).
        stall = (max(_STALL_MIN, _STALL_SHARE * remaining), _STALL_GAIN)
        result = paired.term(
            forms[worst[0]], worst[1], margin, time_limit=remaining, below=below, start=start, stall=stall
        )
        searched += 1
        # Never below 0, as in coupled_bound: where a logit difference passes EXP_CLIP the term is under e^-60,
        # which the lines drawn on clipped intervals need not cover.
        terms[worst] = min(value, max(result.bound, 0.0))
        if result.witness is not None and math.isfinite(result.reachable):
            witnesses.append(result.witness)
            reached = max(reached, result.reachable)
        stalled = not result.finished and result.bound > below and result.seconds < remaining - 1e-3
        if (
            (result.finished and result.bound > below)
            or stalled
            or terms[worst] - result.reachable <= _SETTLED
        ):
            done.add(worst)
    return SearchOutcome(terms, witnesses, reached, searched, time.perf_counter() - began)
