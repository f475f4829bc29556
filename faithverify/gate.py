"""A release gate for a student against its teacher: thresholds in a TOML file, one verdict for CI.

``faithverify gate T.onnx S.onnx --config release-gate.toml`` measures what the config's checks ask for and
compares each measurement with its threshold: every check holds -> pass (exit 0), one fails -> fail (exit 1).
This module parses and validates the config, plans the certify runs, evaluates the checks and renders the
results (Markdown, JSON, JUnit XML); :mod:`faithverify.cli_gate` is the command around it.

Config reference (``examples/release-gate.toml`` is a worked example). Unknown keys are errors, never ignored,
and every error names the file, the line and the key.

Top level (all optional):

- ``name``: the gate's name, used as the JUnit test suite name (default: the config file's stem).
- ``time_budget_s``: seconds the whole gate may take (models, data, every run). Checked between stages: once
  it is spent, the remaining runs are skipped, their checks are reported as not evaluated, and the gate fails.
- ``device``: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``. Default ``"auto"``.
- ``batch_size``: points attacked and bounded together (default 250).
- ``jobs``: processes for the MILP stage (default 1).

``[data]`` (all optional), the points every check is measured on:

- ``source``: a dataset name (``mnist``, ``fashion-mnist``, ``cifar10``, looked up under ``data_root``), a
  directory in the IDX or ``cifar-10-batches-py`` layout, or an ``.npz`` file with arrays ``x`` and ``y``.
  Paths are relative to the config file. Default: ``sample.npz`` beside the teacher file.
- ``split``: ``"test"`` (default) or ``"train"``, for dataset names and directories.
- ``data_root``: where dataset names are looked up (relative to the config file); default
  ``$FAITHVERIFY_DATA_ROOT``.
- ``n``: how many points, from ``start`` on (default: all); ``start``: index of the first (default 0).
- ``domain``: the valid input range ``[low, high]`` (default ``[0.0, 1.0]``); balls are clipped to it.

``[attack]`` (all optional), the PGD attacks behind EmpLB, agreement and robust accuracy:

- ``steps`` (default 50) and ``restarts`` (default 3) of the EmpLB attack, ``seed`` (default 0),
  ``robustness_steps`` (default 50) of the agreement and robust-accuracy attacks.

``[[check]]``, one table per threshold (at least one). Every check has ``kind``, ``threshold`` and an optional
``name`` (default: the kind and its parameters); the other keys depend on the kind:

- ``max_mean_faith_ub``: mean FaithUB over the points at ``eps`` <= threshold. ``bounds`` (``"crown"``
  default; ``"ibp"``, ``"alpha-crown"``, or a list: the smallest bound counts), ``milp = true`` for an exact
  MILP on every point (the paper's FaithUB; slow), with ``solver`` (``"auto"``, ``"highs"``, ``"gurobi"``)
  and ``milp_timeout_s`` (default 60, per point).
- ``min_certified_share``: share of points certified (FaithUB <= ``delta``) at ``eps`` >= threshold.
- ``max_violated_share``: share of points with a witness whose gap exceeds ``delta`` at ``eps`` <= threshold.
  Both take ``eps``, ``delta``, ``bounds`` and ``refine`` (default false; true refines the points that bound
  propagation leaves undecided with the exact MILP, with ``solver`` and ``milp_timeout_s``).
- ``min_agreement``: distillation agreement (Def. 3) at ``eps`` >= threshold.
- ``min_robust_accuracy``: PGD robust accuracy of ``model`` (``"teacher"`` or ``"student"``) at ``eps``.
- ``max_mean_emp_lb``: mean EmpLB (the largest gap PGD finds) at ``eps`` <= threshold.
- ``min_clean_accuracy``: accuracy of ``model`` on the points (needs labels) >= threshold.

Shares and accuracies are fractions in [0, 1]. ``eps`` is an L-inf radius >= 0, ``delta`` a confidence gap in
[0, 1]. Checks that need the same computation share it: one certify run per distinct eps and bound settings
(and per delta where the MILP refines verdicts, since the MILP works toward a delta); verdicts of screening runs
are decided per check from the run's EmpLB and FaithUB, so several deltas at one eps cost one run.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import time
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from faithverify.data import KNOWN_DATASETS, Points
from faithverify.errors import DataError, FaithverifyError

if TYPE_CHECKING:
    from faithverify.pair import Pair
    from faithverify.results import PointResult

FORMAT_VERSION = 1
BOUND_METHODS = ("ibp", "crown", "alpha-crown")
SOLVERS = ("auto", "highs", "gurobi")
MODELS = ("teacher", "student")
DEVICES = ("auto", "cpu", "cuda")
BUDGET_CHECK = "time budget"  # the name of the check that time_budget_s adds
SPLITS = ("test", "train")


class GateConfigError(FaithverifyError):
    """The gate's config file is missing, not TOML, or has an unknown key or a bad value."""


