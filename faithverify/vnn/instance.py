"""From a VNN-COMP instance (an ONNX file and a VNN-LIB 1.0 property) to an engine query, and the answer back
to the competition's result format.

Two kinds of ONNX files are taken:

- a classifier (any network the ONNX loader supports): ``Y`` are its outputs, logits, or probabilities when the
  file ends in Softmax (the query then bounds the softmax through eq. 5);
- a paired graph whose only output is ``softmax(z_t) - softmax(z_s)`` (``faithverify export-vnn`` writes them;
  recognised by its ``z_t`` and ``z_s`` tensors): it is bounded as the two networks it contains, each ``Y_i``
  becoming ``p_t,i - p_s,i``, and every counterexample is checked on the paired graph itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import utils as onnx_utils

from faithverify.errors import ModelLoadError
from faithverify.onnx_io import load_model, load_model_proto, run_onnxruntime
from faithverify.pair import STUDENT_LOGITS, TEACHER_LOGITS
from faithverify.vnn.engine import Answer, Outcome, Problem, ProblemError, ProblemNetwork
from faithverify.vnn.vnnlib import Property


def _produced(model: onnx.ModelProto) -> set[str]:
    return {name for node in model.graph.node for name in node.output}


def is_paired_gap_graph(model: onnx.ModelProto) -> bool:
    """A paired graph reduced to the softmax-difference head (one output, ``z_t`` and ``z_s`` inside)."""
    produced = _produced(model)
    return len(model.graph.output) == 1 and {TEACHER_LOGITS, STUDENT_LOGITS} <= produced


def _extract(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """The sub-graph from the input to ``output`` (the teacher's or the student's logits)."""
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    # The Extractor needs a type for the cut point; shape inference records one for every intermediate tensor.
    inferred = onnx.shape_inference.infer_shapes(model)
    return onnx_utils.Extractor(inferred).extract_model(inputs, [output])


def _read(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError on a truncated or foreign file
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from exc


def query_from_instance(onnx_path: str | Path, prop: Property) -> Problem:
    """The engine query for ``onnx_path`` under ``prop`` (raises a FaithverifyError on bad input)."""
    onnx_path = Path(onnx_path)
    full = _read(onnx_path)
    boxes = [(box.lower.copy(), box.upper.copy()) for box in prop.input_boxes]
    reference_unsafe = [(c.a, c.b) for c in prop.unsafe]
    if is_paired_gap_graph(full):
        teacher = load_model_proto(_extract(full, TEACHER_LOGITS))
        student = load_model_proto(_extract(full, STUDENT_LOGITS))
        networks = [ProblemNetwork("teacher", teacher, True), ProblemNetwork("student", student, True)]
        unsafe = [(np.concatenate([a, -a], axis=1), b) for a, b in reference_unsafe]
        n_outputs = teacher.num_classes
    else:
        model = load_model(onnx_path)  # validates every operator (an unsupported one is named with its node)
        networks = [ProblemNetwork(onnx_path.stem, model, model.softmax_stripped)]
        unsafe = reference_unsafe
        n_outputs = model.num_classes
    if prop.n_outputs != n_outputs:
        raise ProblemError(f"the property reads {prop.n_outputs} outputs; {onnx_path.name} has {n_outputs}")
    input_shape = networks[0].model.input_shape
    if prop.n_inputs != int(np.prod(input_shape)):
        raise ProblemError(
            f"the property constrains {prop.n_inputs} inputs; {onnx_path.name} takes {int(np.prod(input_shape))}"
        )

    def reference(x: np.ndarray) -> np.ndarray:
        out = run_onnxruntime(str(onnx_path), x.reshape(len(x), *input_shape).astype(np.float32))
        return out.reshape(len(x), -1)

    return Problem(networks, boxes, unsafe, reference, reference_unsafe)


def format_result(answer: Answer) -> str:
    """The VNN-COMP result file: ``sat`` with ``((X_0 v) ... (Y_k v))``, or ``unsat`` / ``timeout`` /
    ``unknown``."""
    if answer.outcome is not Outcome.SAT or answer.x is None or answer.y is None:
        return f"{answer.outcome.value}\n"
    lines = [f"(X_{i} {float(v)!r})" for i, v in enumerate(np.asarray(answer.x, dtype=np.float64).ravel())]
    lines += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(np.asarray(answer.y, dtype=np.float64).ravel())]
    return "sat\n(" + "\n ".join(lines) + ")\n"


def parse_result(text: str) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """The outcome and, for ``sat``, the ``X`` and ``Y`` assignments of a result file (for checks)."""
    lines = text.strip().splitlines()
    if not lines:
        raise ValueError("an empty result file")
    outcome = lines[0].strip()
    if outcome != "sat":
        return outcome, None, None
    xs: dict[int, float] = {}
    ys: dict[int, float] = {}
    for token in " ".join(lines[1:]).replace("(", " ( ").replace(")", " ) ").split("("):
        parts = token.replace(")", " ").split()
        if len(parts) == 2 and parts[0][:2] in ("X_", "Y_"):
            target = xs if parts[0].startswith("X_") else ys
            target[int(parts[0][2:])] = float(parts[1])
    x = np.array([xs[i] for i in range(len(xs))])
    y = np.array([ys[j] for j in range(len(ys))])
    return outcome, x, y
