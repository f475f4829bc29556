"""VNN-LIB 2.0 conformance: the `vnnlib-satisfactory` suite (PyPI) against `faithverify-vnnlib` (issue 12).

    pip install vnnlib-satisfactory                      # the suite (not a dependency of faithverify)
    python benchmarks/vnnlib_conformance.py              # writes benchmarks/results/vnnlib_conformance.md
    python benchmarks/vnnlib_conformance.py --unclaimed  # also runs the tests `supports` does not claim
    python benchmarks/vnnlib_conformance.py --only relu conv --timeout 30

The suite builds small ONNX networks and VNN-LIB 2.0 queries with known answers, asks the solver what it
`supports`, and runs `verify` on every test the claims cover, exactly as `vnnlib-satisfactory run` does (the
same functions; the artifacts go to a temporary folder, not the working directory). The table counts

- pass: the known answer; wrong: the opposite definite answer (never acceptable: a soundness bug);
- unknown: a claimed test answered `unknown` / `timed-out` (sound, incomplete);
- skipped: not claimed by `supports` (with ``--unclaimed`` these run as well, and must not be wrong either);
- invalid query: exit 2 (bad input) on a query the standard's reference parser rejects too;
- no verdict: stdout does not start with a verdict line (an exit without an answer) on a valid query;
- crash: a traceback on stderr, or an exit code other than 0 (answered) and 2 (input refused).

A verifier must never answer without a verdict line, so "no verdict" and "crash" must be 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VERDICTS = ("sat", "unsat", "unknown", "timed-out")


@dataclass
class Row:
    test: str
    claimed: bool
    expected: str
    answer: str  # the first stdout line
    returncode: int
    seconds: float
    reason: str  # the last stderr line (why unknown, or the error)
    valid: bool = True  # whether the standard's reference parser (PyPI vnnlib) accepts the query

    @property
    def crash(self) -> bool:
        # Exit 2 is a refusal of bad input (counted as "no verdict" when it happens on a suite query).
        return self.returncode not in (0, 2) or "Traceback" in self.reason

    @property
    def verdict(self) -> bool:
        return self.answer in VERDICTS

    @property
    def kind(self) -> str:
        if self.crash:
            return "crash"
        if not self.verdict:
            # Exit 2 on a query the reference parser itself rejects is the right answer to bad input.
            return "invalid query" if self.returncode == 2 and not self.valid else "no verdict"
        if self.answer in ("sat", "unsat") and self.expected in ("sat", "unsat"):
            return "pass" if self.answer == self.expected else "wrong"
        if self.answer in ("sat", "unsat"):
            return "no reference"
        return "unknown"


def _parses(query: Path) -> bool:
    """Whether the standard's reference parser accepts the query (types and scopes checked)."""
    import vnnlib

    try:
        vnnlib.parse_query_string(query.read_text())
    except vnnlib.VNNLibException:
        return False
    return True


def _solver_command(given: str | None) -> str:
    if given:
        return given
    exe = Path(sys.executable).parent / "faithverify-vnnlib"
    return str(exe) if exe.exists() else "faithverify-vnnlib"


def run(solver: str, timeout: float, only: list[str] | None, unclaimed: bool) -> tuple[list[Row], dict]:
    from vnntest.core import evaluator, generator, runner
    from vnntest.models.test_case import TestCase

    workdir = Path(tempfile.mkdtemp(prefix="vnnlib-conformance-"))
    previous = Path.cwd()
    os.chdir(workdir)  # the suite writes its artifacts under ./.vnnlib-satisfactory
    try:
        manifest = []
        categories: list[str | None] = list(only) if only else [None]
        for category in categories:
            manifest += generator.generate_all_tests(suite="full", node_type=category)
        cache = Path(".vnnlib-satisfactory") / "tests"
        cases = [TestCase.from_manifest_entry(e, cache / e["category"]) for e in manifest]
        claims = {
            "ops": runner.get_supported_ops(solver),
            "networks": runner.get_supported_network_theories(solver),
            "hidden": runner.get_supported_hidden_node_theories(solver),
            "io": runner.get_supported_io_theories(solver),
            "arithmetic": runner.get_supported_arithmetic_complexity_theories(solver),
        }
        runnable, skipped = evaluator.partition_by_support(
            cases,
            claims["ops"],
            claims["networks"],
            claims["hidden"],
            supported_io_theories=claims["io"],
            supported_arithmetic_complexity_theories=claims["arithmetic"],
        )
        todo = [(tc, True) for tc in runnable] + (
            [(s.test_case, False) for s in skipped] if unclaimed else []
        )
        rows = [Row(s.test_case.id, False, s.test_case.expected.value, "", 0, 0.0, "") for s in skipped]
        if unclaimed:
            rows = []
        for tc, claimed in sorted(todo, key=lambda t: t[0].id):
            start = time.monotonic()
            # The solver's own --timeout is the budget; the process gets a little more to start and answer.
            result = runner.run_solver_on_test(solver, tc, timeout=int(timeout))
            seconds = time.monotonic() - start
            lines = result.stdout.strip().splitlines()
            errors = [line for line in result.stderr.strip().splitlines() if line.strip()]
            reason = (result.error or "") + (errors[-1].strip() if errors else "")
            rows.append(
                Row(
                    tc.id,
                    claimed,
                    tc.expected.value,
                    lines[0].strip() if lines else "",
                    result.returncode,
                    seconds,
                    reason,
                    _parses(Path(tc.vnnlib_path)),
                )
            )
            print(
                f"{rows[-1].kind:>10}  {tc.id:<40} {rows[-1].answer or '-':<9} {seconds:5.1f}s  {reason[:90]}",
                flush=True,
            )
        return sorted(rows, key=lambda r: r.test), claims
    finally:
        os.chdir(previous)
        shutil.rmtree(workdir, ignore_errors=True)