# --- check kinds ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckKind:
    """What a kind of check measures, which side of the threshold passes, and which keys it takes."""

    name: str
    upper: bool  # True: measured <= threshold passes; False: measured >= threshold passes
    what: str  # the measured quantity, for messages
    keys: tuple[str, ...]  # keys beyond kind / name / threshold
    required: tuple[str, ...]
    share: bool  # a fraction of points (shown with counts)


_BOUND_KEYS = ("bounds", "solver", "milp_timeout_s")
KINDS: dict[str, CheckKind] = {
    k.name: k
    for k in (
        CheckKind("max_mean_faith_ub", True, "mean FaithUB", ("eps", *_BOUND_KEYS, "milp"), ("eps",), False),
        CheckKind(
            "min_certified_share", False, "certified share", ("eps", "delta", *_BOUND_KEYS, "refine"),
            ("eps", "delta"), True,
        ),
        CheckKind(
            "max_violated_share", True, "violated share", ("eps", "delta", *_BOUND_KEYS, "refine"),
            ("eps", "delta"), True,
        ),
        CheckKind("min_agreement", False, "distillation agreement", ("eps",), ("eps",), True),
        CheckKind("min_robust_accuracy", False, "robust accuracy", ("eps", "model"), ("eps", "model"), True),
        CheckKind("max_mean_emp_lb", True, "mean EmpLB", ("eps",), ("eps",), False),
        CheckKind("min_clean_accuracy", False, "clean accuracy", ("model",), ("model",), True),
    )
}  # fmt: skip
# Kinds measured by the attacks alone: they can join any run at their eps.
_ATTACK_ONLY = frozenset({"min_agreement", "min_robust_accuracy", "max_mean_emp_lb"})
_NEEDS_ROBUSTNESS = frozenset({"min_agreement", "min_robust_accuracy"})


# --- config ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    source: str | None = None  # None: sample.npz beside the teacher
    split: str = "test"
    data_root: Path | None = None
    n: int | None = None  # None: all points from start on
    start: int = 0
    domain: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class AttackSettings:
    steps: int = 50
    restarts: int = 3
    seed: int = 0
    robustness_steps: int = 50


@dataclass(frozen=True)
class CheckConfig:
    name: str
    kind: str
    threshold: float
    eps: float | None = None
    delta: float | None = None
    model: str | None = None
    bounds: tuple[str, ...] = ("crown",)
    milp: bool = False  # max_mean_faith_ub: exact MILP on every point
    refine: bool = False  # verdict checks: MILP on the points screening leaves undecided
    solver: str = "auto"
    milp_timeout_s: float = 60.0

    @property
    def spec(self) -> CheckKind:
        return KINDS[self.kind]

    def parameters(self) -> dict[str, Any]:
        """The settings that define what is measured (for reports)."""
        out: dict[str, Any] = {}
        for key in ("eps", "delta", "model"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if "bounds" in self.spec.keys:
            out["bounds"] = list(self.bounds)
            if self.milp or self.refine:
                out.update(milp="all" if self.milp else "refine", solver=self.solver)
                out["milp_timeout_s"] = self.milp_timeout_s
        return out


@dataclass(frozen=True)
class GateConfig:
    name: str
    checks: tuple[CheckConfig, ...]
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackSettings = field(default_factory=AttackSettings)
    time_budget_s: float | None = None
    device: str = "auto"
    batch_size: int = 250
    jobs: int = 1
    path: Path | None = None


class _KeyLines:
    """Line numbers of keys and table headers in TOML text, for error messages (tomllib gives none).

    A light scan, not a parser: it tracks ``[table]`` and ``[[array]]`` headers and ``key =`` lines. A key it
    cannot place (inside an inline table, say) just gets no line number.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_\-]+))\s*=""")

    def __init__(self, text: str) -> None:
        self.keys: dict[tuple[str, int | None, str], int] = {}
        self.headers: dict[tuple[str, int | None], int] = {}
        counts: dict[str, int] = {}
        section: tuple[str, int | None] = ("", None)
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                name = header.group(2).replace('"', "").replace("'", "").replace(" ", "")
                if header.group(1) == "[[":
                    counts[name] = counts.get(name, 0) + 1
                    section = (name, counts[name] - 1)
                else:
                    section = (name, None)
                self.headers.setdefault(section, number)
                continue
            key = self._KEY.match(line)
            if key:
                name = next(g for g in key.groups() if g is not None)
                self.keys.setdefault((*section, name), number)

    def line(self, section: str, index: int | None, key: str | None) -> int | None:
        if key is not None and (section, index, key) in self.keys:
            return self.keys[(section, index, key)]
        return self.headers.get((section, index))


