"""Branch and bound over ReLU splits with beta-CROWN bounds: a sound, anytime upper bound on
``max_{x in box} w · z(x)`` for one network, one box and one linear form ``w`` of the logits.

**Domains.** A domain is the box with some unstable ReLUs fixed to one side: "active" (``z_k >= 0``, so
``relu(z_k) = z_k``) or "inactive" (``z_k <= 0``, so ``relu(z_k) = 0``). The two children of a split cover the
parent's inputs, so the maximum over the box is the largest of the maxima over the open domains and any bound
on it is the largest of their bounds.

**Bounding a domain** (beta-CROWN, Wang et al. 2021): the lower bound of ``g = -w · z`` over the domain is a
CROWN bound in which (1) each split neuron's relaxation is exact for its side (its pre-activation bounds are
clamped to ``[0, u]`` or ``[l, 0]``), and (2) each split constraint ``s · z_k(x) >= 0`` (``s = +1`` active,
``-1`` inactive) enters with a Lagrange multiplier ``beta >= 0``: ``min g >= min (g - beta · s · z_k)`` over the
domain, since the added term is ``<= 0`` there, and the right side is bounded over the whole box by the same
backward pass (the term adds ``-beta · s`` to the coefficients over ``z_k``). Any ``alpha`` in ``[0, 1]`` and
``beta >= 0`` give a sound bound; a few Adam steps per batch choose good ones, starting from the parent's. A
child's bound is never reported below its parent's (the parent's bound holds on the child's inputs too), so the
global bound only ever improves. Intermediate bounds are the root's (alpha-CROWN's, optimised), clamped at
every split neuron: sound on every domain, since a domain is a subset of the box.

**Branching.** The domain with the worst bound is split first, many at a time (``batch`` per bound call). The
neuron is chosen by a BaBSR-like score (Bunel et al., 2020): the vertical extent of its triangle relaxation,
``u · (-l) / (u - l)``, weighted by ``|lambda|``, the coefficient of its output in the domain's bound, which
says how much the relaxation's slack costs that bound.

**Incumbents.** Every bound call also evaluates the network at the box vertex that minimises each domain's
final linear bound (a cheap, often good primal point), and at the caller's starting points; the best value
``f_best`` is a true lower bound on the maximum (float64 forward pass). A domain whose bound is at most
``f_best`` (plus the gap tolerance) cannot hold a better maximum and is closed; when every domain is closed the
bound meets the incumbent: the maximum is known (``exact``).

**Stopping** follows :class:`faithverify.bounds.milp.NetworkMILP`: ``stop_below=s`` closes domains whose bound is
``<= s`` and stops when none is open (the caller needs nothing tighter); ``cutoff=c`` does the same at ``c`` and
also stops once an incumbent exceeds ``c`` (a witness that the maximum is above it); and a time limit.

Floating point: the bound is exact arithmetic on the stored weights, computed in float64; as with CROWN,
:mod:`faithverify.bounds.softmax` widens it before use.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from faithverify.bounds import crown
from faithverify.bounds.crown import Box, LayerBounds, Relaxations
from faithverify.bounds.milp.backends import Status
from faithverify.bounds.milp.model import ExactMethod, SolveResult
from faithverify.bounds.torchnet import Affine, BoundNetwork, Relu

# Relative slack of a leaf LP's split rows (see leaf_maximum): far above the LP's 1e-9 feasibility tolerance.
_LEAF_SLACK = 1e-7
# MIP-style gap tolerances: a bound this close to the incumbent counts as exact (the MILP uses the same).
REL_GAP = 1e-4
ABS_GAP = 1e-6


@dataclass(frozen=True)
class BabSettings:
    batch: int = 256  # domains split per bound call (each gives two children)
    iterations: int = 10  # Adam steps on alpha and beta per bound call
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    max_domains: int = 50_000  # open domains kept; beyond this the run stops with its (sound) bound
    recompute_intermediate: bool = False  # CROWN bounds of later layers for every child (tighter, costlier)
    candidates: int = 4  # neurons tried per split by filtered smart branching (1: the score alone)


@dataclass
class _Domains:
    """Open domains as batched tensors; dictionaries are keyed by ReLU layer position."""

    lower: dict[int, Tensor]  # [M, n] pre-activation bounds, clamped by the splits
    upper: dict[int, Tensor]
    split: dict[int, Tensor]  # int8 [M, n]: +1 active, -1 inactive, 0 free
    alpha: dict[int, Tensor]  # [M, n]
    beta: dict[int, Tensor]  # [M, n]
    lam: dict[int, Tensor]  # [M, n]: coefficients of each ReLU's output in the domain's bound (for branching)
    bound: Tensor  # [M]: lower bound of g = -w · z over the domain
    # [M, R]: lower bounds of R linear forms of the output over the domain, for searches that also split on the
    # output (coupled_bab.TermBaB: logit differences); None where nothing but ReLUs is split.
    rows: Tensor | None = None
    row_mult: Tensor | None = None  # [M, R]: their Lagrange multipliers in the domain's bound (>= 0)

    def __len__(self) -> int:
        return int(self.bound.shape[0])

    def take(self, index: Tensor) -> _Domains:
        """The domains at ``index``, copied (advanced indexing copies)."""

        def pick(part: dict[int, Tensor]) -> dict[int, Tensor]:
            return {k: v[index] for k, v in part.items()}

        return _Domains(
            pick(self.lower), pick(self.upper), pick(self.split), pick(self.alpha), pick(self.beta),
            pick(self.lam), self.bound[index], None if self.rows is None else self.rows[index],
            None if self.row_mult is None else self.row_mult[index],
        )  # fmt: skip

    @staticmethod
    def cat(parts: list[_Domains]) -> _Domains:
        first = parts[0]

        def join(name: str) -> dict[int, Tensor]:
            return {k: torch.cat([getattr(p, name)[k] for p in parts]) for k in getattr(first, name)}

        return _Domains(
            join("lower"), join("upper"), join("split"), join("alpha"), join("beta"), join("lam"),
            torch.cat([p.bound for p in parts]),
            None if first.rows is None else torch.cat([p.rows for p in parts]),  # type: ignore[misc]
            None if first.row_mult is None else torch.cat([p.row_mult for p in parts]),  # type: ignore[misc]
        )  # fmt: skip


@dataclass
class BabResult:
    """``bound``: sound upper bound on the maximum; ``best``: the largest value found (at ``witness``)."""

    bound: float
    best: float
    witness: np.ndarray | None
    exact: bool
    status: Status
    seconds: float
    domains: int  # domains bounded in all
    history: list[tuple[float, float]] = field(default_factory=list)  # (seconds, bound) each time it improved


class NetworkBaB(ExactMethod):
    """Branch and bound for linear forms of one network's logits over one box (module docstring).

    ``root`` (optional): intermediate bounds computed already for this box (e.g. by alpha-CROWN over every
    logit difference); without it, alpha-CROWN computes them.
    """

    def __init__(
        self,
        network: BoundNetwork,
        lower: np.ndarray | Tensor,
        upper: np.ndarray | Tensor,
        *,
        root: LayerBounds | None = None,
        settings: BabSettings | None = None,
    ) -> None:
        self.net = network
        dtype, device = network.dtype, network.device
        lo = torch.as_tensor(np.asarray(lower, dtype=np.float64).reshape(1, -1)).to(device, dtype)
        hi = torch.as_tensor(np.asarray(upper, dtype=np.float64).reshape(1, -1)).to(device, dtype)
        self.box = Box.of(lo, hi)
        self.settings = settings or BabSettings()
        if root is None:
            from faithverify.bounds.bounder import pair_specification

            spec = pair_specification(network.output_dim).to(device, dtype)
            root = crown.alpha_crown(network, self.box, spec, iterations=20).layers
        self.root = root
        self.relus = [k for k in sorted(root.pre) if isinstance(network.layers[k], Relu)]
        # [R, output_dim]: linear forms of the output that domains may constrain (``_Domains.rows``); none here
        self.output_rows: Tensor | None = None

    @property
    def num_classes(self) -> int:
        return self.net.output_dim

    @property
    def input_dim(self) -> int:
        return self.net.input_dim

    def maximize(
        self,
        weights: np.ndarray,
        *,
        time_limit: float | None = None,
        cutoff: float | None = None,
        stop_below: float | None = None,
        start: np.ndarray | None = None,
    ) -> SolveResult:
        """:meth:`search` with the MILP's result type (the :class:`ExactMethod` contract)."""
        r = self.search(weights, time_limit=time_limit, cutoff=cutoff, stop_below=stop_below, start=start)
        return SolveResult(
            bound=r.bound,
            incumbent=r.best if math.isfinite(r.best) else None,
            exact=r.exact,
            status=str(r.status),
            seconds=r.seconds,
            solver="bab",
            witness=r.witness,
            witness_value=r.best if r.witness is not None else None,
        )

    # --- the search -----------------------------------------------------------------------------------------

    def search(
        self,
        weights: np.ndarray,
        *,
        time_limit: float | None = None,
        cutoff: float | None = None,
        stop_below: float | None = None,
        start: np.ndarray | None = None,
        stall: tuple[float, float] | None = None,
    ) -> BabResult:
        """Sound upper bound on ``max_{x in box} weights · z(x)`` (module docstring). ``stall = (s, g)``: stop
        once the bound has not come down by ``g`` in ``s`` seconds (the rest of the time would buy little)."""
        clock = time.perf_counter()
        deadline = math.inf if time_limit is None else clock + max(0.0, time_limit)
        dtype, device = self.net.dtype, self.net.device
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64)).to(device, dtype)
        spec = (-w).reshape(1, 1, -1)  # lower bounds of g = -w · z
        levels = [v for v in (cutoff, stop_below) if v is not None]
        close_at = max(levels) if levels else -math.inf  # a domain with bound <= this is settled
        above = math.inf if cutoff is None else float(cutoff)

        best, witness = -math.inf, None
        if start is not None:
            best, witness = self._evaluate(np.asarray(start, dtype=np.float64), w, best, witness)
        open_ = self._root_domains()
        iterations = self.settings.iterations
        best, witness = self._bound_into(open_, spec, iterations * 2, w, best, witness, deadline)
        bounded = 1
        step = 0.0  # the last split-and-bound step's seconds: one that would end after the deadline is not started
        closed = -math.inf  # the largest bound of a closed domain
        history: list[tuple[float, float]] = []
        status = Status.OPTIMAL
        while True:
            # Close what is settled: at the caller's level, or no better than the incumbent.
            ub = -open_.bound
            done = ub <= max(close_at, _exact_level(best))
            if bool(done.any()):
                closed = max(closed, float(ub[done].max()))
                open_ = open_.take(torch.nonzero(~done).squeeze(1))
            bound = max(closed, float((-open_.bound).max()) if len(open_) else -math.inf)
            if not history or bound < history[-1][1]:
                history.append((time.perf_counter() - clock, bound))
            if stall is not None and _stalled(history, time.perf_counter() - clock, *stall):
                status = Status.TIME_LIMIT  # (stopped early, like a time limit: the bound reached is sound)
                break
            if best > above:
                status = Status.INCUMBENT_ABOVE_CUTOFF
                break
            if not len(open_):
                status = Status.BOUND_BELOW_CUTOFF if levels and bound <= close_at else Status.OPTIMAL
                break
            began = time.perf_counter()
            if began + step >= deadline or len(open_) > self.settings.max_domains:
                status = Status.TIME_LIMIT  # out of time or of memory budget: the bound reached is sound
                break
            # Split the worst domains (lowest lower bound of g = highest bound on the maximum).
            order = torch.argsort(open_.bound)
            n_take = min(self.settings.batch, len(open_))
            chosen, rest = open_.take(order[:n_take]), open_.take(order[n_take:])
            children, final = self._branch(chosen, spec)
            if len(final):  # every ReLU decided: the network is linear there, and an LP gives the exact max
                leaf_bound, best, witness = self._leaves(final, w, best, witness)
                closed = max(closed, leaf_bound)
            if children is None:
                open_ = rest
                step = time.perf_counter() - began
                continue
            best, witness = self._bound_into(children, spec, iterations, w, best, witness, deadline)
            bounded += len(children)
            open_ = _Domains.cat([rest, children]) if len(rest) else children
            step = time.perf_counter() - began
        bound = max(closed, float((-open_.bound).max()) if len(open_) else -math.inf)
        if math.isfinite(best):
            bound = max(bound, best)  # float rounding could put a bound a hair below a value taken
        exact = math.isfinite(best) and bound <= _exact_level(best)
        return BabResult(
            bound=bound,
            best=best,
            witness=witness,
            exact=exact,
            status=status,
            seconds=time.perf_counter() - clock,
            domains=bounded,
            history=history,
        )

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
        """Bound the domains in place (never below the bound they hold already: a parent's) and look at their
        primal vertices for a better incumbent; past ``deadline`` (``time.perf_counter()``) with one iteration."""
        if self.settings.recompute_intermediate and any(bool((v != 0).any()) for v in d.split.values()):
            self._recompute(d)
        lb, d.alpha, d.beta, d.lam, primal = self._bound(d, spec, iterations, deadline)
        d.bound = torch.maximum(lb, d.bound)
        return self._evaluate_tensor(primal, w, best, witness)

    def _recompute(self, d: _Domains) -> None:
        """Tighten the domains' intermediate bounds with CROWN under their splits (intersected with theirs)."""
        m = len(d)
        box = Box(self.box.center.expand(m, -1), self.box.radius.expand(m, -1))
        known = self._layers(d).pre
        with torch.no_grad():
            layers, _ = crown.intermediate_bounds(self.net, box, best=known)
        for k in self.relus:
            d.lower[k], d.upper[k] = layers.pre[k]

    def _root_domains(self) -> _Domains:
        lower = {k: self.root.pre[k][0].clone() for k in self.relus}
        upper = {k: self.root.pre[k][1].clone() for k in self.relus}
        split = {k: torch.zeros(v.shape, dtype=torch.int8, device=v.device) for k, v in lower.items()}
        alpha = {k: self.root.relax.relu[k].lower_slope.clone() for k in self.relus}
        beta = {k: torch.zeros_like(v) for k, v in lower.items()}
        lam = {k: torch.zeros_like(v) for k, v in lower.items()}
        bound = torch.full((1,), -math.inf, dtype=self.net.dtype, device=self.net.device)
        return _Domains(lower, upper, split, alpha, beta, lam, bound)

    def _layers(self, d: _Domains) -> LayerBounds:
        """Intermediate bounds of the domains: theirs at ReLUs, the root's (expanded) at max-pools."""
        m = len(d)
        relax = Relaxations()
        pre = {}
        for k, (lo, hi) in self.root.pre.items():
            if k in d.lower:
                pre[k] = (d.lower[k], d.upper[k])
            else:
                pre[k] = (lo.expand(m, -1), hi.expand(m, -1))
            relax.add(self.net, k, pre[k])
        return LayerBounds(pre, relax)

    def _bound(
        self, d: _Domains, spec: Tensor, iterations: int, deadline: float = math.inf
    ) -> tuple[Tensor, dict[int, Tensor], dict[int, Tensor], dict[int, Tensor], Tensor]:
        """beta-CROWN lower bounds of ``spec · z`` on each domain, the optimised multipliers, the branching
        coefficients and each domain's minimising box vertex. Every iteration's bound is sound: past ``deadline``
        the best one so far is kept (at least one is always computed)."""
        m = len(d)
        box = Box(self.box.center.expand(m, -1), self.box.radius.expand(m, -1))
        layers = self._layers(d)
        spec_m = spec.expand(m, -1, -1)
        alpha = {k: v.clone().unsqueeze(1).requires_grad_(True) for k, v in d.alpha.items()}
        beta = {k: v.clone().unsqueeze(1).requires_grad_(True) for k, v in d.beta.items()}
        signs = {k: v.to(self.net.dtype).unsqueeze(1) for k, v in d.split.items()}
        best = torch.full((m,), -math.inf, dtype=self.net.dtype, device=self.net.device)
        best_alpha = {k: v.detach().clone() for k, v in alpha.items()}
        best_beta = {k: v.detach().clone() for k, v in beta.items()}
        has_split = any(bool((v != 0).any()) for v in d.split.values())
        params = [{"params": list(alpha.values()), "lr": self.settings.lr_alpha}]
        if has_split:
            params.append({"params": list(beta.values()), "lr": self.settings.lr_beta})
        constrained = _OutputConstraints.of(d, self.output_rows)
        if constrained is not None:
            params.append({"params": [constrained.mult], "lr": self.settings.lr_beta})
        optimizer = torch.optim.Adam(params)
        with torch.enable_grad():
            for it in range(max(1, iterations)):
                if it > 0 and time.perf_counter() >= deadline:
                    break
                extra = {k: -beta[k] * signs[k] for k in beta} if has_split else None
                if constrained is None:
                    lb = crown.final_bound(self.net, box, spec_m, layers, alpha, extra)[:, 0]
                else:
                    spec_c, offset = constrained.spec(spec_m)
                    lb = crown.final_bound(self.net, box, spec_c, layers, alpha, extra)[:, 0] + offset
                with torch.no_grad():
                    improved = lb.detach() > best
                    best = torch.where(improved, lb.detach(), best)
                    for k in alpha:
                        best_alpha[k][improved] = alpha[k].detach()[improved]
                        best_beta[k][improved] = beta[k].detach()[improved]
                    if constrained is not None:
                        constrained.keep(improved)
                if it == max(1, iterations) - 1:
                    break
                optimizer.zero_grad(set_to_none=True)
                (-lb.sum()).backward()
                optimizer.step()
                with torch.no_grad():
                    for t in alpha.values():
                        t.clamp_(0.0, 1.0)
                    for t in beta.values():
                        t.clamp_(min=0.0)
                    if constrained is not None:
                        constrained.mult.clamp_(min=0.0)
        # One pass with the best multipliers: branching coefficients and the primal vertex.
        with torch.no_grad():
            taps: dict[int, Tensor] = {}
            extra = {k: -best_beta[k] * signs[k] for k in best_beta} if has_split else None
            coeffs = spec_m.to(self.net.dtype)
            if constrained is not None:
                d.row_mult = constrained.best
                coeffs = constrained.spec(coeffs, constrained.best)[0]
            a, _ = crown.backward(
                self.net, coeffs, len(self.net.layers), layers.relax, best_alpha, extra, taps
            )
            first = self.net.layers[0]
            # (a network that starts with a ReLU has no first affine map: its coefficients are the input's)
            a_x = first.back(a) if isinstance(first, Affine) else a
            primal = torch.where(a_x[:, 0] > 0, box.lower, box.upper)
        return (
            best,
            {k: v[:, 0] for k, v in best_alpha.items()},
            {k: v[:, 0] for k, v in best_beta.items()},
            {k: v[:, 0] for k, v in taps.items()},
            primal,
        )

    def _branch(self, d: _Domains, spec: Tensor) -> tuple[_Domains | None, _Domains]:
        """Two children per domain, split on the neuron chosen by filtered smart branching; and the domains
        that have no free unstable neuron left."""
        all_scores = self._relu_scores(d)
        keep = all_scores.max(dim=1).values >= 0
        final = d.take(torch.nonzero(~keep).squeeze(1))
        if not bool(keep.any()):
            return None, final
        if not bool(keep.all()):
            d = d.take(torch.nonzero(keep).squeeze(1))
            all_scores = all_scores[keep]
        k_cand = min(self.settings.candidates, all_scores.shape[1])
        top, cand = all_scores.topk(k_cand, dim=1)  # [m, K]
        if k_cand == 1:
            chosen = cand[:, 0]
        else:
            # Filtered smart branching (De Palma et al., 2021): bound both children of each candidate with one
            # cheap pass (the parent's multipliers) and split where the worse child is best.
            m = len(d)
            rep = d.take(torch.arange(m, device=d.bound.device).repeat(k_cand))
            act, ina = self._split(rep, cand.T.reshape(-1))
            with torch.no_grad():
                both = self._quick_bound(_Domains.cat([act, ina]), spec)
            worse = torch.minimum(both[: len(rep)], both[len(rep) :]).reshape(k_cand, m)
            worse = torch.where(top.T >= 0, worse, torch.full_like(worse, -math.inf))
            chosen = cand.gather(1, worse.argmax(dim=0, keepdim=True).T)[:, 0]
        active, inactive = self._split(d, chosen)
        return _Domains.cat([active, inactive]), final

    def _relu_scores(self, d: _Domains) -> Tensor:
        """``[M, n]`` branching scores of every ReLU over all layers (BaBSR-like); -1 where not free and unstable."""
        scores = []
        for k in self.relus:
            lo, hi = d.lower[k], d.upper[k]
            free = (lo < 0) & (hi > 0) & (d.split[k] == 0)
            gap = hi * (-lo) / torch.where(free, hi - lo, torch.ones_like(hi))
            # |lambda| * gap, and a tiny pull towards the widest triangle where every lambda is zero.
            score = torch.where(free, d.lam[k].abs() * gap + 1e-9 * gap, torch.full_like(gap, -1.0))
            scores.append(score)
        return torch.cat(scores, dim=1)

    def _split(self, d: _Domains, flat_idx: Tensor) -> tuple[_Domains, _Domains]:
        """Copies of the domains with neuron ``flat_idx`` (over all ReLU layers) fixed active / inactive."""
        m = len(d)
        rows = torch.arange(m, device=d.bound.device)
        active, inactive = d.take(rows), d.take(rows)
        offsets = np.cumsum([0] + [d.lower[k].shape[1] for k in self.relus])
        for pos, k in enumerate(self.relus):
            in_layer = (flat_idx >= int(offsets[pos])) & (flat_idx < int(offsets[pos + 1]))
            if not bool(in_layer.any()):
                continue
            r, n = rows[in_layer], flat_idx[in_layer] - int(offsets[pos])
            active.split[k][r, n] = 1
            active.lower[k][r, n] = 0.0
            inactive.split[k][r, n] = -1
            inactive.upper[k][r, n] = 0.0
        return active, inactive

    def _quick_bound(self, d: _Domains, spec: Tensor) -> Tensor:
        """One beta-CROWN pass with the domains' own multipliers (no optimisation)."""
        m = len(d)
        box = Box(self.box.center.expand(m, -1), self.box.radius.expand(m, -1))
        extra = {k: -(d.beta[k] * d.split[k].to(self.net.dtype)).unsqueeze(1) for k in d.beta}
        alpha = {k: v.unsqueeze(1) for k, v in d.alpha.items()}
        spec_m, offset = spec.expand(m, -1, -1), torch.zeros(m, dtype=self.net.dtype, device=self.net.device)
        constrained = _OutputConstraints.of(d, self.output_rows)
        if constrained is not None:
            spec_m, offset = constrained.spec(spec_m)
        return crown.final_bound(self.net, box, spec_m, self._layers(d), alpha, extra)[:, 0] + offset

    def _leaves(
        self, d: _Domains, w: Tensor, best: float, witness: np.ndarray | None
    ) -> tuple[float, float, np.ndarray | None]:
        """The largest bound over domains with every ReLU decided: each domain's own bound, or the exact LP
        maximum over its region where that is smaller; the LP optima are incumbents too."""
        bounds = (-d.bound).tolist()
        for m in range(len(d)):  # (few: most domains are closed long before every ReLU is split)
            exact = leaf_maximum(self.net, self.box, d.lower, d.upper, d.split, m, w)
            if exact is None:
                continue
            value, x = exact
            bounds[m] = min(bounds[m], value)
            if x is not None:
                best, witness = self._evaluate(x, w, best, witness)
        return max(bounds), best, witness

    def _evaluate(
        self, x: np.ndarray, w: Tensor, best: float, witness: np.ndarray | None
    ) -> tuple[float, np.ndarray | None]:
        lo, hi = self.box.lower.cpu().numpy(), self.box.upper.cpu().numpy()
        x = np.clip(x.reshape(-1, self.input_dim), lo, hi)
        t = torch.as_tensor(x).to(self.net.device, self.net.dtype)
        return self._evaluate_tensor(t, w, best, witness)

    def _evaluate_tensor(
        self, x: Tensor, w: Tensor, best: float, witness: np.ndarray | None
    ) -> tuple[float, np.ndarray | None]:
        with torch.no_grad():
            values = self.net.forward(x) @ w
        k = int(values.argmax())
        if float(values[k]) > best:
            return float(values[k]), x[k].detach().cpu().double().numpy().copy()
        return best, witness


