"""The confidence gap of one point over a 2-D slice of its ball (the paper's Figure 1).

The slice is ``x(a, b) = x0 + a*u + b*v`` for ``a, b`` in ``[-eps, eps]``, clipped to the ball and the domain:
two sign directions added together move a coordinate by up to ``2 eps``, and clipping keeps every grid point
inside the verified box, so the whole map lies under the point's FaithUB. The gap ``||f_t(x) - f_s(x)||_inf`` is
evaluated by onnxruntime on the paired graph, the same reference every witness is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from faithverify.attack import PGDConfig, faithfulness_attack, float32_box, input_box
from faithverify.bounds.bounder import BoundMethod
from faithverify.errors import BoundingError
from faithverify.pair import Pair

_BATCH = 4096  # inputs per onnxruntime call: bounded memory at any resolution


@dataclass(frozen=True)
class GapSlice:
    """The gap over a grid of the slice; ``gap[k, l]`` is the gap at ``a = offsets[l]``, ``b = offsets[k]``."""

    index: int
    eps: float
    x0: np.ndarray  # float32, the model's input shape
    u: np.ndarray  # float64, the horizontal direction (entries in {-1, 0, 1})
    v: np.ndarray  # the vertical direction
    axis_names: tuple[str, str]
    offsets: np.ndarray  # [R], from -eps to eps, exactly symmetric, 0 at the centre (R is odd)
    lower: np.ndarray  # float32 box: the ball clipped to the domain
    upper: np.ndarray
    gap: np.ndarray  # [R, R] float64
    witness: np.ndarray  # the input that attains EmpLB (x0 itself when the attack finds nothing larger)
    witness_ab: tuple[float, float]  # the witness projected onto the slice's plane
    emp_lb: float  # the gap at the witness, by onnxruntime
    faith_ub: float | None  # CROWN's FaithUB for the point, when asked and computable

    @property
    def centre(self) -> int:
        return len(self.offsets) // 2

    def point(self, a: float, b: float) -> np.ndarray:
        """The input at slice coordinates ``(a, b)``."""
        return _points(self.x0, self.u, self.v, np.array([a]), b, self.lower, self.upper)[0]


def symmetric_offsets(eps: float, resolution: int) -> np.ndarray:
    """``resolution`` (odd) values from -eps to eps with 0 exactly in the middle, so x0 is a grid point."""
    if resolution < 3 or resolution % 2 == 0:
        raise ValueError(f"resolution must be an odd number >= 3, got {resolution}")
    half = eps * np.linspace(0.0, 1.0, resolution // 2 + 1)
    return np.concatenate([-half[:0:-1], half])


def random_sign_direction(
    shape: tuple[int, ...], rng: np.random.Generator, orthogonal_to: np.ndarray | None = None
) -> np.ndarray:
    """A random +-1 direction; with ``orthogonal_to``, signs are flipped until ``|<u, v>| <= 1``.

    Random signs are already nearly orthogonal (``<u, v> ~ sqrt(D)``), but exact orthogonality makes the two
    axes of the map show independent movements; each flip changes the product by 2, so parity allows at best 1.
    """
    v = rng.choice(np.array([-1.0, 1.0]), size=shape).reshape(-1)
    if orthogonal_to is not None:
        u = orthogonal_to.reshape(-1)
        dot = float(u @ v)
        # Flipping v_i where u_i * v_i has the sign of the product lowers |<u, v>| by 2 each time.
        movable = np.flatnonzero(u * v == np.sign(dot))
        flips = rng.choice(movable, size=int(abs(dot)) // 2, replace=False)
        v[flips] = -v[flips]
    return v.reshape(shape)


def _points(
    x0: np.ndarray, u: np.ndarray, v: np.ndarray, a: np.ndarray, b: float, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """``x0 + a*u + b*v`` for each ``a``, computed in float64, rounded to float32 and clipped to the box."""
    x = x0.astype(np.float64)[None] + a.reshape(-1, *[1] * x0.ndim) * u[None] + b * v[None]
    return np.clip(x.astype(np.float32), lo[None], hi[None])


def _gap_inf(pair: Pair, x: np.ndarray) -> np.ndarray:
    return np.abs(pair.gap_onnxruntime(x)).max(axis=1)


def compute_gap_slice(
    pair: Pair,
    x0: np.ndarray,
    eps: float,
    *,
    index: int = 0,
    dims: tuple[int, int] | None = None,
    resolution: int = 101,
    domain: tuple[float, float] = (0.0, 1.0),
    pgd: PGDConfig | None = None,
    seed: int = 0,
    with_faith_ub: bool = True,
) -> GapSlice:
    """The gap over a slice of the ball around ``x0`` (in the model's input shape).

    ``dims=None``: ``u`` is the sign of the PGD witness's displacement from ``x0`` and ``v`` a random sign
    direction (seeded) orthogonal to it. ``dims=(i, j)``: ``u`` and ``v`` move the flat input coordinates i and j.
    """
    from faithverify.bounds.bounder import PairBounder  # certify imports the MILP stack; only needed here

    x0 = np.asarray(x0, dtype=np.float32).reshape(pair.input_shape)
    offsets = symmetric_offsets(eps, resolution)
    lower64, upper64 = input_box(x0[None], eps, domain)
    lo32, hi32 = float32_box(lower64, upper64)
    bounder = PairBounder(pair, torch.device("cpu"))

    attack = faithfulness_attack(
        bounder.teacher, bounder.student, x0[None], lower64, upper64, pgd or PGDConfig(seed=seed), eps
    )
    # As in certify: the larger of the two re-checked gaps (witness, x0) is the lower bound.
    gaps = _gap_inf(pair, np.stack([attack.witness[0], x0]))
    witness = attack.witness[0] if gaps[0] >= gaps[1] else x0
    emp_lb = float(gaps.max())

    rng = np.random.default_rng(seed)
    if dims is None:
        u = np.sign(witness.astype(np.float64) - x0.astype(np.float64))
        names = ("a: along sign(witness - x0)", "b: random sign direction")
        if not u.any():  # the attack found nothing better than x0: no direction to follow
            u = random_sign_direction(x0.shape, rng)
            names = ("a: random sign direction", "b: random sign direction")
        v = random_sign_direction(x0.shape, rng, orthogonal_to=u)
    else:
        u, v = np.zeros(x0.shape), np.zeros(x0.shape)
        u.reshape(-1)[dims[0]] = 1.0
        v.reshape(-1)[dims[1]] = 1.0
        names = (f"a: input coordinate {dims[0]}", f"b: input coordinate {dims[1]}")

    gap = np.empty((resolution, resolution))
    rows_per_call = max(1, _BATCH // resolution)
    for k0 in range(0, resolution, rows_per_call):
        ks = range(k0, min(resolution, k0 + rows_per_call))
        x = np.concatenate([_points(x0, u, v, offsets, offsets[k], lo32[0], hi32[0]) for k in ks])
        gap[k0 : ks.stop] = _gap_inf(pair, x).reshape(len(ks), resolution)

    # Least-squares coordinates of the witness's displacement in the plane spanned by u and v.
    basis = np.stack([u.reshape(-1), v.reshape(-1)], axis=1)
    coef = np.linalg.lstsq(basis, (witness.astype(np.float64) - x0).reshape(-1), rcond=None)[0]

    faith_ub = None
    if with_faith_ub:
        try:
            faith_ub = float(bounder.faith_ub(lower64, upper64, BoundMethod.CROWN)[0])
        except BoundingError:
            faith_ub = None  # the map is still right; only the title loses its upper bound
    return GapSlice(
        index=index,
        eps=float(eps),
        x0=x0,
        u=u,
        v=v,
        axis_names=names,
        offsets=offsets,
        lower=lo32[0],
        upper=hi32[0],
        gap=gap,
        witness=witness,
        witness_ab=(float(coef[0]), float(coef[1])),
        emp_lb=emp_lb,
        faith_ub=faith_ub,
    )


def plot_gap_slice(s: GapSlice, path: str, dpi: int = 100) -> None:
    """The heat map, x0 and the witness marked, with a colorbar and the point's bounds in the title."""
    fig = Figure(figsize=(5.2, 4.4), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    step = s.offsets[1] - s.offsets[0]
    extent = (-s.eps - step / 2, s.eps + step / 2, -s.eps - step / 2, s.eps + step / 2)
    # The colour range is the map's own: a slice along two pixels may vary by 1e-3 only, and that is the news.
    image = ax.imshow(s.gap, origin="lower", extent=extent, cmap="viridis", aspect="equal")
    fig.colorbar(image, ax=ax, label=r"$\|f_t(x) - f_s(x)\|_\infty$")
    ax.plot(0, 0, marker="+", color="white", markersize=12, markeredgewidth=2, linestyle="", label="x0")
    wa, wb = (float(np.clip(c, -s.eps, s.eps)) for c in s.witness_ab)
    ax.plot(wa, wb, marker="x", color="red", markersize=9, markeredgewidth=2, linestyle="", label="witness")
    ax.set_xlabel(s.axis_names[0])
    ax.set_ylabel(s.axis_names[1])
    ax.legend(loc="upper left", fontsize="small", framealpha=0.7)
    ub = "n/a" if s.faith_ub is None else f"{s.faith_ub:.3f}"
    ax.set_title(
        f"point {s.index}, eps {s.eps:g}: slice max {s.gap.max():.3f}\nEmpLB {s.emp_lb:.3f}, CROWN FaithUB {ub}",
        fontsize="medium",
    )
    fig.savefig(path)
