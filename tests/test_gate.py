"""`faithverify gate`: thresholds set either side of values measured independently through the library give exit
codes 0 and 1 with matching JSON and JUnit reports; a spent time budget fails; bad configs exit 2 in one line."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from faithverify.attack import PGDConfig
from faithverify.bounds.bounder import BoundMethod
from faithverify.certify import CertifyConfig, certify
from faithverify.cli import main
from faithverify.data import fit_to_input_shape
from faithverify.gate import GateConfig, load_config, parse_config, plan_runs
from faithverify.methods import RefineMode
from faithverify.pair import load_pair
from tests.conftest import REPO, SHIPPED

N, EPS, DELTA, DELTA_WIDE = 20, 0.05, 0.2, 0.5
STEPS, RESTARTS, ROBUST_STEPS = 10, 1, 10
HEADER = f"""\
name = "test gate"
device = "cpu"

[data]
n = {N}

[attack]
steps = {STEPS}
restarts = {RESTARTS}
robustness_steps = {ROBUST_STEPS}
"""


def toml_check(**fields: Any) -> str:
    def value(v: Any) -> str:
        # JSON spells strings, booleans and lists as TOML does; repr keeps every digit of a float.
        return repr(v) if isinstance(v, float) else json.dumps(v)

    return "\n[[check]]\n" + "".join(f"{k} = {value(v)}\n" for k, v in fields.items())


def write_config(tmp_path: Path, *checks: str, header: str = HEADER) -> Path:
    path = tmp_path / "gate.toml"
    path.write_text(header + "".join(checks), encoding="utf-8")
    return path


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["gate", *(str(a) for a in args)])


@pytest.fixture(scope="module")
def measured(shipped_pair_paths: tuple[Path, Path]) -> dict[str, float]:
    """The quantities the checks compare, computed straight from certify's records (not by the gate)."""
    pair = load_pair(*shipped_pair_paths)
    sample = np.load(SHIPPED / "sample.npz")
    x = fit_to_input_shape(sample["x"][:N].astype(np.float32), pair.input_shape)
    y = sample["y"][:N].astype(np.int64)
    config = CertifyConfig(
        eps=[EPS],
        methods=[BoundMethod.CROWN],
        pgd=PGDConfig(steps=STEPS, restarts=RESTARTS, seed=0),
        robustness=True,
        robustness_steps=ROBUST_STEPS,
        device="cpu",
    )
    records = certify(pair, x, y, config, progress=False)
    ub = np.array([r.faith_ub for r in records])
    lb = np.array([r.emp_lb for r in records])
    values = {
        "faith_ub": float(ub.mean()),
        "emp_lb": float(lb.mean()),
        "certified": float(np.mean(ub <= DELTA)),
        "violated": float(np.mean((ub > DELTA) & (lb > DELTA))),
        "certified_wide": float(np.mean(ub <= DELTA_WIDE)),
        "agreement": float(np.mean([r.agreement for r in records])),
        "student_clean": float(np.mean([r.student_pred == r.label for r in records])),
        "teacher_clean": float(np.mean([r.teacher_pred == r.label for r in records])),
    }
    # Thresholds one point either side must stay in [0, 1], and a bound that is all 0 or 1 would test nothing.
    for key in ("certified", "violated", "agreement", "student_clean"):
        assert 0 < values[key] < 1, (key, values)
    assert 0 < values["faith_ub"] < 1
    return values


