"""The paper's published numbers (Faithful Knowledge Distillation, Lamb et al.), copied from its tables: the
reference column of every reproduced table (``benchmarks/paper/``) and of every model card. ``None`` marks a cell
that is not legible in the copy we have."""

from __future__ import annotations

STUDENTS = ("sd", "ard", "rslad", "fd")

# Clean accuracy (%): teacher, then each student.
CLEAN = {
    "mnist": {"teacher": 97.88, "sd": 97.41, "ard": 97.20, "rslad": 97.12, "fd": 97.14},
    "fashion-mnist": {"teacher": 88.23, "sd": 88.29, "ard": 88.18, "rslad": 87.47, "fd": 87.81},
    "cifar10": {"teacher": 63.09, "sd": 63.09, "ard": 62.28, "rslad": 60.55, "fd": 60.48},
}

_MNIST_EPS = (0.025, 0.05, 0.1, 0.15, 0.2)
_SMALL_EPS = tuple(k / 255 for k in (4, 8, 12, 16, 20))


def _grid(
    eps: tuple[float, ...], rows: dict[str, tuple[float | None, ...]]
) -> dict[str, dict[float, float | None]]:
    return {model: dict(zip(eps, values, strict=True)) for model, values in rows.items()}


# Table 6: PGD-50 robust accuracy (%), per model and eps (eps 0 is the clean column of the table).
ROBUST = {
    "mnist": _grid(_MNIST_EPS, {
        "teacher": (97.5, 96.7, 94.9, 92.9, 90.0), "sd": (95.1, 94.1, 88.7, 80.3, 65.6),
        "ard": (95.9, 94.7, 93.0, 89.9, 86.7), "rslad": (96.5, 95.7, 93.8, 90.8, 87.0),
        "fd": (95.9, 95.5, 93.4, 90.8, 86.0),
    }),
    "fashion-mnist": _grid(_SMALL_EPS, {
        "teacher": (86.5, 83.8, 80.9, 76.9, 72.2), "sd": (81.2, 72.3, 61.2, 49.1, 37.7),
        "ard": (85.5, 82.9, 78.2, 72.2, 67.3), "rslad": (85.9, 83.5, 79.0, 74.5, 68.6),
        "fd": (85.5, 82.4, 77.0, 72.2, 67.1),
    }),
    "cifar10": _grid(_SMALL_EPS, {
        "teacher": (68.0, 58.0, 46.0, 35.0, 27.0), "sd": (53.0, 36.0, 27.0, 14.0, 5.0),
        "ard": (60.0, 53.0, 40.0, 29.0, 21.0), "rslad": (59.0, 48.0, 38.0, 30.0, 21.0),
        "fd": (69.0, 56.0, 42.0, 37.0, 25.0),
    }),
}  # fmt: skip

