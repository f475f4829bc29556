"""VNN-LIB / VNN-COMP formats: properties and queries in, benchmark suites out.

- :mod:`~faithverify.vnn.vnnlib`: VNN-LIB 1.0 properties (one network; ``X_i`` / ``Y_j``), read and written.
- :mod:`~faithverify.vnn.vnnlib2`: VNN-LIB 2.0 queries over several declared networks, read (through the
  ``vnnlib`` package's parser) and written.
- :mod:`~faithverify.vnn.export`: a teacher/student pair as a suite of ONNX models, 1.0 and 2.0 files and a
  VNN-COMP ``instances.csv``.
- :mod:`~faithverify.vnn.engine`: deciding a :class:`~faithverify.vnn.engine.Problem` (networks reading one
  input, input boxes, a linear unsafe set) by attack, CROWN and MILP: sat / unsat / unknown / timeout.
- :mod:`~faithverify.vnn.instance`: a VNN-COMP instance (ONNX + 1.0 property) as a Problem, and the result file.
- :mod:`~faithverify.vnn.bench`: running a suite from its ``instances.csv``.
- :mod:`~faithverify.vnn.solver_cli`: ``faithverify-vnnlib``, the VNN-LIB 2.0 solver interface.

Both readers give the same picture: the input region as a union of boxes over the flattened input, and the
UNSAFE set as a disjunction of conjunctions ``a @ y <= b`` over the flattened outputs (for 2.0, the outputs
of all networks concatenated). ``sat`` means an input of the region reaches the unsafe set.
"""

from __future__ import annotations

from faithverify.vnn.vnnlib import (
    Box,
    Conjunct,
    Property,
    VnnlibError,
    format_vnnlib,
    parse_vnnlib,
    read_vnnlib,
    write_vnnlib,
)
from faithverify.vnn.vnnlib2 import Network, Query, format_query, parse_query, read_query, write_query

__all__ = [
    "Box",
    "Conjunct",
    "Network",
    "Property",
    "Query",
    "VnnlibError",
    "format_query",
    "format_vnnlib",
    "parse_query",
    "parse_vnnlib",
    "read_query",
    "read_vnnlib",
    "write_query",
    "write_vnnlib",
]