class _Table:
    """One TOML table being read: typed getters that name the file, line, table and key in every error."""

    def __init__(
        self,
        values: Mapping[str, Any],
        label: str,
        origin: str,
        lines: _KeyLines,
        section: str = "",
        index: int | None = None,
    ) -> None:
        self.values, self.label, self.origin = values, label, origin
        self.lines, self.section, self.index = lines, section, index

    def error(self, key: str | None, message: str, labelled: bool = True) -> GateConfigError:
        line = self.lines.line(self.section, self.index, key)
        where = f"{self.origin}, line {line}" if line else self.origin
        prefix = f"{self.label}: " if labelled and self.section else ""
        return GateConfigError(f"{where}: {prefix}{message}")

    def reject_unknown(self, allowed: Iterable[str], context: str = "") -> None:
        """A key outside ``allowed`` is an error naming it, its table and the nearest allowed key."""
        allowed = list(allowed)
        for key in self.values:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(
                    key,
                    f"unknown key {key!r} in {self.label}{context}{hint} (allowed: {', '.join(sorted(allowed))})",
                    labelled=False,
                )

    def _get(self, key: str) -> Any:
        return self.values.get(key)

    def number(
        self, key: str, default: float | None, *, low: float | None = None, high: float | None = None,
        low_open: bool = False, what: str = "a number",
    ) -> float | None:  # fmt: skip
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.error(key, f"{key} must be {what}, got {_show(value)}")
        if (low is not None and (value < low or (low_open and value == low))) or (
            high is not None and value > high
        ):
            raise self.error(key, f"{key} must be {what}, got {value!r}")
        return float(value)

    def required_number(self, key: str, **kwargs: Any) -> float:
        value = self.number(key, None, **kwargs)
        if value is None:
            raise self.error(None, f"needs {key} ({kwargs.get('what', 'a number')})")
        return value

    def integer(self, key: str, default: int | None, minimum: int) -> int | None:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"{key} must be an integer >= {minimum}, got {_show(value)}")
        return value

    def string(self, key: str, default: str | None, choices: Sequence[str] | None = None) -> str | None:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"{key} must be a string, got {_show(value)}")
        if choices is not None and value not in choices:
            raise self.error(key, f"{key} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"{key} must be true or false, got {_show(value)}")
        return value


def _show(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}.get(
        type(value), "a table" if isinstance(value, dict) else type(value).__name__
    )
    text = json.dumps(value) if isinstance(value, str | int | float | bool) else kind
    return text if text == kind else f"{text} ({kind})"


_TOP_KEYS = ("name", "time_budget_s", "device", "batch_size", "jobs", "data", "attack", "check")
_DATA_KEYS = ("source", "split", "data_root", "n", "start", "domain")
_ATTACK_KEYS = ("steps", "restarts", "seed", "robustness_steps")
_COMMON_CHECK_KEYS = ("kind", "name", "threshold")


def load_config(path: str | Path) -> GateConfig:
    """Read and validate a gate config file (see the module docstring for its keys)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GateConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GateConfigError(f"cannot read config file {path}: {exc}") from None
    config = parse_config(text, origin=str(path), base_dir=path.parent, default_name=path.stem)
    return replace(config, path=path)


def parse_config(
    text: str, origin: str = "<config>", base_dir: Path | None = None, default_name: str = "release-gate"
) -> GateConfig:
    """Validate gate config text; relative paths in it are taken relative to ``base_dir``."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GateConfigError(f"{origin}: not valid TOML: {exc}") from None
    base = base_dir if base_dir is not None else Path()
    lines = _KeyLines(text)
    top = _Table(doc, "the top level", origin, lines)
    top.reject_unknown(_TOP_KEYS)
    for key in ("data", "attack"):
        if key in doc and not isinstance(doc[key], dict):
            raise top.error(key, f"{key} must be a table ([{key}]), got {_show(doc[key])}")
    data = _parse_data(_Table(doc.get("data", {}), "[data]", origin, lines, "data"), base)
    attack = _parse_attack(_Table(doc.get("attack", {}), "[attack]", origin, lines, "attack"))
    raw_checks = doc.get("check", [])
    if not isinstance(raw_checks, list) or not all(isinstance(c, dict) for c in raw_checks):
        raise top.error("check", "check must be an array of tables: write each one as [[check]], not [check]")
    if not raw_checks:
        raise GateConfigError(
            f"{origin}: no checks: add at least one [[check]] table with a kind and a threshold"
        )
    checks = [
        _parse_check(_Table(raw, _check_label(k, raw), origin, lines, "check", k))
        for k, raw in enumerate(raw_checks)
    ]
    return GateConfig(
        name=top.string("name", None) or default_name,
        checks=tuple(_unique_names(checks, origin, lines)),
        data=data,
        attack=attack,
        time_budget_s=top.number("time_budget_s", None, low=0, low_open=True, what="a number of seconds > 0"),
        device=top.string("device", "auto", DEVICES) or "auto",
        batch_size=top.integer("batch_size", 250, 1) or 250,
        jobs=top.integer("jobs", 1, 1) or 1,
    )


def _check_label(k: int, raw: Mapping[str, Any]) -> str:
    name = raw.get("name")
    return f"[[check]] #{k + 1}" + (f" ({name!r})" if isinstance(name, str) and name else "")


def _parse_data(t: _Table, base: Path) -> DataConfig:
    t.reject_unknown(_DATA_KEYS)
    source = t.string("source", None)
    if source is not None and source not in KNOWN_DATASETS:
        # A dataset name stays a name; anything else is a path, relative to the config file.
        source = str(base / Path(source).expanduser())
    root = t.string("data_root", None)
    domain = t.values.get("domain", [0.0, 1.0])
    if (
        not isinstance(domain, list)
        or len(domain) != 2
        or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in domain
        )
        or not domain[0] < domain[1]
    ):
        raise t.error("domain", f"domain must be [low, high] with low < high, got {_show(domain)}")
    return DataConfig(
        source=source,
        split=t.string("split", "test", SPLITS) or "test",
        data_root=None if root is None else base / Path(root).expanduser(),
        n=t.integer("n", None, 1),
        start=t.integer("start", 0, 0) or 0,
        domain=(float(domain[0]), float(domain[1])),
    )


