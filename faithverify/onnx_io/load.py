"""Is this ONNX file (or model) a classifier we support, and what is it as a torch module?

Loading reads the file, checks the opset and the input/output, strips a final Softmax, translates the chain of
nodes and (optionally) compares the torch module with onnxruntime; every failure becomes one public error.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch

from faithverify.errors import FaithverifyError, ModelLoadError
from faithverify.onnx_io.errors import _Invalid, _one_line, _public_error, _Unsupported
from faithverify.onnx_io.graph import _chain_nodes, _io_info, _opset, _strip_trailing_softmax
from faithverify.onnx_io.layers import ConvertedModel
from faithverify.onnx_io.runtime import _ort_session, _run_session, _run_unbatched
from faithverify.onnx_io.translate import _Translator

if TYPE_CHECKING:
    from faithverify.network import PiecewiseLinearNetwork

log = logging.getLogger(__name__)

# Before opset 7, elementwise ops broadcast by an `axis` attribute and BatchNormalization differs.
_MIN_OPSET = 7


@dataclass(frozen=True)
class LoadedModel:
    """A classifier ready for verification.

    ``onnx_model`` is the logits model (a final Softmax replaced by Identity); ``module`` computes the same
    logits in torch, ``[N, *input_shape] -> [N, num_classes]``.
    """

    path: Path | None
    onnx_model: onnx.ModelProto
    module: ConvertedModel
    input_name: str
    input_shape: tuple[int, ...]
    num_classes: int
    softmax_stripped: bool
    max_abs_diff: (
        float  # max |torch - onnxruntime| on the check inputs (logits); NaN if the check was skipped
    )
    # False for a VNN-LIB network without a batch axis: ``input_shape`` is its whole input, and onnxruntime
    # runs it one sample at a time (``run_onnxruntime(..., batched=False)``).
    batched: bool = True

    @functools.cached_property
    def network(self) -> PiecewiseLinearNetwork:
        """The one network form every bound reads (affine maps, ReLUs and max-pools on flat inputs)."""
        from faithverify.network import PiecewiseLinearNetwork  # it reads onnx_io's layers: import late

        return PiecewiseLinearNetwork.from_module(self.module.flat_body(), math.prod(self.input_shape))


def _read_model(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty, not an ONNX model")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError for truncated or foreign files, OSError, ...
        raise ModelLoadError(f"{path}: not a readable ONNX model ({_one_line(exc)})") from exc


def load_model(
    path: str | Path,
    domain: tuple[float, float] = (0.0, 1.0),
    check: bool = True,
    n_check: int = 32,
    tolerance: float = 1e-4,
    seed: int = 0,
    any_shape: bool = False,
) -> LoadedModel:
    """Load an ONNX classifier, convert it to torch and (with ``check``) compare it with onnxruntime.

    The check draws ``n_check`` seeded inputs uniformly in ``domain`` plus the two corners of the domain box
    and requires ``max |torch(float64) - onnxruntime| <= tolerance`` on the logits.

    ``any_shape`` loads a VNN-LIB network rather than a classifier: an input of any shape (a leading 1 or
    symbolic axis is a batch axis where the graph allows it; otherwise the whole tensor is one sample) and an
    output of any shape, flattened row-major into ``num_classes`` values.
    """
    path = Path(path)
    return _load(_read_model(path), path, domain, check, n_check, tolerance, seed, any_shape)


def load_model_proto(
    model: onnx.ModelProto,
    domain: tuple[float, float] = (0.0, 1.0),
    check: bool = True,
    n_check: int = 32,
    tolerance: float = 1e-4,
    seed: int = 0,
    any_shape: bool = False,
) -> LoadedModel:
    """:func:`load_model` for a model already in memory (``path`` is None)."""
    return _load(model, None, domain, check, n_check, tolerance, seed, any_shape)


def _load(
    model: onnx.ModelProto,
    path: Path | None,
    domain: tuple[float, float],
    check: bool,
    n_check: int,
    tolerance: float,
    seed: int,
    any_shape: bool = False,
) -> LoadedModel:
    where = str(path) if path is not None else "in-memory ONNX model"
    if not domain[0] <= domain[1]:
        raise ValueError(f"domain {domain} is not an interval (low <= high)")
    try:
        return _load_unwrapped(model, path, domain, check, n_check, tolerance, seed, any_shape)
    except FaithverifyError:
        raise
    except (_Invalid, _Unsupported) as exc:
        raise _public_error(exc, where) from None
    except Exception as exc:
        raise _public_error(exc, where) from exc


def _load_unwrapped(
    model: onnx.ModelProto,
    path: Path | None,
    domain: tuple[float, float],
    check: bool,
    n_check: int,
    tolerance: float,
    seed: int,
    any_shape: bool = False,
) -> LoadedModel:
    if not model.HasField("graph") or not model.graph.output:
        raise _Invalid("not an ONNX model (no graph with an output)")
    opset = _opset(model)
    if opset < _MIN_OPSET:
        raise _Invalid(f"opset {opset} is too old; opset {_MIN_OPSET} or newer is needed")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # a model that fails the checker may still run; the onnxruntime check decides
        log.info("onnx.checker: %s", _one_line(exc))
    info = _io_info(model, any_shape)
    try:
        logits_model, stripped = _strip_trailing_softmax(model, info.batched)
        nodes = _chain_nodes(logits_model.graph, info.input_name, info.output_name)
        module = _Translator(logits_model, info).run(nodes)
    except _Unsupported as first:
        if not info.batched:
            raise
        # The leading axis of size 1 is no batch axis to this graph (a Transpose moves it, say): read the
        # whole tensor as one sample instead, if that translates.
        try:
            info_whole = _io_info(model, any_shape, batched=False)
        except _Invalid:  # a symbolic leading axis: no fixed whole tensor to read
            raise first from None
        if info_whole.batched:
            raise
        try:
            logits_model, stripped = _strip_trailing_softmax(model, batched=False)
            nodes = _chain_nodes(logits_model.graph, info_whole.input_name, info_whole.output_name)
            module = _Translator(logits_model, info_whole).run(nodes)
        except (_Unsupported, _Invalid):
            raise first from None
        info = info_whole
    if info.num_classes is not None and info.num_classes != module.num_classes:
        raise _Invalid(
            f"output declares {info.num_classes} classes but the graph computes {module.num_classes}"
        )
    diff = (
        _check_against_onnxruntime(logits_model, module, domain, n_check, seed, info.batched, info.any_output)
        if check
        else math.nan
    )
    if check and not diff <= tolerance:
        raise _Invalid(
            f"the converted model disagrees with onnxruntime: max |difference| {diff:.3g} "
            f"> tolerance {tolerance:g}"
        )
    return LoadedModel(
        path=path,
        onnx_model=logits_model,
        module=module,
        input_name=info.input_name,
        input_shape=info.input_shape,
        num_classes=module.num_classes,
        softmax_stripped=stripped,
        max_abs_diff=diff,
        batched=info.batched,
    )


def _check_against_onnxruntime(
    logits_model: onnx.ModelProto,
    module: ConvertedModel,
    domain: tuple[float, float],
    n_check: int,
    seed: int,
    batched: bool = True,
    flatten: bool = False,
) -> float:
    low, high = domain
    shape = module.input_shape
    rng = np.random.default_rng(seed)
    x = np.concatenate(
        [
            rng.uniform(low, high, size=(n_check, *shape)),
            np.full((1, *shape), low),
            np.full((1, *shape), high),
        ]
    )
    x = x.astype(np.float32).astype(np.float64)  # both sides see exactly the same (float32) inputs
    session = _ort_session(logits_model)
    expected = _run_session(session, x) if batched else _run_unbatched(session, x)
    if flatten:  # an output of any shape, compared flattened row-major as the module computes it
        expected = expected.reshape(len(expected), -1)
    with torch.no_grad():
        got = copy.deepcopy(module).double()(torch.from_numpy(x)).numpy()
    if expected.shape != got.shape:
        raise _Invalid(
            f"onnxruntime output shape {list(expected.shape)} differs from the converted {list(got.shape)}"
        )
    # Equal values (infinities included) count as no difference; a NaN anywhere makes the check fail.
    diff = np.where(got == expected, 0.0, np.abs(got - expected))
    return float(np.max(diff)) if not np.isnan(diff).any() else math.nan
