"""One classifier's local robustness as a VNN-COMP-style benchmark suite (VNN-LIB 1.0).

For a point ``x0`` with label ``y`` and a radius ``eps`` the question is whether some input in the box
``B = [x0 - eps, x0 + eps] ∩ domain`` makes another class's logit reach the label's: the unsafe set is
``or_{j != y} (Y_j >= Y_y)``, each disjunct the row ``Y_y - Y_j <= 0``. ``sat`` is an adversarial example
(or a tie), ``unsat`` certifies that the model keeps ``y`` on all of ``B``. A point the model already gets wrong
at ``x0`` is exported too: its instances are ``sat`` at every eps.

Layout of a suite folder (what ``faithverify bench`` reads)::

    instances.csv                           onnx,vnnlib,timeout rows (paths relative to the CSV, no header)
    onnx/model.onnx                         the logits model, input [1, ...], output [1, C]
    vnnlib/robust_<index>_eps_<eps>.vnnlib  one property per point and eps

The model is given a batch dimension of 1, as VNN-COMP models have, and is checked with onnxruntime on the
exported points before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from faithverify.data import check_label_range
from faithverify.errors import DataError, ModelLoadError, ResultsFileError
from faithverify.onnx_io import LoadedModel, load_model, run_onnxruntime
from faithverify.vnn.export import ball, batch_of_one
from faithverify.vnn.vnnlib import (
    Box,
    Conjunct,
    Property,
    write_bytes_atomic,
    write_text_atomic,
    write_vnnlib,
)

MODEL = "onnx/model.onnx"
INSTANCES = "instances.csv"
_CHECK_TOLERANCE = 1e-5  # the same graph on the same runtime: only the batch axis differs


@dataclass(frozen=True)
class RobustnessInstance:
    """One exported instance; the paths are relative to the suite folder."""

    index: int  # the point's position in its dataset
    eps: float
    label: int
    correct: bool  # the model gives the label a strictly larger logit than every other class at x0
    onnx: str
    vnnlib: str
    timeout: float


@dataclass(frozen=True)
class RobustnessSuite:
    """What :func:`export_robustness_suite` wrote."""

    instances: list[RobustnessInstance]
    n_points: int
    n_eps: int
    misclassified: list[int]  # dataset indices of the points the model gets wrong at x0 (sat at every eps)


def load_classifier(path: str | Path, domain: tuple[float, float] = (0.0, 1.0)) -> LoadedModel:
    """Load (and check against onnxruntime) a classifier with at least two classes."""
    model = load_model(path, domain=domain)
    if model.num_classes < 2:
        raise ModelLoadError(
            f"{path}: {model.num_classes} output class; a robustness property needs at least 2 (another "
            "class must be able to win)"
        )
    return model


def robustness_property(box: Box, label: int, n_classes: int) -> Property:
    """Unsafe iff some other class's logit reaches the label's: ``or_{j != label} (Y_label - Y_j <= 0)``."""
    if not 0 <= label < n_classes:
        raise ValueError(f"label {label} is not one of {n_classes} classes")
    unsafe = []
    for j in range(n_classes):
        if j == label:
            continue
        a = np.zeros((1, n_classes))
        a[0, label], a[0, j] = 1.0, -1.0
        unsafe.append(Conjunct(a, np.zeros(1)))
    return Property([box], unsafe)


def check_labels(
    labels: np.ndarray | None, indices: Sequence[int] | np.ndarray, n_classes: int
) -> np.ndarray:
    """The labels as int64, or a DataError when there are none or one names no class of the model."""
    if labels is None:
        raise DataError("the points have no labels; a robustness suite needs each point's class")
    labels = np.asarray(labels)
    if labels.shape != (len(indices),):
        raise DataError(f"{len(indices)} points but {labels.size} labels")
    if not np.issubdtype(labels.dtype, np.integer):
        rounded = np.round(labels)
        if not np.all(np.isfinite(labels)) or not np.array_equal(rounded, labels):
            raise DataError("the labels are not whole numbers")
        labels = rounded
    labels = labels.astype(np.int64)
    check_label_range(labels, np.asarray(indices), n_classes)
    return labels


def model_of_batch_one(model: onnx.ModelProto) -> onnx.ModelProto:
    """A checked copy of the logits model with axis 0 of its inputs and outputs fixed to 1."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    batch_of_one(out)
    onnx.checker.check_model(out)
    return out


