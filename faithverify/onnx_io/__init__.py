"""Load ONNX classifiers, translate them into chains of torch modules, and cross-check with onnxruntime.

The translator handles feed-forward classifiers: every node takes the output of the previous one plus
constants. The result is built from standard torch modules (Linear, Conv2d, ReLU, pooling, reshapes and a few
tiny constant-operand modules) so that auto_LiRPA can trace and bound it.

Each part answers one question:

- :mod:`~faithverify.onnx_io.load`: is this ONNX file a classifier we support, and what is it as a checked
  torch module (:class:`LoadedModel`)?
- :mod:`~faithverify.onnx_io.graph`: what does the ONNX graph say: opset, attributes, the one input and
  output, shapes, the trailing Softmax, the chain of nodes, values computed from constants?
- :mod:`~faithverify.onnx_io.translate`: which torch layers compute what the chain of ONNX nodes computes?
- :mod:`~faithverify.onnx_io.layers`: what are those torch layers, and what is the converted model on a
  flat input (:meth:`ConvertedModel.flat_body`)?
- :mod:`~faithverify.onnx_io.runtime`: what does onnxruntime compute for a model?
- :mod:`~faithverify.onnx_io.errors`: how do internal failures become the public errors?

Conventions used throughout: a "per-sample shape" excludes the batch axis, which is always axis 0 of the
single input. Internal errors are raised as ``_Unsupported`` / ``_Invalid`` (without the file name) and turned
into :class:`UnsupportedOperatorError` / :class:`ModelLoadError` naming the file at the public boundary.
"""

from __future__ import annotations

from faithverify.onnx_io.graph import input_and_output, strip_trailing_softmax
from faithverify.onnx_io.layers import (
    ConstAdd,
    ConstDiv,
    ConstMul,
    ConstRSub,
    ConstSub,
    ConvertedModel,
    Reshape,
    Transpose,
)
from faithverify.onnx_io.load import LoadedModel, load_model, load_model_proto
from faithverify.onnx_io.runtime import run_onnxruntime
from faithverify.onnx_io.translate import NOT_A_CHAIN

__all__ = [
    "NOT_A_CHAIN",
    "ConstAdd",
    "ConstDiv",
    "ConstMul",
    "ConstRSub",
    "ConstSub",
    "ConvertedModel",
    "LoadedModel",
    "Reshape",
    "Transpose",
    "input_and_output",
    "load_model",
    "load_model_proto",
    "run_onnxruntime",
    "strip_trailing_softmax",
]