def read_junit(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    return suites[0]


def test_gate_passes_on_thresholds_at_or_beyond_the_measured_values(
    shipped_pair_paths: tuple[Path, Path], measured: dict[str, float], tmp_path: Path
) -> None:
    one = 1 / N
    config = write_config(
        tmp_path,
        toml_check(name="faith", kind="max_mean_faith_ub", eps=EPS, threshold=measured["faith_ub"] + 1e-6),
        # A share equal to its threshold passes: the comparison includes the boundary.
        toml_check(kind="min_certified_share", eps=EPS, delta=DELTA, threshold=measured["certified"]),
        toml_check(kind="max_violated_share", eps=EPS, delta=DELTA, threshold=measured["violated"]),
        toml_check(kind="min_agreement", eps=EPS, threshold=measured["agreement"] - one),
        toml_check(kind="max_mean_emp_lb", eps=EPS, threshold=measured["emp_lb"] + 1e-6),
        toml_check(kind="min_clean_accuracy", model="student", threshold=measured["student_clean"]),
    )
    out = tmp_path / "reports"
    result = invoke(
        *shipped_pair_paths, "--config", config, "--junit", out / "r.xml", "--json", out / "g.json",
        "--markdown", out / "s.md", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.stdout and "| check | measured | threshold |" in result.stdout
    assert (out / "s.md").read_text() == result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["g.json", "r.xml", "s.md"]  # no temporary files left

    report = json.loads((out / "g.json").read_text())
    assert report["passed"] is True
    assert len(report["runs"]) == 1  # every check is at one eps: one certify run
    assert report["settings"]["points"] == N and report["settings"]["attack"]["steps"] == STEPS
    got = {c["kind"]: c for c in report["checks"]}
    expected = {
        "max_mean_faith_ub": measured["faith_ub"],
        "min_certified_share": measured["certified"],
        "max_violated_share": measured["violated"],
        "min_agreement": measured["agreement"],
        "max_mean_emp_lb": measured["emp_lb"],
        "min_clean_accuracy": measured["student_clean"],
    }
    for kind, value in expected.items():
        assert got[kind]["measured"] == pytest.approx(value, abs=1e-9), kind
        assert got[kind]["passed"] is True and got[kind]["status"] == "pass"
    assert got["max_mean_faith_ub"]["name"] == "faith"
    assert got["min_certified_share"]["parameters"] == {"eps": EPS, "delta": DELTA, "bounds": ["crown"]}

    suite = read_junit(out / "r.xml")
    assert suite.get("name") == "test gate"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("6", "0", "0")
    assert float(suite.get("time", "nan")) > 0
    cases = suite.findall("testcase")
    assert len(cases) == 6 and not suite.findall("testcase/failure")
    assert all(float(c.get("time", "nan")) >= 0 for c in cases)


def test_gate_fails_when_a_threshold_is_just_past_the_measured_value(
    shipped_pair_paths: tuple[Path, Path], measured: dict[str, float], tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        toml_check(name="faith", kind="max_mean_faith_ub", eps=EPS, threshold=measured["faith_ub"] - 1e-6),
        toml_check(
            name="cert",
            kind="min_certified_share",
            eps=EPS,
            delta=DELTA,
            threshold=measured["certified"] + 1 / N,
        ),
        # Another delta at the same eps: screening verdicts for any delta come from the same run.
        toml_check(
            name="wide",
            kind="min_certified_share",
            eps=EPS,
            delta=DELTA_WIDE,
            threshold=measured["certified_wide"],
        ),
        toml_check(
            name="teacher", kind="min_clean_accuracy", model="teacher", threshold=measured["teacher_clean"]
        ),
    )
    result = invoke(
        *shipped_pair_paths, "--config", config, "--junit", tmp_path / "r.xml", "--json", tmp_path / "g.json"
    )
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.stdout and "**FAIL**" in result.stdout
    assert "run 1/1" in result.stderr  # progress goes to stderr, the summary to stdout

    report = json.loads((tmp_path / "g.json").read_text())
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status == {"faith": "fail", "cert": "fail", "wide": "pass", "teacher": "pass"}
    assert report["passed"] is False and report["counts"]["failed"] == 2
    assert len(report["runs"]) == 1
    faith = next(c for c in report["checks"] if c["name"] == "faith")
    assert faith["measured"] == pytest.approx(measured["faith_ub"], abs=1e-9)
    assert faith["threshold"] == pytest.approx(measured["faith_ub"] - 1e-6)

    suite = read_junit(tmp_path / "r.xml")
    assert (suite.get("tests"), suite.get("failures")) == ("4", "2")
    failed = {c.get("name"): c.find("failure") for c in suite.findall("testcase")}
    assert failed["wide"] is None and failed["teacher"] is None
    message = failed["cert"].get("message", "") if failed["cert"] is not None else ""
    assert f"{measured['certified']:.4f} <" in message


def test_spent_time_budget_fails_and_names_the_checks_not_evaluated(
    shipped_pair_paths: tuple[Path, Path], tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        toml_check(name="faith", kind="max_mean_faith_ub", eps=EPS, threshold=1.0),
        toml_check(name="clean", kind="min_clean_accuracy", model="student", threshold=0.0),
        header=HEADER.replace('device = "cpu"', 'device = "cpu"\ntime_budget_s = 1e-9'),
    )
    result = invoke(
        *shipped_pair_paths, "--config", config, "--junit", tmp_path / "r.xml", "--json", tmp_path / "g.json"
    )
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "g.json").read_text())
    status = {c["name"]: c["status"] for c in report["checks"]}
    # Thresholds that always hold: only the budget can fail this gate.
    assert status == {"faith": "not evaluated", "clean": "not evaluated", "time budget": "fail"}
    assert [r["status"] for r in report["runs"]] == ["skipped"]
    assert "time budget" in report["checks"][0]["message"]
    suite = read_junit(tmp_path / "r.xml")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "2")