@dataclass
class _OutputConstraints:
    """Domains' constraints ``rows · z(x) >= c`` on the output (``_Domains.rows``), taken into a bound of
    ``spec · z`` by Lagrange multipliers ``mu >= 0``: on the domain ``spec · z >= (spec - mu rows) · z + mu · c``
    (the added term ``mu (rows · z - c)`` is >= 0 there), for any ``mu``, which are optimised with the rest."""

    rows: Tensor  # [R, n]
    bounds: Tensor  # [M, R], 0 where there is no constraint
    active: Tensor  # [M, R] (dtype): 1 where the constraint is finite
    mult: Tensor  # [M, R], a parameter
    best: Tensor  # [M, R]: the multipliers of each domain's best bound so far

    @staticmethod
    def of(d: _Domains, rows: Tensor | None) -> _OutputConstraints | None:
        if rows is None or d.rows is None:
            return None
        finite = torch.isfinite(d.rows)
        start = torch.zeros_like(d.rows) if d.row_mult is None else d.row_mult.clone()
        return _OutputConstraints(
            rows, torch.where(finite, d.rows, torch.zeros_like(d.rows)), finite.to(d.rows.dtype),
            start.requires_grad_(True), start.detach().clone(),
        )  # fmt: skip

    def spec(self, spec: Tensor, mult: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``spec - mu rows`` ``[M, 1, n]`` and the constant ``mu · c`` ``[M]``."""
        mu = (self.mult if mult is None else mult) * self.active
        return spec - (mu @ self.rows).unsqueeze(1), (mu * self.bounds).sum(-1)

    def keep(self, improved: Tensor) -> None:
        self.best[improved] = self.mult.detach()[improved]


def _stalled(history: list[tuple[float, float]], now: float, seconds: float, gain: float) -> bool:
    """Whether the bound (``history``: (seconds, bound) at each improvement) came down by less than ``gain``
    over the last ``seconds``."""
    if now < seconds:
        return False
    before = [b for t, b in history if t <= now - seconds]
    return bool(before) and before[-1] - history[-1][1] < gain


def _exact_level(best: float) -> float:
    """Bounds up to this are 'no better than the incumbent' (MIP gap tolerances)."""
    if not math.isfinite(best):
        return -math.inf
    return best + max(ABS_GAP, REL_GAP * abs(best))


def leaf_maximum(
    net: BoundNetwork,
    box: Box,
    lower: dict[int, Tensor],
    upper: dict[int, Tensor],
    split: dict[int, Tensor],
    m: int,
    w: Tensor,
) -> tuple[float, np.ndarray | None] | None:
    """``max w · z(x)`` over domain ``m`` when every ReLU is decided there: the network is one affine map on the
    region ``{x in box : s · z_k(x) >= 0 for every split neuron}``, so the maximum is an LP (HiGHS). Each split
    row is relaxed by a small slack, so the LP's region contains the true one despite rounding: its optimum
    plus the MILP's soundness margin is a sound upper bound, and "infeasible" means the domain is empty
    (``-inf``, no maximiser). None where the LP does not apply (an undecided max-pool) or does not finish."""
    import highspy

    from faithverify.bounds.milp.backends import (
        DUAL_FEASIBILITY_TOL,
        PRIMAL_FEASIBILITY_TOL,
        TINY_COEFFICIENT,
        new_highs,
    )
    from faithverify.bounds.milp.model import soundness_margin
    from faithverify.bounds.torchnet import Affine, MaxPool

    dim = net.input_dim
    lin = torch.eye(dim, dtype=net.dtype, device=net.device)  # h = lin @ x + off, as rows
    off = torch.zeros(dim, dtype=net.dtype, device=net.device)
    rows: list[Tensor] = []
    rhs: list[Tensor] = []
    for k, layer in enumerate(net.layers):
        if isinstance(layer, Affine):
            lin = layer.weight @ lin
            off = layer.forward(off.unsqueeze(0))[0]
        elif isinstance(layer, Relu):
            if k in lower:
                lo, hi, s = lower[k][m], upper[k][m], split[k][m]
            else:  # a ReLU branch and bound does not track (the first layer of a ReLU-first net): decided?
                return None
            if bool(((lo < 0) & (hi > 0) & (s == 0)).any()):
                return None
            sign = s.to(net.dtype)
            chosen = sign != 0
            if bool(chosen.any()):
                rows.append(sign[chosen, None] * lin[chosen])
                rhs.append(-sign[chosen] * off[chosen])
            active = (lo >= 0) | (s > 0)
            lin = lin * active[:, None].to(net.dtype)
            off = off * active.to(net.dtype)
        else:
            assert isinstance(layer, MaxPool)
            return None
    objective = (w @ lin).cpu().numpy()
    constant = float(w @ off)
    lo_x, hi_x = box.lower[0].cpu().numpy(), box.upper[0].cpu().numpy()
    h = new_highs()
    for key, value in {
        "threads": 1,
        "primal_feasibility_tolerance": PRIMAL_FEASIBILITY_TOL,
        "dual_feasibility_tolerance": DUAL_FEASIBILITY_TOL,
    }.items():
        h.setOptionValue(key, value)
    h.addVars(dim, lo_x, hi_x)
    h.changeColsCost(dim, np.arange(dim, dtype=np.int32), objective)
    h.changeObjectiveSense(highspy.ObjSense.kMaximize)
    if rows:
        a = torch.cat(rows).cpu().numpy()
        b = torch.cat(rhs).cpu().numpy()
        reach = np.maximum(np.abs(lo_x), np.abs(hi_x))
        slack = _LEAF_SLACK * (1.0 + np.abs(a) @ reach + np.abs(b))
        # HiGHS would drop entries this small and solve another LP; they go here, and their row is relaxed by
        # what they could contribute (as backends.solver_rows does for the MILPs).
        tiny = np.abs(a) <= TINY_COEFFICIENT
        slack = slack + (np.abs(a) * tiny) @ reach * (1.0 + 1e-12)
        a = np.where(tiny, 0.0, a)
        nz = a != 0
        starts = np.concatenate([[0], np.cumsum(nz.sum(axis=1))[:-1]]).astype(np.int32)
        cols = np.nonzero(nz)[1].astype(np.int32)
        h.addRows(len(a), b - slack, np.full(len(a), np.inf), int(nz.sum()), starts, cols, a[nz])
    h.run()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        return -math.inf, None
    if status != highspy.HighsModelStatus.kOptimal:
        return None
    value = float(h.getInfo().objective_function_value) + constant
    total = float(np.sum(hi_x - lo_x))
    x = np.clip(np.asarray(h.getSolution().col_value, dtype=np.float64), lo_x, hi_x)
    return value + soundness_margin(value, total), x
