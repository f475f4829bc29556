"""Errors that the CLI reports as one line with exit code 2 (bad input), never as a traceback."""


class FaithverifyError(Exception):
    """Base class of every error caused by the user's input or environment."""


class ModelLoadError(FaithverifyError):
    """An ONNX file is missing, empty, corrupt, or not a classifier we can handle."""


class UnsupportedOperatorError(ModelLoadError):
    """The ONNX graph uses an operator (or attribute value) that the converter does not handle."""

    def __init__(self, op_type: str, node_name: str, detail: str = "") -> None:
        self.op_type = op_type
        self.node_name = node_name
        extra = f": {detail}" if detail else ""
        super().__init__(f"unsupported ONNX operator {op_type!r} at node {node_name!r}{extra}")


class ModelMismatchError(FaithverifyError):
    """Teacher and student cannot be paired (input shapes or class counts differ)."""


class DataError(FaithverifyError):
    """A dataset is missing, malformed, or does not fit the model."""


class ResultsFileError(FaithverifyError):
    """The results file cannot be written, or --resume meets a file written with other settings."""


class BoundingError(FaithverifyError):
    """The bound propagation library cannot handle this (supported, converted) model."""


class SolverError(FaithverifyError):
    """A MILP solver is missing, unlicensed for the model, or failed on it."""


class DeviceError(FaithverifyError):
    """The device asked for (``--device cuda``) is not there."""


class SoundnessViolation(RuntimeError):
    """An attack found a larger gap than a 'sound' upper bound: a bug, never a result (exit code 3)."""
