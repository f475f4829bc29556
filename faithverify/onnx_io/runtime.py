"""What does onnxruntime compute for a model?"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from faithverify.onnx_io.errors import _Invalid, _one_line, _public_error

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def _ort_session(model: onnx.ModelProto | bytes | str | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings about unused initializers and the like
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    source = str(source) if isinstance(source, Path) else source
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise _Invalid(f"onnxruntime cannot load the model: {_one_line(exc)}") from exc


def _run_session(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise _Invalid(f"onnxruntime sees {len(inputs)} inputs; a classifier must have exactly one")
    spec = inputs[0]
    x = np.asarray(x, dtype=_ORT_DTYPES.get(spec.type, np.float32))
    if x.ndim != len(spec.shape) or x.shape[0] == 0:
        raise ValueError(
            f"x has shape {list(x.shape)}; the model takes a non-empty batch of shape {spec.shape}"
        )
    batch = spec.shape[0]
    # A fixed batch dimension (exporters write 1) can only take that many samples at a time.
    step = batch if isinstance(batch, int) and batch > 0 else len(x)
    if len(x) % step:
        raise ValueError(f"the model's batch size is fixed to {step}; got {len(x)} samples")
    try:
        parts = [session.run(None, {spec.name: x[i : i + step]})[0] for i in range(0, len(x), step)]
    except Exception as exc:
        raise _Invalid(f"onnxruntime failed to run the model: {_one_line(exc)}") from exc
    return np.concatenate(parts).astype(np.float64)


def _run_unbatched(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """A model without a batch axis, one sample ``x[i]`` (the model's whole input) at a time: ``[N, out]``."""
    spec = session.get_inputs()[0]
    x = np.asarray(x, dtype=_ORT_DTYPES.get(spec.type, np.float32))
    try:
        parts = [np.asarray(session.run(None, {spec.name: sample})[0]).reshape(-1) for sample in x]
    except Exception as exc:
        raise _Invalid(f"onnxruntime failed to run the model: {_one_line(exc)}") from exc
    return np.stack(parts).astype(np.float64)


def run_onnxruntime(
    model: onnx.ModelProto | bytes | str | Path, x: np.ndarray, batched: bool = True
) -> np.ndarray:
    """The model's first output for ``x [N, *input_shape]`` (cast to the input dtype) as float64 ``[N, ...]``.

    Models with a batch dimension fixed to 1 are run one sample at a time. A model without a batch axis
    (``batched=False``: ``input_shape`` is its whole input) is run on each ``x[i]``, outputs flattened.
    """
    where = str(model) if isinstance(model, (str, Path)) else "in-memory ONNX model"
    try:
        session = _ort_session(model)
        return _run_session(session, x) if batched else _run_unbatched(session, x)
    except _Invalid as exc:
        raise _public_error(exc, where) from None