def test_runs_are_shared_per_eps_and_bound_setting() -> None:
    text = "".join(
        [
            toml_check(kind="max_mean_faith_ub", eps=0.05, threshold=0.5),
            toml_check(kind="min_certified_share", eps=0.05, delta=0.1, threshold=0.5),
            toml_check(kind="max_violated_share", eps=0.05, delta=0.3, threshold=0.5),
            toml_check(kind="min_agreement", eps=0.05, threshold=0.5),
            toml_check(
                kind="min_certified_share", eps=0.05, delta=0.1, threshold=0.5, refine=True, name="ref"
            ),
            toml_check(kind="max_mean_faith_ub", eps=0.05, threshold=0.5, bounds=["ibp", "crown"]),
            toml_check(kind="max_mean_emp_lb", eps=0.1, threshold=0.5),
            toml_check(kind="min_clean_accuracy", model="teacher", threshold=0.5),
        ]
    )
    config: GateConfig = parse_config(text)
    plans = plan_runs(config)
    none, undecided = RefineMode.NONE, RefineMode.UNDECIDED
    assert [(p.spec.eps, p.spec.bounds, p.spec.refine, p.spec.delta) for p in plans] == [
        (0.05, ("crown",), none, None),
        (0.05, ("ibp", "crown"), none, None),
        (0.05, ("crown",), undecided, 0.1),
        (0.1, ("crown",), none, None),
    ]
    assert len(plans[0].checks) == 4 and plans[0].robustness  # agreement joined the screening run
    assert plans[2].checks == ["ref"] and not plans[2].robustness


def test_shipped_examples_are_valid() -> None:
    """The example config parses (every key in it is known) and the example workflow runs the gate."""
    import yaml

    config = load_config(REPO / "examples" / "release-gate.toml")
    assert config.name == "mnist-student-fd" and len(config.checks) >= 6
    assert {c.kind for c in config.checks} >= {"max_mean_faith_ub", "min_certified_share", "min_agreement"}
    workflow = yaml.safe_load((REPO / "examples" / "github-workflow-release-gate.yml").read_text())
    commands = " ".join(str(step.get("run", "")) for step in workflow["jobs"]["gate"]["steps"])
    assert "faithverify gate" in commands and "--junit" in commands