def _parse_attack(t: _Table) -> AttackSettings:
    t.reject_unknown(_ATTACK_KEYS)
    return AttackSettings(
        steps=t.integer("steps", 50, 0) or 0,
        restarts=t.integer("restarts", 3, 1) or 3,
        seed=t.integer("seed", 0, 0) or 0,
        robustness_steps=t.integer("robustness_steps", 50, 1) or 50,
    )


def _parse_check(t: _Table) -> CheckConfig:
    kind_name = t.values.get("kind")
    if kind_name is None:
        raise t.error(None, f"needs a kind (one of {', '.join(KINDS)})")
    if not isinstance(kind_name, str) or kind_name not in KINDS:
        close = difflib.get_close_matches(str(kind_name), list(KINDS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise t.error("kind", f"has an unknown kind {_show(kind_name)}{hint} (kinds: {', '.join(KINDS)})")
    kind = KINDS[kind_name]
    t.reject_unknown((*_COMMON_CHECK_KEYS, *kind.keys), f" (kind {kind.name})")
    for key in kind.required:
        if key not in t.values:
            raise t.error(None, f"a {kind.name} check needs {key}")
    unit = "a fraction in [0, 1]" if kind.share else "a confidence gap in [0, 1]"
    threshold = t.required_number("threshold", low=0, high=1, what=unit)
    eps = t.number("eps", None, low=0, what="a radius >= 0")
    delta = t.number("delta", None, low=0, high=1, what="a confidence gap in [0, 1]")
    bounds_value = t.values.get("bounds", "crown")
    bounds_list = [bounds_value] if isinstance(bounds_value, str) else bounds_value
    if (
        not isinstance(bounds_list, list)
        or not bounds_list
        or not all(isinstance(b, str) and b in BOUND_METHODS for b in bounds_list)
    ):
        raise t.error(
            "bounds",
            f"bounds must be one of {', '.join(map(repr, BOUND_METHODS))} or a list of them, "
            f"got {_show(bounds_value)}",
        )
    milp = t.boolean("milp", False)
    refine = t.boolean("refine", False)
    if not (milp or refine):
        for key in ("solver", "milp_timeout_s"):
            if key in t.values:
                word = "milp = true" if kind.name == "max_mean_faith_ub" else "refine = true"
                raise t.error(key, f"{key} only applies with {word}")
    check = CheckConfig(
        name="",
        kind=kind.name,
        threshold=threshold,
        eps=eps,
        delta=delta,
        model=t.string("model", None, MODELS),
        bounds=tuple(dict.fromkeys(bounds_list)),
        milp=milp,
        refine=refine,
        solver=t.string("solver", "auto", SOLVERS) or "auto",
        milp_timeout_s=t.number("milp_timeout_s", 60.0, low=0.1, what="a number of seconds >= 0.1") or 60.0,
    )
    name = t.string("name", None)
    if name is not None and not name.strip():
        raise t.error("name", "name must not be empty")
    return replace(check, name=name or _default_name(check))


def _default_name(check: CheckConfig) -> str:
    """The kind and what tells two checks of a kind apart (solver settings do not: name such checks)."""
    words = [check.kind]
    for key, value in check.parameters().items():
        if key in ("eps", "delta", "model") or (key == "bounds" and value != ["crown"]):
            words.append(f"{key}={','.join(value) if isinstance(value, list) else _fmt(value)}")
        elif key == "milp":
            words.append("milp" if value == "all" else "refine")
    return " ".join(words)


def _unique_names(checks: list[CheckConfig], origin: str, lines: _KeyLines) -> list[CheckConfig]:
    seen: dict[str, int] = {}
    out = []
    for k, check in enumerate(checks):
        if check.name == BUDGET_CHECK:
            line = lines.line("check", k, "name")
            raise GateConfigError(
                f"{origin}{f', line {line}' if line else ''}: the check name {BUDGET_CHECK!r} is reserved for "
                "time_budget_s; choose another"
            )
        if check.name in seen:
            line = lines.line("check", k, "name") or lines.line("check", k, None)
            raise GateConfigError(
                f"{origin}{f', line {line}' if line else ''}: [[check]] #{k + 1} has the same name as "
                f"[[check]] #{seen[check.name] + 1} ({check.name!r}); give one of them another name"
            )
        seen[check.name] = k
        out.append(check)
    return out


def _fmt(x: float | int | str | None) -> str:
    return x if isinstance(x, str) else "-" if x is None else f"{x:g}"


# --- planning ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """What one certify run computes. ``delta`` is set only when the MILP refines toward it."""

    eps: float
    bounds: tuple[str, ...] = ("crown",)
    milp: str = "none"  # none | refine | all
    delta: float | None = None
    solver: str = "auto"
    milp_timeout_s: float = 60.0

    def describe(self) -> str:
        text = f"eps {self.eps:g}, {'+'.join(self.bounds)}"
        if self.milp == "refine":
            text += f", delta {self.delta:g} with MILP refinement ({self.solver}, {self.milp_timeout_s:g} s/point)"
        elif self.milp == "all":
            text += f", MILP on every point ({self.solver}, {self.milp_timeout_s:g} s/point)"
        return text


@dataclass
class RunPlan:
    spec: RunSpec
    checks: list[str]  # names of the checks measured on this run
    robustness: bool = False  # agreement and robust accuracy (PGD-50) are wanted


def _spec_of(check: CheckConfig) -> RunSpec:
    assert check.eps is not None
    if check.milp:
        return RunSpec(check.eps, check.bounds, "all", None, check.solver, check.milp_timeout_s)
    if check.refine:
        return RunSpec(check.eps, check.bounds, "refine", check.delta, check.solver, check.milp_timeout_s)
    # Screening alone: verdicts for any delta follow from EmpLB and FaithUB, so delta is not part of the run.
    return RunSpec(check.eps, check.bounds)


def plan_runs(config: GateConfig) -> list[RunPlan]:
    """One run per distinct :class:`RunSpec`, in the order the checks first ask for it.

    Checks measured by the attacks alone (agreement, robust accuracy, EmpLB) join a run at their eps, a
    screening-only one where there is one, so that they never cost a run of their own.
    """
    plans: dict[RunSpec, RunPlan] = {}
    for check in config.checks:
        if check.eps is None or check.kind in _ATTACK_ONLY:
            continue
        spec = _spec_of(check)
        plans.setdefault(spec, RunPlan(spec, [])).checks.append(check.name)
    for check in config.checks:
        if check.kind not in _ATTACK_ONLY:
            continue
        assert check.eps is not None
        at_eps = [p for p in plans.values() if p.spec.eps == check.eps]
        host = next((p for p in at_eps if p.spec.milp == "none"), at_eps[0] if at_eps else None)
        if host is None:
            host = plans.setdefault(RunSpec(check.eps), RunPlan(RunSpec(check.eps), []))
        host.checks.append(check.name)
        host.robustness = host.robustness or check.kind in _NEEDS_ROBUSTNESS
    # Run in eps order: a time budget then spends itself on the cheaper, smaller radii first.
    return sorted(plans.values(), key=lambda p: (p.spec.eps, p.spec.milp != "none"))


# --- results ----------------------------------------------------------------------------------------------

PASS, FAIL, NOT_EVALUATED = "pass", "fail", "not evaluated"


@dataclass
class CheckResult:
    name: str
    kind: str
    threshold: float
    comparison: str  # "<=" or ">=": measured <comparison> threshold passes
    parameters: dict[str, Any]
    status: str  # pass | fail | not evaluated
    measured: float | None = None
    detail: str = ""  # counts behind a share, or why the check was not evaluated
    message: str = ""  # one line: the measurement against the threshold
    run: int | None = None  # index into GateResult.runs, None for checks outside the runs
    seconds: float = 0.0  # this check's share of the time of the stage that measured it

    @property
    def passed(self) -> bool:
        return self.status == PASS


@dataclass
class RunResult:
    spec: RunSpec
    checks: list[str]
    robustness: bool
    status: str = "skipped"  # done | skipped
    points: int = 0
    seconds: float = 0.0


@dataclass
class GateResult:
    name: str
    checks: list[CheckResult]
    runs: list[RunResult]
    settings: dict[str, Any]
    timings: dict[str, float]  # seconds per stage, and total
    started_at: str  # ISO 8601, UTC

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> int:
        return sum(c.status == FAIL for c in self.checks)

    @property
    def not_evaluated(self) -> int:
        return sum(c.status == NOT_EVALUATED for c in self.checks)


def load_points(teacher: Path, input_shape: tuple[int, ...], data: DataConfig) -> Points:
    """The configured points, shaped for the model, checked against the domain."""
    from faithverify.data import sample_beside, select_points

    try:
        return select_points(
            sample_beside(teacher, data.source), input_shape, split=data.split, data_root=data.data_root,
            start=data.start, count=data.n, domain=data.domain,
        )  # fmt: skip
    except DataError as exc:
        raise DataError(f"[data]: {exc}") from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_gate(
    teacher: Path, student: Path, config: GateConfig, log: Callable[[str], None] | None = None
) -> GateResult:
    """Measure every check of ``config`` on the pair; ``log`` receives one line per stage."""
    from faithverify.attack import PGDConfig
    from faithverify.bounds.lirpa import BoundMethod
    from faithverify.bounds.milp import Solver
    from faithverify.certify import CertifyConfig, certify
    from faithverify.pair import load_pair

    say = log or (lambda _line: None)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    start = time.perf_counter()
    timings: dict[str, float] = {}
    by_name = {c.name: c for c in config.checks}
    results: dict[str, CheckResult] = {}

    def elapsed() -> float:
        return time.perf_counter() - start

    def over_budget() -> bool:
        return config.time_budget_s is not None and elapsed() > config.time_budget_s

    def skip(names: Iterable[str], why: str) -> None:
        for name in names:
            results[name] = _unevaluated(by_name[name], why)

    pair = load_pair(teacher, student, domain=config.data.domain)
    points = load_points(teacher, pair.input_shape, config.data)
    timings["load_s"] = elapsed()
    say(f"loaded the pair and {len(points.x)} points from {points.source} ({timings['load_s']:.1f} s)")

    clean_checks = [c for c in config.checks if c.kind == "min_clean_accuracy"]
    if clean_checks:
        if over_budget():
            skip((c.name for c in clean_checks), _budget_spent(config))
        else:
            clock = time.perf_counter()
            preds = _clean_predictions(pair, points.x, config.batch_size)
            seconds = time.perf_counter() - clock
            timings["clean_s"] = seconds
            for check in clean_checks:
                assert check.model is not None
                measured = _clean_accuracy(preds[check.model], points.labels)
                results[check.name] = _judge(check, measured, None, seconds / len(clean_checks))

    runs = [RunResult(p.spec, p.checks, p.robustness) for p in plan_runs(config)]
    pgd = PGDConfig(steps=config.attack.steps, restarts=config.attack.restarts, seed=config.attack.seed)
    for k, run in enumerate(runs):
        if over_budget():
            skip(run.checks, _budget_spent(config))
            say(f"run {k + 1}/{len(runs)} skipped ({run.spec.describe()}): time budget spent")
            continue
        say(f"run {k + 1}/{len(runs)}: {run.spec.describe()} on {len(points.x)} points")
        clock = time.perf_counter()
        spec = run.spec
        certify_config = CertifyConfig(
            eps=[spec.eps],
            methods=[BoundMethod(m) for m in spec.bounds],
            pgd=pgd,
            robustness=run.robustness and points.labels is not None,
            robustness_steps=config.attack.robustness_steps,
            batch_size=config.batch_size,
            device=config.device,
            domain=config.data.domain,
            delta=spec.delta,
            refine=spec.milp == "refine",
            milp_all=spec.milp == "all",
            solver=Solver(spec.solver),
            milp_timeout=spec.milp_timeout_s,
            jobs=config.jobs,
        )
        records = certify(
            pair, points.x, points.labels, certify_config, indices=points.indices, progress=False
        )
        run.seconds, run.status, run.points = time.perf_counter() - clock, "done", len(records)
        timings[f"run_{k + 1}_s"] = run.seconds
        say(f"run {k + 1}/{len(runs)} done in {run.seconds:.1f} s")
        for name in run.checks:
            check = by_name[name]
            measured, detail = _measure(check, records, spec)
            results[name] = _judge(check, measured, detail, run.seconds / len(run.checks), run=k)

    timings["total_s"] = elapsed()
    checks = [results[c.name] for c in config.checks]
    if config.time_budget_s is not None:
        checks.append(_judge_budget(config.time_budget_s, timings["total_s"]))
    settings = {
        "config": None if config.path is None else str(config.path),
        "teacher": str(teacher),
        "student": str(student),
        "teacher_sha256": _sha256(teacher),
        "student_sha256": _sha256(student),
        "data": points.source,
        "split": config.data.split,
        "start": config.data.start,
        "points": len(points.x),
        "domain": list(config.data.domain),
        "attack": asdict(config.attack),
        "device": config.device,
        "batch_size": config.batch_size,
        "jobs": config.jobs,
        "time_budget_s": config.time_budget_s,
    }
    return GateResult(config.name, checks, runs, settings, timings, started_at)


def _budget_spent(config: GateConfig) -> str:
    return f"the time budget of {config.time_budget_s:g} s was spent before its run"


def _clean_predictions(pair: Pair, x: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Teacher's and student's predictions at the points, by onnxruntime (the reference evaluator)."""
    parts = [pair.outputs_onnxruntime(x[k : k + batch_size]) for k in range(0, len(x), batch_size)]
    return {
        "teacher": np.concatenate([p["z_t"].argmax(axis=1) for p in parts]),
        "student": np.concatenate([p["z_s"].argmax(axis=1) for p in parts]),
    }


def _clean_accuracy(preds: np.ndarray, labels: np.ndarray | None) -> tuple[float, str] | None:
    if labels is None:
        return None
    hits = int(np.sum(preds == labels))
    return hits / len(labels), f"{hits} of {len(labels)} points classified correctly"


def _share(flags: Sequence[bool], what: str) -> tuple[float, str] | None:
    if not flags:
        return None
    return sum(flags) / len(flags), f"{sum(flags)} of {len(flags)} points {what}"


def _measure(
    check: CheckConfig, records: Sequence[PointResult], spec: RunSpec
) -> tuple[tuple[float, str] | None, str]:
    """The measured value (with its counts) of one check on a run's records; or None and why not."""
    from faithverify.verdict import decide

    kind = check.kind
    if kind == "max_mean_faith_ub":
        values = [p.faith_ub for p in records]
        return (float(np.mean(values)), f"max {max(values):.4f} over {len(values)} points"), ""
    if kind == "max_mean_emp_lb":
        values = [p.emp_lb for p in records]
        return (float(np.mean(values)), f"max {max(values):.4f} over {len(values)} points"), ""
    if kind in ("min_certified_share", "max_violated_share"):
        assert check.delta is not None
        if spec.milp == "refine":
            verdicts = [str(p.verdict) for p in records]
        else:
            verdicts = [decide(p.emp_lb, p.faith_ub, check.delta).value for p in records]
        counts = {v: verdicts.count(v) for v in ("certified", "violated", "unknown")}
        target = "certified" if kind == "min_certified_share" else "violated"
        flags = [v == target for v in verdicts]
        share = _share(flags, target)
        if share is None:
            return None, "no points"
        rest = ", ".join(f"{counts[v]} {v}" for v in counts if v != target)
        return (share[0], f"{share[1]} ({rest})"), ""
    if kind == "min_agreement":
        flags = [bool(p.agreement) for p in records if p.agreement is not None]
        return _share(flags, "in agreement"), "needs labels"
    if kind == "min_robust_accuracy":
        attr = "teacher_robust" if check.model == "teacher" else "student_robust"
        flags = [bool(getattr(p, attr)) for p in records if getattr(p, attr) is not None]
        return _share(flags, "robust"), "needs labels"
    raise AssertionError(f"unhandled kind {kind}")


def _judge(
    check: CheckConfig,
    measurement: tuple[float, str] | None,
    why_missing: str | None,
    seconds: float,
    run: int | None = None,
) -> CheckResult:
    spec = check.spec
    comparison = "<=" if spec.upper else ">="
    base = CheckResult(
        check.name, check.kind, check.threshold, comparison, check.parameters(), NOT_EVALUATED, run=run,
        seconds=seconds,
    )  # fmt: skip
    if measurement is None or math.isnan(measurement[0]):
        base.detail = f"could not be measured: {why_missing or 'the data has no labels'}"
        base.message = f"{spec.what} {base.detail}"
        return base
    value, detail = measurement
    holds = value <= check.threshold if spec.upper else value >= check.threshold
    base.status, base.measured, base.detail = (PASS if holds else FAIL), value, detail
    where = ", ".join(
        f"{k} {_fmt(v)}" for k, v in check.parameters().items() if k in ("eps", "delta", "model")
    )
    relation = comparison if holds else (">" if spec.upper else "<")
    base.message = f"{spec.what} {value:.4f} {relation} {check.threshold:g}" + (
        f" at {where}" if where else ""
    )
    return base


def _unevaluated(check: CheckConfig, why: str) -> CheckResult:
    comparison = "<=" if check.spec.upper else ">="
    return CheckResult(
        check.name, check.kind, check.threshold, comparison, check.parameters(), NOT_EVALUATED,
        detail=why, message=f"not evaluated: {why}",
    )  # fmt: skip


def _judge_budget(budget: float, total: float) -> CheckResult:
    holds = total <= budget
    return CheckResult(
        BUDGET_CHECK, "time_budget_s", budget, "<=", {}, PASS if holds else FAIL, measured=total,
        detail="seconds for the whole gate",
        message=f"the gate took {total:.1f} s, {'within' if holds else 'over'} its budget of {budget:g} s",
        seconds=0.0,
    )  # fmt: skip


# --- reports ----------------------------------------------------------------------------------------------


def _value(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def format_markdown(result: GateResult) -> str:
    """The summary: a verdict line, where the numbers come from, and one table row per check."""
    s = result.settings
    verdict = "PASSED" if result.passed else "FAILED"
    done = [r for r in result.runs if r.status == "done"]
    lines = [
        f"## Release gate `{result.name}`: {verdict}",
        "",
        f"Teacher `{s['teacher']}`, student `{s['student']}`; {s['points']} points from `{s['data']}` "
        f"(from index {s['start']}); {len(done)} of {len(result.runs)} certify runs done; "
        f"{result.timings['total_s']:.1f} s.",
        "",
        "| check | measured | threshold | result | details |",
        "|---|---|---|---|---|",
    ]
    for c in result.checks:
        shown = {PASS: "pass", FAIL: "**FAIL**", NOT_EVALUATED: "not evaluated"}[c.status]
        measured = f"{c.measured:.1f} s" if c.kind == "time_budget_s" and c.measured is not None else None
        threshold = f"{c.threshold:g} s" if c.kind == "time_budget_s" else f"{c.threshold:g}"
        lines.append(
            f"| {_cell(c.name)} | {measured or _value(c.measured)} | {c.comparison} {threshold} | {shown} "
            f"| {_cell(c.detail)} |"
        )
    failed = [c for c in result.checks if not c.passed]
    if failed:
        lines += ["", f"{len(failed)} of {len(result.checks)} checks did not pass:"]
        lines += [f"- {_cell(c.name)}: {c.message}" for c in failed]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def to_json(result: GateResult) -> dict[str, Any]:
    """The machine-readable report: every check with its measurement, threshold and outcome."""
    return {
        "format": FORMAT_VERSION,
        "name": result.name,
        "passed": result.passed,
        "started_at": result.started_at,
        "counts": {
            "checks": len(result.checks),
            "passed": sum(c.passed for c in result.checks),
            "failed": result.failures,
            "not_evaluated": result.not_evaluated,
        },
        "checks": [
            {
                "name": c.name,
                "kind": c.kind,
                "measured": _finite(c.measured),
                "comparison": c.comparison,
                "threshold": c.threshold,
                "passed": c.passed,
                "status": c.status,
                "parameters": c.parameters,
                "detail": c.detail,
                "message": c.message,
                "run": c.run,
            }
            for c in result.checks
        ],
        "runs": [
            {
                "spec": asdict(r.spec),
                "checks": r.checks,
                "robustness": r.robustness,
                "status": r.status,
                "points": r.points,
                "seconds": r.seconds,
            }
            for r in result.runs
        ],
        "settings": result.settings,
        "timings": result.timings,
    }


def to_junit_xml(result: GateResult) -> str:
    """JUnit XML in the form CI servers read (one test suite, one test case per check).

    A failed threshold is a ``<failure>``; a check that could not be evaluated (time budget spent, no labels)
    is ``<skipped>``, the gate's failure then shows in the failed time-budget case or in the exit code.
    """
    total = f"{result.timings.get('total_s', 0.0):.3f}"
    counts = {
        "tests": str(len(result.checks)),
        "failures": str(result.failures),
        "errors": "0",
        "skipped": str(result.not_evaluated),
        "time": total,
    }
    root = ET.Element("testsuites", {"name": "faithverify gate", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": result.name, **counts, "timestamp": result.started_at})
    properties = ET.SubElement(suite, "properties")
    for key, value in result.settings.items():
        if value is not None:
            text = json.dumps(value) if isinstance(value, dict | list) else str(value)
            ET.SubElement(properties, "property", {"name": key, "value": text})
    classname = f"faithverify.gate.{re.sub(r'[^A-Za-z0-9_.-]+', '_', result.name)}"
    for c in result.checks:
        case = ET.SubElement(
            suite, "testcase", {"classname": classname, "name": c.name, "time": f"{c.seconds:.3f}"}
        )
        if c.status == FAIL:
            failure = ET.SubElement(case, "failure", {"message": c.message, "type": "ThresholdNotMet"})
            failure.text = (
                f"{c.kind}: measured {_value(c.measured)}, required {c.comparison} {c.threshold:g}\n"
                f"{c.detail}\nparameters: {json.dumps(c.parameters)}"
            )
        elif c.status == NOT_EVALUATED:
            ET.SubElement(case, "skipped", {"message": c.message})
        else:
            out = ET.SubElement(case, "system-out")
            out.text = f"{c.message} ({c.detail})" if c.detail else c.message
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
