"""The gate's reports: the Markdown summary, the JSON report, JUnit XML for CI, and writing them whole."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path
from typing import Any

from faithverify.errors import ResultsFileError
from faithverify.gate.results import FAIL, NOT_EVALUATED, PASS, GateResult

FORMAT_VERSION = 1


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


def write_report(path: Path, text: str) -> None:
    """Replace ``path`` only by a complete file, so CI never reads a half-written report.

    Unlike :func:`faithverify.vnn.vnnlib.write_text_atomic`, a report gets the permissions the umask allows
    (not mkstemp's 0600), is written where a symbolic link points, is never gzipped, and a failure is a
    :class:`~faithverify.errors.ResultsFileError` naming the path.
    """
    target = path.resolve()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            # mkstemp creates the file private (0600); a report is for everyone the umask allows.
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ResultsFileError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
