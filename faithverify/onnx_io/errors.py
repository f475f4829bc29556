"""How do internal failures become the public errors?

Internal errors are raised as ``_Unsupported`` / ``_Invalid`` (without the file name) and turned into
:class:`UnsupportedOperatorError` / :class:`ModelLoadError` naming the file at the public boundary.
"""

from __future__ import annotations

from faithverify.errors import FaithverifyError, ModelLoadError, UnsupportedOperatorError


class _Unsupported(Exception):
    """An operator or attribute outside the supported set; becomes UnsupportedOperatorError."""

    def __init__(self, op_type: str, node_name: str, detail: str) -> None:
        super().__init__(detail)
        self.op_type, self.node_name, self.detail = op_type, node_name, detail


class _Invalid(Exception):
    """The model is not a classifier we can load; becomes ModelLoadError with the file name in front."""


def _one_line(exc: BaseException, limit: int = 200) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _public_error(exc: Exception, where: str) -> FaithverifyError:
    if isinstance(exc, _Unsupported):
        return UnsupportedOperatorError(exc.op_type, exc.node_name, f"{exc.detail} (in {where})")
    if isinstance(exc, FaithverifyError):
        return exc
    if isinstance(exc, _Invalid):
        return ModelLoadError(f"{where}: {exc}")
    # onnx / protobuf / torch failures on malformed models: one line, never a raw traceback.
    return ModelLoadError(f"{where}: cannot load the model ({type(exc).__name__}: {_one_line(exc)})")
