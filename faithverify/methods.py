"""The names of the methods, as types: what the command line, the gate and records use (free of torch, so the
command line lists them without importing it)."""

from __future__ import annotations

from enum import StrEnum


class BoundMethod(StrEnum):
    """Screening methods: every point of a batch at once."""

    IBP = "ibp"
    CROWN = "crown"
    ALPHA_CROWN = "alpha-crown"
    COUPLED = "coupled"  # teacher and student bounded together (bounds/coupled.py), on the others' bounds


class Refiner(StrEnum):
    """Exact methods of the refinement stage: one point at a time, within a time budget."""

    BAB = "bab"
    MILP = "milp"


class RefineMode(StrEnum):
    """Which points the refinement stage sees."""

    NONE = "none"  # screening only
    UNDECIDED = "undecided"  # with a delta: the points screening leaves undecided
    ALL = "all"  # every point: FaithUB as tight as the time allows (the paper's FaithUB with the MILP)


class Solver(StrEnum):
    """The MILP's solver."""

    AUTO = "auto"  # Gurobi where its license allows the model, HiGHS otherwise
    HIGHS = "highs"
    GUROBI = "gurobi"


class Device(StrEnum):
    """Where bounds and attacks run."""

    AUTO = "auto"  # CUDA when torch sees it, else the CPU
    CPU = "cpu"
    CUDA = "cuda"


class Engine(StrEnum):
    """Who computes the screening bounds."""

    NATIVE = "native"
    AUTO_LIRPA = "auto_lirpa"


class Stage(StrEnum):
    """The stage that decided a point's verdict (``PointResult.decided_by``)."""

    ATTACK = "attack"  # a witness reached delta
    IBP = "ibp"
    CROWN = "crown"
    ALPHA_CROWN = "alpha-crown"
    COUPLED = "coupled"
    BAB = "bab"
    MILP = "milp"
    BAB_MILP = "bab+milp"  # the refinement stage with both exact methods (a portfolio)


def refinement_stage(refiners: tuple[Refiner, ...] | list[Refiner]) -> Stage:
    """The stage name of a refinement with these exact methods, in one canonical order."""
    return Stage("+".join(r.value for r in Refiner if r in refiners))
