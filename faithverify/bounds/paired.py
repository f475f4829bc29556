"""Teacher and student as one network of the shared input: ``x -> [z_t(x); z_s(x)]``.

A linear form of both networks' logits (what the coupled bound leaves after relaxing the softmax, see
:mod:`.coupled`) is then a linear form of one network's output, and everything that bounds those (CROWN,
alpha-CROWN, branch and bound over ReLU splits, :mod:`.bab`) bounds it with the two networks coupled through
``x``: a split of a teacher neuron tightens the student's part of the bound too, since both are bounded over
the same inputs.

**Layer by layer.** The first affine maps are stacked (both read ``x``); later affine maps are block-diagonal;
ReLU layers are joined; max-pool layers are joined with the student's windows offset. This needs the two op
sequences to have the same kind of layer at every position up to the shorter one's end (two MLPs, or CNNs of the
same pattern, as the paper's pairs are); :func:`paired_form` raises :class:`UnpairableError` otherwise.

**The shorter network is carried to the end exactly**: after its logits, each further affine map is the
identity, each max-pool one with windows of one element, and each ReLU reads ``z - shift`` with ``shift`` a
lower bound of its logits over the box minus a margin, so the ReLU is active on every input of the box (its
pre-activation bounds are ``>= 0``: no relaxation, no split) and the last affine map adds ``shift`` back. The
paired network is therefore specific to the box the shift was computed over.
"""

from __future__ import annotations

import numpy as np

from faithverify.network import AffineOp, MaxPoolOp, Op, PiecewiseLinearNetwork, ReluOp, SparseMatrix

# The shift sits this far below the interval lower bound of the carried logits (relative, plus absolute), so
# float64 rounding can never take a carried value below the ReLU's kink.
_SHIFT_SLACK = 1e-6


class UnpairableError(ValueError):
    """The two networks' layer sequences do not line up (a ReLU against a max-pool, say)."""


def _block_diagonal(a: SparseMatrix, b: SparseMatrix) -> SparseMatrix:
    rows = np.concatenate([a.rows, b.rows + a.shape[0]])
    cols = np.concatenate([a.cols, b.cols + a.shape[1]])
    vals = np.concatenate([a.vals, b.vals])
    return SparseMatrix.from_coo(rows, cols, vals, (a.shape[0] + b.shape[0], a.shape[1] + b.shape[1]))


def _stacked(a: SparseMatrix, b: SparseMatrix) -> SparseMatrix:
    rows = np.concatenate([a.rows, b.rows + a.shape[0]])
    cols = np.concatenate([a.cols, b.cols])
    vals = np.concatenate([a.vals, b.vals])
    return SparseMatrix.from_coo(rows, cols, vals, (a.shape[0] + b.shape[0], a.shape[1]))


_KINDS = {AffineOp: "an affine map", ReluOp: "a ReLU", MaxPoolOp: "a max-pool"}


def _join(k: int, a: Op, b: Op) -> Op:
    """Position ``k`` of the paired network from the teacher's op there (``a``) and the student's (``b``)."""
    if isinstance(a, AffineOp) and isinstance(b, AffineOp):
        matrix = _stacked(a.matrix, b.matrix) if k == 0 else _block_diagonal(a.matrix, b.matrix)
        return AffineOp(matrix, np.concatenate([a.bias, b.bias]))
    if isinstance(a, ReluOp) and isinstance(b, ReluOp):
        return ReluOp(a.size + b.size)
    if isinstance(a, MaxPoolOp) and isinstance(b, MaxPoolOp):
        width = max(a.windows.shape[1], b.windows.shape[1])
        wa = np.pad(a.windows, ((0, 0), (0, width - a.windows.shape[1])), constant_values=-1)
        wb = np.pad(b.windows, ((0, 0), (0, width - b.windows.shape[1])), constant_values=-1)
        wb = np.where(wb >= 0, wb + a.in_size, -1)
        return MaxPoolOp(np.concatenate([wa, wb]), a.in_size + b.in_size)
    raise UnpairableError(
        f"layer {k}: the teacher has {_KINDS[type(a)]}, the student {_KINDS[type(b)]}; the paired bound needs "
        "the same kind of layer at each position"
    )


def _carried(op: Op, size: int, shift: np.ndarray, last: bool) -> Op:
    """The shorter network's part of a position past its end: the identity on its (shifted) logits."""
    if isinstance(op, AffineOp):
        return AffineOp(SparseMatrix.identity(size), shift.copy() if last else np.zeros(size))
    if isinstance(op, ReluOp):
        return ReluOp(size)
    return MaxPoolOp(np.arange(size, dtype=np.int64)[:, None], size)


def logit_shift(logit_lower: np.ndarray) -> np.ndarray:
    """A shift strictly below ``logit_lower`` (a sound lower bound of the logits over the box)."""
    lower = np.asarray(logit_lower, dtype=np.float64)
    return lower - _SHIFT_SLACK * (1.0 + np.abs(lower))


def paired_form(
    teacher: PiecewiseLinearNetwork, student: PiecewiseLinearNetwork, shift: np.ndarray
) -> PiecewiseLinearNetwork:
    """``x -> [z_t(x); z_s(x)]`` (module docstring). ``shift``: :func:`logit_shift` of the shorter network's
    logit lower bounds over the box (unused when both have the same number of layers)."""
    if teacher.input_dim != student.input_dim:
        raise UnpairableError(f"inputs of {teacher.input_dim} and {student.input_dim} values")
    nets = (teacher.ops, student.ops)
    short = 0 if len(nets[0]) < len(nets[1]) else 1
    long_ops, short_ops = nets[1 - short], nets[short]
    if not isinstance(short_ops[-1], AffineOp):
        raise UnpairableError("the shorter network does not end with an affine layer")
    size = student.output_dim if short == 1 else teacher.output_dim
    shift = np.asarray(shift, dtype=np.float64).reshape(-1)
    if not isinstance(teacher.ops[0], AffineOp) or not isinstance(student.ops[0], AffineOp):
        raise UnpairableError(
            "a network that opens with a nonlinear layer (the paired form stacks first layers)"
        )
    ops: list[Op] = []
    for k, op in enumerate(long_ops):
        if k < len(short_ops):
            mine = short_ops[k]
            if k == len(short_ops) - 1 and len(long_ops) > len(short_ops):
                if len(shift) != size:
                    raise UnpairableError(f"shift of {len(shift)} values for {size} logits")
                mine = AffineOp(mine.matrix, mine.bias - shift)  # type: ignore[union-attr]
        else:
            mine = _carried(op, size, shift, last=k == len(long_ops) - 1)
        pair = (op, mine) if short == 1 else (mine, op)
        ops.append(_join(k, *pair))
    return PiecewiseLinearNetwork(teacher.input_dim, tuple(ops))