VALID = toml_check(kind="max_mean_faith_ub", eps=EPS, threshold=0.5)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            '[[check]]\nkind = "max_mean_faith_ub"\neps = 0.05\ntreshold = 0.5\n',
            ["line 4", "unknown key 'treshold'", "[[check]] #1", "did you mean 'threshold'?"],
        ),
        ('[data]\nn = 20\nsauce = "mnist"\n' + VALID, ["line 3", "unknown key 'sauce' in [data]"]),
        ("time_budget = 10\n" + VALID, ["line 1", "unknown key 'time_budget'", "'time_budget_s'"]),
        (
            '[[check]]\nkind = "max_mean_faith_ub"\neps = 0.05\ndelta = 0.1\nthreshold = 0.5\n',
            ["line 4", "unknown key 'delta'", "kind max_mean_faith_ub"],
        ),
        ('[data]\nn = "20"\n' + VALID, ["line 2", "[data]: n must be an integer >= 1", '"20" (a string)']),
        ("[data]\nn = 0\n" + VALID, ["[data]: n must be an integer >= 1, got 0"]),
        (
            '[[check]]\nkind = "max_mean_faith_ub"\neps = "0.05"\nthreshold = 0.5\n',
            ["line 3", "eps must be a radius >= 0", "(a string)"],
        ),
        (
            '[[check]]\nkind = "max_mean_faith_ub"\neps = -0.1\nthreshold = 0.5\n',
            ["line 3", "eps must be a radius >= 0, got -0.1"],
        ),
        (
            '[[check]]\nkind = "min_certified_share"\neps = 0.05\ndelta = 1.5\nthreshold = 0.5\n',
            ["line 4", "delta must be a confidence gap in [0, 1], got 1.5"],
        ),
        (
            '[[check]]\nkind = "min_certified_share"\neps = 0.05\ndelta = -0.01\nthreshold = 0.5\n',
            ["delta must be a confidence gap in [0, 1]"],
        ),
        (
            '[[check]]\nkind = "min_certified_share"\neps = 0.05\nthreshold = 0.5\n',
            ["line 1", "min_certified_share check needs delta"],
        ),
        (
            '[[check]]\nkind = "min_clean_accuracy"\nmodel = "student"\nthreshold = 1.2\n',
            ["line 4", "threshold must be a fraction in [0, 1], got 1.2"],
        ),
        (
            '[[check]]\nkind = "max_mean_faithub"\neps = 0.05\n',
            ["unknown kind", "did you mean 'max_mean_faith_ub'?"],
        ),
        (
            '[[check]]\nkind = "max_mean_faith_ub"\neps = 0.05\nthreshold = 0.5\nbounds = "crow"\n',
            ["line 5", "bounds must be one of"],
        ),
        ('[check]\nkind = "max_mean_faith_ub"\n', ["write each one as [[check]]"]),
        ('name = "x"\n', ["no checks"]),
        ("[data\nn = 3\n", ["not valid TOML", "line 1"]),
        (VALID + VALID, ["line 7", "same name"]),
    ],
)
def test_bad_config_exits_2_with_one_line(
    shipped_pair_paths: tuple[Path, Path], tmp_path: Path, text: str, fragments: list[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text, encoding="utf-8")
    result = invoke(*shipped_pair_paths, "--config", config, "--junit", tmp_path / "r.xml")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {config}"), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not (tmp_path / "r.xml").exists()


@pytest.mark.parametrize("missing", ["config", "teacher", "data"])
def test_missing_file_exits_2(shipped_pair_paths: tuple[Path, Path], tmp_path: Path, missing: str) -> None:
    teacher, student = shipped_pair_paths
    header = HEADER.replace("n = 20", 'n = 20\nsource = "nowhere.npz"') if missing == "data" else HEADER
    config = write_config(tmp_path, VALID, header=header)
    if missing == "config":
        config = tmp_path / "absent.toml"
    if missing == "teacher":
        teacher = tmp_path / "absent.onnx"
    result = invoke(teacher, student, "--config", config, "--quiet")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert ("nowhere" if missing == "data" else "absent") in lines[0]
