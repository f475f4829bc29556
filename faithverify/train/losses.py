"""Training losses as plain functions of logits, each with its formula.

Notation: ``z`` logits ``[N, C]``, ``softmax_T(z)_j = exp(z_j / T) / sum_k exp(z_k / T)``, ``f = softmax_1``,
``KL(p || q) = sum_j p_j (log p_j - log q_j)``. Batch losses are means over the N samples.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """``mean_n [ logsumexp_j z_nj - z_n,y_n ] = mean_n -log f(z_n)_{y_n}``.

    On PGD inputs ``x' = argmax_{x' in B} CE(z(x'), y)`` this is the adversarial-training loss of Madry et al.
    """
    return F.cross_entropy(logits, y)


def kl_teacher_student(
    teacher_logits: Tensor, student_logits: Tensor, temperature: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """``KL(p || q) = sum_j p_j (log p_j - log q_j)``, teacher ``p = softmax_T(z_t)``, ``q = softmax_T(z_s)``.

    Computed from log-softmaxes so that tiny probabilities do not give ``0 * log 0``. ``reduction="none"``
    gives the per-sample values ``[N]``, ``"mean"`` their mean.
    """
    log_p = F.log_softmax(teacher_logits / temperature, dim=1)
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    per_sample = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"unknown reduction {reduction!r}")


def distillation_kl(teacher_logits: Tensor, student_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Hinton et al.'s soft-label term ``T^2 * mean_n KL(softmax_T(z_t) || softmax_T(z_s))``.

    The ``T^2`` keeps gradient magnitudes comparable across temperatures (the gradient of the KL w.r.t. the
    student logits scales as ``1 / T^2`` for large T).
    """
    return temperature**2 * kl_teacher_student(teacher_logits, student_logits, temperature)


def standard_distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, y: Tensor, alpha: float, temperature: float
) -> Tensor:
    """Standard distillation (SD, Hinton et al. 2015), all at the clean input ``x``::

    L = (1 - alpha) * CE(z_s(x), y) + alpha * T^2 * KL(softmax_T(z_t(x)) || softmax_T(z_s(x)))
    """
    _check_alpha(alpha)
    soft = distillation_kl(teacher_logits, student_logits, temperature)
    return (1.0 - alpha) * cross_entropy(student_logits, y) + alpha * soft


def ard_loss(
    student_adv: Tensor,
    teacher_clean: Tensor,
    student_clean: Tensor,
    y: Tensor,
    alpha: float,
    temperature: float,
) -> Tensor:
    """Adversarially robust distillation (ARD, Goldblum et al. 2020, eq. 4)::

        L = alpha * T^2 * KL(softmax_T(z_t(x)) || softmax_T(z_s(x'))) + (1 - alpha) * CE(z_s(x), y),
        x' = argmax_{x' in B(x, eps)} CE(z_s(x'), y)

    The teacher stays at the clean ``x``; only the student sees the perturbed ``x'``. The caller finds ``x'``
    (``attacks.pgd_cross_entropy`` on the student).
    """
    _check_alpha(alpha)
    soft = distillation_kl(teacher_clean, student_adv, temperature)
    return alpha * soft + (1.0 - alpha) * cross_entropy(student_clean, y)


def rslad_loss(
    student_adv: Tensor,
    teacher_clean: Tensor,
    student_clean: Tensor,
    adv_weight: float = 5.0 / 6.0,
    temperature: float = 1.0,
) -> Tensor:
    """Robust soft-label adversarial distillation (RSLAD, Zi et al. 2021, eq. 7)::

        L = w * T^2 * KL(softmax_T(z_t(x)) || softmax_T(z_s(x'))) + (1 - w) * T^2 * KL(... || softmax_T(z_s(x))),
        x' = argmax_{x' in B(x, eps)} KL(f_t(x) || f_s(x'))

    RSLAD's own setting is ``w = 5/6, T = 1``; the faithfulness paper trains it with ``w = alpha = 0.5, T = 2``.
    The teacher's clean soft labels replace the hard labels everywhere, in the loss and in the inner
    maximisation (``attacks.pgd_student_soft_label_kl``); the teacher stays at the clean ``x``.
    """
    _check_alpha(adv_weight)
    adversarial = distillation_kl(teacher_clean, student_adv, temperature)
    natural = distillation_kl(teacher_clean, student_clean, temperature)
    return adv_weight * adversarial + (1.0 - adv_weight) * natural


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")


def faithful_distillation_loss(
    teacher_clean: Tensor,
    student_clean: Tensor,
    teacher_adv: Tensor,
    student_adv: Tensor,
    alpha: float = 0.5,
    temperature: float = 1.0,
) -> Tensor:
    """The faithful-distillation objective (paper eq. 7) mixed with a clean distillation term::

        L = (1 - alpha) * T^2 * KL(softmax_T(z_t(x)) || softmax_T(z_s(x)))
            + alpha * KL(f_t(x') || f_s(x')),      x' = argmax_{x' in B(x, eps)} KL(f_t(x') || f_s(x'))

    The adversarial term has both networks at the same ``x'`` and is always taken at temperature 1, because
    faithfulness (``||f_t(x) - f_s(x)||_inf`` over the ball) is a property of the plain softmax outputs.
    The clean term keeps the student's accuracy close to the teacher's at the data points themselves.
    The caller finds ``x'`` (see ``attacks.pgd_teacher_student_kl``) and passes the four logit tensors.
    """
    _check_alpha(alpha)
    clean = distillation_kl(teacher_clean, student_clean, temperature)
    adversarial = kl_teacher_student(teacher_adv, student_adv)
    return (1.0 - alpha) * clean + alpha * adversarial
