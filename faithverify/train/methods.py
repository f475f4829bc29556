"""Training methods: what one optimisation step minimises, given a batch.

A method is a callable ``method(model, x, y, progress, generator) -> scalar loss`` where ``progress``
(in [0, 1]) is the fraction of training done (for schedules such as an eps warm-up). The loop in ``loop.py``
knows nothing else about it, so distillation methods (SD, ARD, RSLAD, ...) slot in beside these two.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import Tensor, nn

from faithverify.train.attacks import (
    TrainingAttack,
    pgd_cross_entropy,
    pgd_student_soft_label_kl,
    pgd_teacher_student_kl,
)
from faithverify.train.losses import (
    ard_loss,
    cross_entropy,
    faithful_distillation_loss,
    rslad_loss,
    standard_distillation_loss,
)


class Method(Protocol):
    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, progress: float, generator: torch.Generator
    ) -> Tensor: ...

    def describe(self) -> dict[str, object]: ...


def _ramped(attack: TrainingAttack, warmup: float, progress: float) -> TrainingAttack:
    """The attack with eps (and step) scaled by ``min(1, progress / warmup)``.

    Small ReLU networks trained at the full eps from the first step often collapse to a constant prediction;
    growing eps from 0 lets them first learn the clean task.
    """
    if warmup <= 0 or progress >= warmup:
        return attack
    scale = progress / warmup
    return replace(attack, eps=attack.eps * scale, step=attack.step * scale)


@dataclass(frozen=True)
class AdversarialTraining:
    """PGD adversarial training (Madry et al.): minimise ``CE(z(x'), y)``, ``x' = argmax_B CE(z(x'), y)``."""

    attack: TrainingAttack
    eps_warmup: float = 0.0

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, progress: float, generator: torch.Generator
    ) -> Tensor:
        x_adv = pgd_cross_entropy(model, x, y, _ramped(self.attack, self.eps_warmup, progress), generator)
        return cross_entropy(model(x_adv), y)

    def describe(self) -> dict[str, object]:
        return {"method": "PGD adversarial training", "attack": self.attack, "eps_warmup": self.eps_warmup}


def _freeze(teacher: nn.Module) -> None:
    # The teacher is fixed: no gradients for its weights, and eval mode in case it ever has dropout/BN.
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)


@dataclass(frozen=True)
class StandardDistillation:
    """Standard distillation (SD) from a fixed ``teacher``: ``losses.standard_distillation_loss``, no attack."""

    teacher: nn.Module
    alpha: float = 0.9
    temperature: float = 4.0

    def __post_init__(self) -> None:
        _freeze(self.teacher)

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, progress: float, generator: torch.Generator
    ) -> Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return standard_distillation_loss(model(x), teacher_logits, y, self.alpha, self.temperature)

    def describe(self) -> dict[str, object]:
        return {"method": "standard distillation (SD)", "alpha": self.alpha, "temperature": self.temperature}


@dataclass(frozen=True)
class AdversariallyRobustDistillation:
    """ARD from a fixed ``teacher``: ``losses.ard_loss`` at ``x' = attacks.pgd_cross_entropy(student, x, y)``."""

    teacher: nn.Module
    attack: TrainingAttack
    alpha: float = 0.9
    temperature: float = 4.0
    eps_warmup: float = 0.0

    def __post_init__(self) -> None:
        _freeze(self.teacher)

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, progress: float, generator: torch.Generator
    ) -> Tensor:
        x_adv = pgd_cross_entropy(model, x, y, _ramped(self.attack, self.eps_warmup, progress), generator)
        with torch.no_grad():
            teacher_clean = self.teacher(x)
        return ard_loss(model(x_adv), teacher_clean, model(x), y, self.alpha, self.temperature)

    def describe(self) -> dict[str, object]:
        return {
            "method": "adversarially robust distillation (ARD)",
            "attack": self.attack,
            "alpha": self.alpha,
            "temperature": self.temperature,
            "eps_warmup": self.eps_warmup,
        }


@dataclass(frozen=True)
class RobustSoftLabelDistillation:
    """RSLAD from a fixed ``teacher``: ``losses.rslad_loss`` at ``x' = attacks.pgd_student_soft_label_kl``."""

    teacher: nn.Module
    attack: TrainingAttack
    adv_weight: float = 5.0 / 6.0
    temperature: float = 1.0
    eps_warmup: float = 0.0

    def __post_init__(self) -> None:
        _freeze(self.teacher)

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, progress: float, generator: torch.Generator
    ) -> Tensor:
        with torch.no_grad():
            teacher_clean = self.teacher(x)
        attack = _ramped(self.attack, self.eps_warmup, progress)
        x_adv = pgd_student_soft_label_kl(model, teacher_clean, x, attack, generator)
        return rslad_loss(model(x_adv), teacher_clean, model(x), self.adv_weight, self.temperature)

    def describe(self) -> dict[str, object]:
        return {
            "method": "robust soft-label adversarial distillation (RSLAD)",
            "attack": self.attack,
            "adv_weight": self.adv_weight,
            "temperature": self.temperature,
            "eps_warmup": self.eps_warmup,
        }


@dataclass(frozen=True)
class FaithfulDistillation:
    """Faithful distillation (FD) from a fixed ``teacher`` (frozen in place: eval mode, no parameter grads).

    Loss: ``losses.faithful_distillation_loss`` at ``x' = attacks.pgd_teacher_student_kl(teacher, student, x)``.
    """

    teacher: nn.Module
    attack: TrainingAttack
    alpha: float = 0.5
    temperature: float = 1.0
    eps_warmup: float = 0.0

    def __post_init__(self) -> None:
        _freeze(self.teacher)

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, progress: float, generator: torch.Generator
    ) -> Tensor:
        attack = _ramped(self.attack, self.eps_warmup, progress)
        x_adv = pgd_teacher_student_kl(self.teacher, model, x, attack, generator)
        with torch.no_grad():
            teacher_clean, teacher_adv = self.teacher(x), self.teacher(x_adv)
        return faithful_distillation_loss(
            teacher_clean, model(x), teacher_adv, model(x_adv), self.alpha, self.temperature
        )

    def describe(self) -> dict[str, object]:
        return {
            "method": "faithful distillation (FD)",
            "attack": self.attack,
            "alpha": self.alpha,
            "temperature": self.temperature,
            "eps_warmup": self.eps_warmup,
        }