def table(rows: list[Row], claims: dict, command: str, seconds: float, timeout: float) -> str:
    ran = [r for r in rows if r.claimed or r.answer or r.returncode]
    claimed = [r for r in rows if r.claimed]
    count = Counter(r.kind for r in claimed)
    out = [
        "# VNN-LIB 2.0 conformance (vnnlib-satisfactory)",
        "",
        "Re-measure with:",
        "",
        f"    {command}",
        "",
        f"vnnlib-satisfactory {_suite_version()}, faithverify-vnnlib verify --timeout {timeout:g}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {seconds:.0f} s in all.",
        "",
        "## Claimed tests (what `supports` covers)",
        "",
        "| claimed | pass | wrong | unknown | no reference | invalid query | no verdict | crash "
        "| not claimed (skipped) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {len(claimed)} | {count['pass']} | {count['wrong']} | {count['unknown']} | {count['no reference']} | "
        f"{count['invalid query']} | {count['no verdict']} | {count['crash']} | {len(rows) - len(claimed)} |",
        "",
    ]
    unclaimed_ran = [r for r in ran if not r.claimed]
    if unclaimed_ran:
        extra = Counter(r.kind for r in unclaimed_ran)
        out += [
            "## Tests not claimed, run anyway (`--unclaimed`)",
            "",
            "| tests | pass | wrong | unknown | no reference | invalid query | no verdict | crash |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {len(unclaimed_ran)} | {extra['pass']} | {extra['wrong']} | {extra['unknown']} | "
            f"{extra['no reference']} | {extra['invalid query']} | {extra['no verdict']} | {extra['crash']} |",
            "",
        ]
    out += ["## What `supports` claims", ""]
    for key, value in claims.items():
        shown = "(not answered)" if value is None else ", ".join(sorted(value))
        out.append(f"- {key}: {shown}")
    out += [
        "",
        "## Every test",
        "",
        "| test | claimed | expected | answer | outcome | s | reason (stderr) |",
        "|---|---|---|---|---|---:|---|",
    ]
    for r in rows:
        if not r.claimed and not (r.answer or r.returncode):
            out.append(f"| {r.test} | no | {r.expected} | | skipped | | |")
            continue
        reason = r.reason.replace("|", "\\|")[:160]
        out.append(
            f"| {r.test} | {'yes' if r.claimed else 'no'} | {r.expected} | {r.answer or '(none)'} | {r.kind} | "
            f"{r.seconds:.1f} | {reason} |"
        )
    return "\n".join(out) + "\n"


def _suite_version() -> str:
    from importlib.metadata import version

    return version("vnnlib-satisfactory")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--solver", help="the solver command (default: faithverify-vnnlib beside this Python)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per query (default 30)")
    parser.add_argument("--only", nargs="+", help="test categories (e.g. relu conv network_multiple)")
    parser.add_argument(
        "--unclaimed", action="store_true", help="also run the tests `supports` does not claim"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "vnnlib_conformance.md")
    args = parser.parse_args()
    try:
        import vnntest  # noqa: F401
    except ImportError:
        print("the suite is missing: pip install vnnlib-satisfactory", file=sys.stderr)
        return 2
    started = time.monotonic()
    rows, claims = run(_solver_command(args.solver), args.timeout, args.only, args.unclaimed)
    words = ["python benchmarks/vnnlib_conformance.py", f"--timeout {args.timeout:g}"]
    words += ["--unclaimed"] if args.unclaimed else []
    words += ["--only " + " ".join(args.only)] if args.only else []
    text = table(rows, claims, " ".join(words), time.monotonic() - started, args.timeout)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Earlier measurements, written by hand under "## History", are kept across re-runs.
    if args.out.exists() and "\n## History\n" in (old := args.out.read_text()):
        text = text.replace(
            "\n## Every test\n",
            "\n## History\n"
            + old.split("\n## History\n", 1)[1].split("\n## Every test\n")[0]
            + "\n## Every test\n",
        )
    args.out.write_text(text)
    print(text.split("## What")[0])
    bad = [r for r in rows if r.kind in ("wrong", "crash", "no verdict")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