# Table 2: mean EmpLB and mean FaithUB (the paper's MILP bound), per student and eps.
EMP_LB = {
    "mnist": _grid(_MNIST_EPS, {
        "sd": (0.042, 0.060, 0.106, 0.172, 0.258), "ard": (0.045, 0.055, 0.078, 0.106, 0.140),
        "rslad": (0.039, 0.049, 0.072, 0.101, 0.138), "fd": (0.033, 0.041, 0.061, 0.086, 0.118),
    }),
    "fashion-mnist": _grid(_SMALL_EPS, {
        "sd": (0.099, 0.155, 0.219, 0.297, 0.378), "ard": (0.067, 0.096, 0.129, 0.165, 0.204),
        "rslad": (0.053, 0.081, 0.112, 0.148, 0.190), "fd": (0.060, 0.089, 0.122, 0.160, 0.202),
    }),
    "cifar10": _grid(_SMALL_EPS, {
        "sd": (0.282, 0.388, 0.489, 0.583, 0.666), "ard": (0.242, 0.317, 0.394, 0.462, 0.530),
        "rslad": (0.226, 0.291, 0.357, 0.415, 0.474), "fd": (0.187, 0.245, 0.302, 0.359, 0.416),
    }),
}  # fmt: skip
FAITH_UB = {
    "mnist": _grid(_MNIST_EPS, {
        "sd": (0.073, 0.179, 0.731, 0.974, 0.999), "ard": (0.061, 0.097, 0.262, 0.636, 0.905),
        "rslad": (0.060, 0.101, 0.290, 0.668, 0.889), "fd": (0.054, 0.094, 0.248, 0.588, 0.884),
    }),
    "fashion-mnist": _grid(_SMALL_EPS, {
        "sd": (0.215, 0.617, 0.892, 0.990, 0.999), "ard": (0.128, 0.330, 0.678, 0.906, 0.986),
        "rslad": (0.118, 0.341, 0.690, 0.917, 0.988), "fd": (0.123, 0.322, 0.668, 0.902, 0.985),
    }),
    "cifar10": _grid(_SMALL_EPS, {
        "sd": (0.671, 0.983, 1.000, 1.000, 1.000), "ard": (0.546, 0.910, 1.000, 1.000, 1.000),
        "rslad": (0.497, 0.873, 0.990, 0.999, 1.000), "fd": (0.474, 0.864, 0.989, 0.999, 1.000),
    }),
}  # fmt: skip

# Table 1: empirical distillation agreement (%). Our copy lost cells: MNIST rows have four values for five eps
# (which one is missing is not known), so no MNIST cell is compared; Fashion-MNIST ARD and RSLAD are not legible.
AGREEMENT = {
    "mnist": {s: dict.fromkeys(_MNIST_EPS) for s in STUDENTS},
    "fashion-mnist": _grid(_SMALL_EPS, {
        "sd": (86.8, 76.4, 66.2, 54.6, 43.6), "ard": (None,) * 5, "rslad": (None,) * 5,
        "fd": (93.1, 90.3, 85.0, 81.9, 78.8),
    }),
    "cifar10": _grid(_SMALL_EPS, {
        "sd": (60, 42, 31, 20, 13), "ard": (67, 61, 47, 38, 31), "rslad": (76, 62, 52, 44, 34),
        "fd": (80, 71, 57, 55, 43),
    }),
}  # fmt: skip


# How close a retrained model must come to be called a reproduction (clean accuracy within 1 point, PGD-50
# robust accuracy within 3 points at every eps of the grid), and what was tried where ours miss.
CLEAN_TOLERANCE = 1.0
ROBUST_TOLERANCE = 3.0
TRIED = {
    "mnist": (
        "the paper's settings with its radii read on [0, 1] pixels (eps 0.2): 91.4% clean and 61% PGD-50 at eps "
        "0.2, and without an eps warm-up a collapse to a constant prediction; read after mean/std normalisation "
        "(eps 0.2 is 0.0616 in pixels, the reading these models use) the same recipe reproduces the paper's "
        "teacher"
    ),
    "fashion-mnist": (
        "the paper's settings with its radii read on [0, 1] pixels (84.2% clean, PGD-50 6-10 points below Table "
        "6) and after mean/std normalisation (these models: robust accuracy within 2 points at 4-16/255, clean "
        "accuracy about 2 points low, more robust than the paper's at 20/255); an eps warm-up over the first 20% "
        "of the run, early stopping after it settles"
    ),
    "cifar10": (
        "the paper's settings with its radii read on [0, 1] pixels (the teacher: 43.9% clean, PGD-50 33.9% at "
        "4/255 down to 9.8% at 20/255) and after mean/std normalisation (one mean and std over the channels); "
        "a first normalised run on one CPU thread stopped by patience at epoch 60 (52.7% clean, 48.1% down to "
        "26.6%) while the cosine learning rate was still high; these models come from a second run that kept "
        "improving and was stopped for time (the teacher at epoch 110 of 128, the students as their cards say), "
        "each shipped at its best epoch"
    ),
}