def checked_logits(model: LoadedModel, exported: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The exported model's logits at ``x`` (onnxruntime), which must be the loaded model's."""
    expected = run_onnxruntime(model.onnx_model, x).reshape(len(x), -1)
    got = run_onnxruntime(exported, x).reshape(len(x), -1)
    diff = float(np.max(np.abs(got - expected))) if len(x) else 0.0
    if not diff <= _CHECK_TOLERANCE:
        raise ModelLoadError(f"the exported model disagrees with {model.path or 'the model'} by {diff:.3g}")
    return got


def correctly_classified(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per point, whether the label's logit beats every other class strictly (a tie is in the unsafe set)."""
    rows = np.arange(len(labels))
    others = logits.copy()
    others[rows, labels] = -np.inf
    return logits[rows, labels] > others.max(axis=1)


def _eps_text(eps: float) -> str:
    return repr(float(eps))


def export_robustness_suite(
    model: LoadedModel,
    x: np.ndarray,
    labels: np.ndarray | None,
    indices: Sequence[int] | np.ndarray,
    eps_list: Sequence[float],
    out_dir: str | Path,
    domain: tuple[float, float] = (0.0, 1.0),
    timeout: float = 60.0,
) -> RobustnessSuite:
    """Write the suite for points ``x [N, *input_shape]`` (dataset indices ``indices``) at every eps.

    Everything is checked before the first file is written; ``instances.csv`` is written last and atomically,
    so a crash leaves either the previous list or the new one.
    """
    if len(x) != len(indices):
        raise ValueError(f"{len(x)} points but {len(indices)} indices")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError("timeout must be finite and > 0")
    grid = list(dict.fromkeys(float(e) for e in eps_list))
    if not grid or not all(math.isfinite(e) and e >= 0 for e in grid):
        raise ValueError(f"every eps must be a finite number >= 0, got {list(eps_list)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ResultsFileError(f"cannot write the suite to {out}: it is not a directory")
    n_classes = model.num_classes
    y = check_labels(labels, indices, n_classes)
    x = np.asarray(x, dtype=np.float32)
    exported = model_of_batch_one(model.onnx_model)
    correct = correctly_classified(checked_logits(model, exported, x), y) if len(x) else np.zeros(0, bool)
    name = model.path.name if model.path else "model"

    instances: list[RobustnessInstance] = []
    try:
        write_bytes_atomic(out / MODEL, exported.SerializeToString())
        for index, x0, label, ok in zip(indices, x, y, correct, strict=True):
            for eps in grid:
                stem = f"robust_{int(index):05d}_eps_{_eps_text(eps)}.vnnlib"
                comment = (
                    f"faithverify export-robustness: model {name}, point {int(index)}, label {int(label)}, "
                    f"eps {_eps_text(eps)}, domain {list(domain)}.\n"
                    f"unsat certifies that {MODEL} keeps class {int(label)} on the box; sat is an input where "
                    "another class's logit reaches it."
                    + ("" if ok else "\nThe model already misclassifies the point itself: sat at every eps.")
                )
                write_vnnlib(
                    out / "vnnlib" / stem,
                    robustness_property(ball(x0, eps, domain), int(label), n_classes),
                    comment=comment,
                )
                instances.append(
                    RobustnessInstance(
                        int(index), eps, int(label), bool(ok), MODEL, f"vnnlib/{stem}", timeout
                    )
                )
        rows = "".join(f"{i.onnx},{i.vnnlib},{i.timeout:g}\n" for i in instances)
        write_text_atomic(out / INSTANCES, rows)
    except OSError as exc:
        raise ResultsFileError(f"cannot write the suite to {out}: {exc.strerror or exc}") from exc
    wrong = [int(i) for i, ok in zip(indices, correct, strict=True) if not ok]
    return RobustnessSuite(instances, len(x), len(grid), wrong)
