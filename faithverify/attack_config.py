"""The EmpLB attack's settings, kept free of torch so that the command line can read its defaults without
importing it (the one place they are set; :mod:`faithverify.attack` runs the attack)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PGDConfig:
    """The EmpLB attack (:func:`faithfulness_attack`).

    ``steps`` per run; ``restarts`` runs per objective (the first from ``x0``, the others from random points of
    the box); ``classes``: how many classes per point get an objective of their own (the most likely under
    either network at ``x0``, and the class of the largest gap there), each in both directions. ``step_size``
    fixes the step (as a multiple of the box's half-width, per input); None uses the APGD schedule (start at
    twice the half-width, halve where progress stalls).
    """

    steps: int = 100
    restarts: int = 2
    step_size: float | None = None
    seed: int = 0
    classes: int = 3

    def step_for(self, eps: float) -> float:
        """The fixed step of the old PGD (kept for robustness attacks): ``2.5 * eps / steps``."""
        return self.step_size if self.step_size is not None else 2.5 * eps / max(1, self.steps)
