"""A release gate for a student against its teacher: thresholds in a TOML file, one verdict for CI.

``faithverify gate T.onnx S.onnx --config release-gate.toml`` measures what the config's checks ask for and
compares each measurement with its threshold: every check holds -> pass (exit 0), one fails -> fail (exit 1).
:mod:`faithverify.cli_gate` is the command around this package, whose modules each answer one question:

- :mod:`~faithverify.gate.config`: what may a config file say, and is this one valid? (every key is documented
  there, and below)
- :mod:`~faithverify.gate.kinds`: what does each kind of check measure, and which side of its threshold passes?
- :mod:`~faithverify.gate.reader`: how is a TOML table read so that each error names the file, line and key?
- :mod:`~faithverify.gate.plan`: which certify runs does a config need?
- :mod:`~faithverify.gate.measure`: what does a check measure, and does the measurement hold?
- :mod:`~faithverify.gate.run`: how does a gate run, from the model files to a :class:`GateResult`?
- :mod:`~faithverify.gate.results`: what did the gate find?
- :mod:`~faithverify.gate.outputs`: how are the results reported (Markdown, JSON, JUnit XML) and written?
"""

from __future__ import annotations

from faithverify.gate import config as _config
from faithverify.gate.config import (
    BOUND_METHODS,
    BUDGET_CHECK,
    DEVICES,
    MODELS,
    SOLVERS,
    SPLITS,
    AttackSettings,
    CheckConfig,
    DataConfig,
    GateConfig,
    GateConfigError,
    load_config,
    parse_config,
)
from faithverify.gate.kinds import KINDS, CheckKind
from faithverify.gate.outputs import FORMAT_VERSION, format_markdown, to_json, to_junit_xml, write_report
from faithverify.gate.plan import RunPlan, RunSpec, plan_runs
from faithverify.gate.results import FAIL, NOT_EVALUATED, PASS, CheckResult, GateResult, RunResult
from faithverify.gate.run import load_points, run_gate

# The config reference lives beside the schema; `help(faithverify.gate)` (which examples/release-gate.toml
# points to) shows it too.
__doc__ = "\n".join(d for d in (__doc__, _config.__doc__) if d)

__all__ = [
    "BOUND_METHODS",
    "BUDGET_CHECK",
    "DEVICES",
    "FAIL",
    "FORMAT_VERSION",
    "KINDS",
    "MODELS",
    "NOT_EVALUATED",
    "PASS",
    "SOLVERS",
    "SPLITS",
    "AttackSettings",
    "CheckConfig",
    "CheckKind",
    "CheckResult",
    "DataConfig",
    "GateConfig",
    "GateConfigError",
    "GateResult",
    "RunPlan",
    "RunResult",
    "RunSpec",
    "format_markdown",
    "load_config",
    "load_points",
    "parse_config",
    "plan_runs",
    "run_gate",
    "to_json",
    "to_junit_xml",
    "write_report",
]
