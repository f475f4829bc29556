"""The fault suite's harness: a malformed input is a :class:`Fault` (how to build it, the command that meets it,
what must come out), and :func:`check` runs it as a user would and asserts the promise of the README: the
expected exit code, one line on stderr that names the problem, no traceback, and nothing half written.

Cases are tables of ``Fault`` values in ``test_*.py`` beside this file; each builds its bad input inside the
test's temporary folder (nothing large is shipped). Placeholders in ``argv`` are filled from the
:class:`Workspace`: ``{teacher}``, ``{student}``, ``{data}``, ``{results}`` (a finished certify results file),
``{tmp}`` (the case's folder) and whatever ``make`` returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from click.testing import CliRunner, Result

from faithverify.cli import main as faithverify_main

# The exit codes the README promises.
OK, BAD_INPUT, INTERNAL, LIMITATION, INTERRUPTED = 0, 2, 3, 4, 130


@dataclass(frozen=True)
class Workspace:
    """What every case may refer to: small real models and files, built once per session."""

    paths: Mapping[str, Path]

    def fill(self, argv: Sequence[str], tmp: Path, extra: Mapping[str, Path]) -> list[str]:
        names = {**{k: str(v) for k, v in self.paths.items()}, "tmp": str(tmp)}
        names.update({k: str(v) for k, v in extra.items()})
        return [a.format(**names) for a in argv]


# Builds a case's bad input in its folder; returns extra placeholders ({name} -> path).
Make = Callable[[Path, "Workspace"], Mapping[str, Path]]


def combine(*makers: Make) -> Make:
    """One builder running ``makers`` in turn, their placeholders merged."""

    def make(tmp: Path, ws: Workspace) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for m in makers:
            out.update(m(tmp, ws))
        return out

    return make


@dataclass(frozen=True)
class Fault:
    """One malformed input and what faithverify must do with it."""

    id: str
    argv: Sequence[str]  # the command line after the program name, with {placeholders}
    fragments: Sequence[str] = ()  # each must appear in the error line (case-insensitive)
    exit_code: int = BAD_INPUT
    make: Make | None = None  # builds the bad input
    # Paths (placeholders allowed) that must not exist afterwards: nothing half written.
    not_written: Sequence[str] = ()
    # Paths (placeholders allowed) whose bytes must be unchanged afterwards.
    unchanged: Sequence[str] = ()
    program: Callable[..., object] = field(default=faithverify_main)

    def __str__(self) -> str:
        return self.id


def _digest(path: Path) -> str | None:
    if not path.exists():
        return None
    if path.is_dir():
        return "dir:" + ",".join(sorted(p.name for p in path.iterdir()))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(program: Callable[..., object], argv: Sequence[str]) -> Result:
    return CliRunner().invoke(program, list(argv), catch_exceptions=True)  # type: ignore[arg-type]


def check(fault: Fault, workspace: Workspace, tmp: Path) -> Result:
    """Run ``fault`` and assert its promise; return the result for case-specific checks."""
    extra = fault.make(tmp, workspace) if fault.make is not None else {}
    argv = workspace.fill(fault.argv, tmp, extra)
    unchanged = {p: _digest(Path(p)) for p in workspace.fill(fault.unchanged, tmp, extra)}
    result = run(fault.program, argv)
    shown = f"argv: {argv}\nexit: {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}\n{shown}")
    assert result.exit_code == fault.exit_code, shown
    assert "Traceback" not in result.output, shown
    if fault.exit_code != OK:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.lower().startswith(("error", "usage", "try", "internal"))]
        # click's usage errors take three lines (usage, hint, error); ours take one.
        message = [line for line in lines if line.lower().startswith(("error", "internal", "interrupted"))]
        assert len(message) == 1, f"expected one error line\n{shown}"
        assert errors, shown
        for fragment in fault.fragments:
            assert fragment.lower() in message[0].lower(), f"{fragment!r} not in the error line\n{shown}"
    for path in workspace.fill(fault.not_written, tmp, extra):
        assert not Path(path).exists(), f"{path} was written\n{shown}"
    for path, before in unchanged.items():
        assert _digest(Path(path)) == before, f"{path} changed\n{shown}"
    return result
