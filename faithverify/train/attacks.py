"""L-inf PGD used during training and for the accuracy figures of a model card.

Every attack here maximises some per-sample loss ``L(x)`` over ``B = {x : |x - x0|_inf <= eps} ∩ [lo, hi]``
by projected signed-gradient ascent (Madry et al.):

    x_0     = clip(x0 + U(-eps, eps), lo, hi)                      (random start)
    x_{k+1} = Proj_B(x_k + step * sign(grad_x sum_n L(x_k)_n))

where ``Proj_B(x) = clip(clip(x, x0 - eps, x0 + eps), lo, hi)`` is the exact Euclidean projection onto the box
B (the ball and the domain are both boxes). Summing over the batch keeps the samples independent, since each
sample's loss depends only on its own input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faithverify.train.losses import kl_teacher_student


@dataclass(frozen=True)
class TrainingAttack:
    """Radius, step size and number of steps of an L-inf PGD attack, within the input ``domain``."""

    eps: float
    step: float
    steps: int
    random_start: bool = True
    domain: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def evaluation(cls, eps: float, steps: int = 50) -> TrainingAttack:
        """The paper's evaluation attack (PGD-50): ``steps`` steps of size ``2.5 * eps / steps``."""
        return cls(eps=eps, step=2.5 * eps / steps, steps=steps)


def project(x: Tensor, x0: Tensor, eps: float, domain: tuple[float, float]) -> Tensor:
    """``clip(clip(x, x0 - eps, x0 + eps), lo, hi)``: the nearest point of the eps-ball ∩ domain."""
    return torch.clamp(torch.minimum(torch.maximum(x, x0 - eps), x0 + eps), domain[0], domain[1])


def pgd_maximise(
    loss_fn: Callable[[Tensor], Tensor],
    x0: Tensor,
    cfg: TrainingAttack,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Approximately ``argmax_{x in B} loss_fn(x)``; ``loss_fn`` returns per-sample losses ``[N]``.

    Gradients are taken with ``torch.autograd.grad`` w.r.t. the input only, so the parameters of the models
    inside ``loss_fn`` accumulate no gradient. Returns a detached tensor inside B.
    """
    from faithverify.attack import maximize_in_box

    x0 = x0.detach()
    if cfg.eps == 0 or cfg.steps == 0:
        return x0.clone()
    if cfg.random_start:
        noise = torch.rand(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        x = project(x0 + (2 * noise - 1) * cfg.eps, x0, cfg.eps, cfg.domain)
    else:
        x = x0.clone()
    # The box B = ball ∩ domain; projecting onto it is clipping to these bounds (x0 lies in the domain).
    lo = torch.clamp(x0 - cfg.eps, *cfg.domain)
    hi = torch.clamp(x0 + cfg.eps, *cfg.domain)
    last, _ = maximize_in_box(loss_fn, x, lo, hi, cfg.steps, cfg.step, keep="last")
    return last


def pgd_cross_entropy(
    model: nn.Module, x0: Tensor, y: Tensor, cfg: TrainingAttack, generator: torch.Generator | None = None
) -> Tensor:
    """Untargeted PGD on the cross-entropy ``-log softmax(z(x))_y`` (for adversarial training, robustness)."""
    return pgd_maximise(lambda x: F.cross_entropy(model(x), y, reduction="none"), x0, cfg, generator)


def pgd_teacher_student_kl(
    teacher: nn.Module,
    student: nn.Module,
    x0: Tensor,
    cfg: TrainingAttack,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The inner maximisation of faithful distillation: ``argmax_{x' in B} KL(f_t(x') || f_s(x'))``.

    Both networks are evaluated at the same perturbed input ``x'`` (unlike ARD/RSLAD, which keep the
    teacher at the clean ``x``), so the attack looks for the point where the student's softmax drifts furthest
    from the teacher's, which is what the faithfulness bound measures.
    """
    return pgd_maximise(
        lambda x: kl_teacher_student(teacher(x), student(x), reduction="none"), x0, cfg, generator
    )


def pgd_student_soft_label_kl(
    student: nn.Module,
    teacher_clean_logits: Tensor,
    x0: Tensor,
    cfg: TrainingAttack,
    generator: torch.Generator | None = None,
) -> Tensor:
    """RSLAD's inner maximisation: ``argmax_{x' in B} KL(f_t(x0) || f_s(x'))``.

    Only the student's input moves; the teacher's soft labels at the clean ``x0`` are fixed targets. The
    direction of the KL is the one of the authors' code (``KLDivLoss(log_softmax(s(x')), softmax(t(x)))``),
    the same divergence as the loss's adversarial term.
    """
    target = teacher_clean_logits.detach()
    return pgd_maximise(
        lambda x: kl_teacher_student(target, student(x), reduction="none"), x0, cfg, generator
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Share of samples whose arg-max logit equals the label."""
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(dim=1) == y[i : i + batch_size]).sum())
    return correct / max(len(x), 1)


def robust_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, batch_size: int = 1000, seed: int = 0
) -> float:
    """Share of samples that the paper's PGD-50 does not break (:func:`faithverify.attack.robust_mask`, the one
    definition that certify uses too). PGD only finds some adversarial inputs: an upper bound on the truth."""
    from faithverify.attack import robust_mask

    robust = 0
    for i in range(0, len(x), batch_size):
        keys = np.arange(i, min(i + batch_size, len(x)))
        robust += int(robust_mask(model, x[keys], y[keys], eps, seed=seed, keys=keys).sum())
    return robust / max(len(x), 1)
