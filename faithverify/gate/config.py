"""The gate's TOML config: every key, its dataclasses, and validation whose errors name file, line and key.

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

- ``steps`` (default 100) and ``restarts`` (default 2) of the EmpLB attack, ``seed`` (default 0),
  ``robustness_steps`` (default 50) of the agreement and robust-accuracy attacks.

``[[check]]``, one table per threshold (at least one). Every check has ``kind``, ``threshold`` and an optional
``name`` (default: the kind and its parameters); the other keys depend on the kind:

- ``max_mean_faith_ub``: mean FaithUB over the points at ``eps`` <= threshold. ``bounds`` (``"crown"``
  default; ``"ibp"``, ``"alpha-crown"``, ``"coupled"``, or a list: the smallest bound counts), ``milp = true``
  for an exact MILP on every point (the paper's FaithUB; slow), with ``solver`` (``"auto"``, ``"highs"``,
  ``"gurobi"``) and ``milp_timeout_s`` (default 60, per point).
- ``min_certified_share``: share of points certified (FaithUB < ``delta``) at ``eps`` >= threshold.
- ``max_violated_share``: share of points with a witness whose gap exceeds ``delta`` at ``eps`` <= threshold.
  Both take ``eps``, ``delta``, ``bounds`` and ``refine`` (default false; true refines the points that bound
  propagation leaves undecided with branch and bound and the MILP, with ``solver`` and ``milp_timeout_s``).
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
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from faithverify.attack_config import PGDConfig
from faithverify.data import KNOWN_DATASETS
from faithverify.gate.kinds import KINDS, CheckKind
from faithverify.gate.reader import GateConfigError, KeyLines, Table, located, show
from faithverify.methods import BoundMethod, Device, Solver

BOUND_METHODS = tuple(m.value for m in BoundMethod)  # the screening methods
SOLVERS = tuple(s.value for s in Solver)
MODELS = ("teacher", "student")
DEVICES = tuple(d.value for d in Device)
BUDGET_CHECK = "time budget"  # the name of the check that time_budget_s adds
SPLITS = ("test", "train")


@dataclass(frozen=True)
class DataConfig:
    source: str | None = None  # None: sample.npz beside the teacher
    split: str = "test"
    data_root: Path | None = None
    n: int | None = None  # None: all points from start on
    start: int = 0
    domain: tuple[float, float] = (0.0, 1.0)


_PGD = PGDConfig()  # the one place the attack's defaults are set


@dataclass(frozen=True)
class AttackSettings:
    steps: int = _PGD.steps
    restarts: int = _PGD.restarts
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
    lines = KeyLines(text)
    top = Table(doc, "the top level", origin, lines)
    top.reject_unknown(_TOP_KEYS)
    for key in ("data", "attack"):
        if key in doc and not isinstance(doc[key], dict):
            raise top.error(key, f"{key} must be a table ([{key}]), got {show(doc[key])}")
    data = _parse_data(Table(doc.get("data", {}), "[data]", origin, lines, "data"), base)
    attack = _parse_attack(Table(doc.get("attack", {}), "[attack]", origin, lines, "attack"))
    raw_checks = doc.get("check", [])
    if not isinstance(raw_checks, list) or not all(isinstance(c, dict) for c in raw_checks):
        raise top.error("check", "check must be an array of tables: write each one as [[check]], not [check]")
    if not raw_checks:
        raise GateConfigError(
            f"{origin}: no checks: add at least one [[check]] table with a kind and a threshold"
        )
    checks = [
        _parse_check(Table(raw, _check_label(k, raw), origin, lines, "check", k))
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


def _parse_data(t: Table, base: Path) -> DataConfig:
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
        raise t.error("domain", f"domain must be [low, high] with low < high, got {show(domain)}")
    return DataConfig(
        source=source,
        split=t.string("split", "test", SPLITS) or "test",
        data_root=None if root is None else base / Path(root).expanduser(),
        n=t.integer("n", None, 1),
        start=t.integer("start", 0, 0) or 0,
        domain=(float(domain[0]), float(domain[1])),
    )


def _parse_attack(t: Table) -> AttackSettings:
    t.reject_unknown(_ATTACK_KEYS)
    return AttackSettings(
        steps=t.integer("steps", _PGD.steps, 0) or 0,
        restarts=t.integer("restarts", _PGD.restarts, 1) or _PGD.restarts,
        seed=t.integer("seed", 0, 0) or 0,
        robustness_steps=t.integer("robustness_steps", 50, 1) or 50,
    )


def _parse_check(t: Table) -> CheckConfig:
    kind_name = t.values.get("kind")
    if kind_name is None:
        raise t.error(None, f"needs a kind (one of {', '.join(KINDS)})")
    if not isinstance(kind_name, str) or kind_name not in KINDS:
        close = difflib.get_close_matches(str(kind_name), list(KINDS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise t.error("kind", f"has an unknown kind {show(kind_name)}{hint} (kinds: {', '.join(KINDS)})")
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
            f"got {show(bounds_value)}",
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
            words.append(f"{key}={','.join(value) if isinstance(value, list) else format_value(value)}")
        elif key == "milp":
            words.append("milp" if value == "all" else "refine")
    return " ".join(words)


def _unique_names(checks: list[CheckConfig], origin: str, lines: KeyLines) -> list[CheckConfig]:
    seen: dict[str, int] = {}
    out = []
    for k, check in enumerate(checks):
        if check.name == BUDGET_CHECK:
            raise located(
                origin,
                lines.line("check", k, "name"),
                f"the check name {BUDGET_CHECK!r} is reserved for time_budget_s; choose another",
            )
        if check.name in seen:
            raise located(
                origin,
                lines.line("check", k, "name") or lines.line("check", k, None),
                f"[[check]] #{k + 1} has the same name as [[check]] #{seen[check.name] + 1} ({check.name!r}); "
                "give one of them another name",
            )
        seen[check.name] = k
        out.append(check)
    return out


def format_value(x: float | int | str | None) -> str:
    """A parameter value in a check's name or message: strings as they are, numbers short."""
    return x if isinstance(x, str) else "-" if x is None else f"{x:g}"
