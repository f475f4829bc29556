"""Bad input to ``bench``, ``verify-instance`` and ``export-vnn``.

Two kinds of promise. Input the command as a whole cannot use (a malformed instances list, an output path that
cannot be written, a ``--resume`` file that is not this suite's summary, a number that is not finite) is exit 2
with one line naming the problem and nothing written. An instance that cannot be run is that instance's row
(``error``, or ``unknown`` where the engine cannot take it) and the suite goes on: one bad instance never stops
a suite. Every file is generated here, in the case's folder or the session's workspace.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from faithverify.vnn.bench import SUMMARY_FIELDS
from faithverify.vnn.vnnlib import Box, Conjunct, Property, write_vnnlib
from tests.conftest import export_onnx, random_mlp
from tests.faults.harness import BAD_INPUT, OK, Fault, Make, Workspace, check, combine

INPUTS, CLASSES = 12, 4
LONG = "n" * 300  # longer than any file system's name limit (255 bytes)


def _sigmoid(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", INPUTS])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", INPUTS])
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"], name="squash")], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)]), str(path))
    return path


def _property(path: Path, row: list[float], bound: float) -> Path:
    """A box of radius 0.01 around 0.5 and the unsafe set ``row · y <= bound``."""
    lower, upper = np.full(INPUTS, 0.49), np.full(INPUTS, 0.51)
    write_vnnlib(path, Property([Box(lower, upper)], [Conjunct(np.array([row]), np.array([bound]))]))
    return path


@pytest.fixture(scope="session")
def vnn(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Small real networks and properties, each answered in well under a second; ``{suite}`` is a good
    two-instance list (unsat, then sat) and ``{summary}`` its finished bench summary."""
    from faithverify.cli import main
    from tests.faults.harness import run

    d = tmp_path_factory.mktemp("vnn")
    nets = d / "nets"
    nets.mkdir()
    example = torch.zeros(1, INPUTS)
    p = {
        "net": export_onnx(random_mlp(0, [INPUTS, 16, 16, CLASSES]), example, nets / "net.onnx"),
        "student": export_onnx(random_mlp(1, [INPUTS, 8, CLASSES]), example, nets / "student.onnx"),
        "one": export_onnx(random_mlp(2, [INPUTS, 8, 1]), example, nets / "one.onnx"),
        "one_sm": export_onnx(
            torch.nn.Sequential(random_mlp(2, [INPUTS, 8, 1]), torch.nn.Softmax(dim=-1)),
            example,
            nets / "one_sm.onnx",
        ),
        "sigmoid": _sigmoid(nets / "sigmoid.onnx"),
        # unsat: y0 - y1 <= -1000 cannot happen; sat: y0 <= 1000 always does.
        "unsat": _property(d / "unsat.vnnlib", [1.0, -1.0, 0.0, 0.0], -1000.0),
        "sat": _property(d / "sat.vnnlib", [1.0, 0.0, 0.0, 0.0], 1000.0),
        "one_unsat": _property(d / "one_unsat.vnnlib", [1.0], -1000.0),
        "one_sat": _property(d / "one_sat.vnnlib", [1.0], 1000.0),
        "sm_unsat": _property(d / "sm_unsat.vnnlib", [1.0], 0.5),  # softmax of one class is 1, never <= 0.5
        "sig_prop": _property(d / "sig_prop.vnnlib", [1.0] + [0.0] * (INPUTS - 1), 0.0),
    }
    nan_net = random_mlp(0, [INPUTS, 16, 16, CLASSES])
    with torch.no_grad():
        nan_net[0].weight[0, 0] = float("nan")  # a file onnx takes; the weights make every output NaN
    p["nan_net"] = export_onnx(nan_net, example, nets / "nan_net.onnx")
    p["net_gz"] = nets / "net.onnx.gz"
    p["net_gz"].write_bytes(gzip.compress(p["net"].read_bytes()))
    rng = np.random.default_rng(0)
    p["data"] = d / "points.npz"
    np.savez(p["data"], x=rng.random((3, INPUTS), dtype=np.float32), y=rng.integers(0, CLASSES, 3))
    p["suite"] = d / "instances.csv"
    p["suite"].write_text("nets/net.onnx,unsat.vnnlib,20\nnets/net.onnx,sat.vnnlib,20\n")
    p["summary"] = d / "summary.csv"
    result = run(main, ["bench", str(p["suite"]), "--out", str(p["summary"]), "--quiet"])
    assert result.exit_code == 0, result.output
    return Workspace(p)


def _csv(text: str, name: str = "instances.csv", *, gz: bool = False, raw: bytes | None = None) -> Make:
    """An instances list in the workspace's folder (so that its relative paths resolve), one per case."""

    def make(tmp: Path, ws: Workspace) -> dict[str, Path]:
        path = ws.paths["suite"].parent / f"{tmp.name}-{name}"
        data = raw if raw is not None else text.encode()
        path.write_bytes(gzip.compress(data) if gz else data)
        return {"csv": path}

    return make


def _file(name: str, content: bytes = b"x") -> Make:
    def make(tmp: Path, _ws: Workspace) -> dict[str, Path]:
        (tmp / name).write_bytes(content)
        return {"file": tmp / name}

    return make


def _copy(key: str, name: str) -> Make:
    """A copy of a workspace file in the case's folder, as ``{copy}``."""

    def make(tmp: Path, ws: Workspace) -> dict[str, Path]:
        (tmp / name).write_bytes(ws.paths[key].read_bytes())
        return {"copy": tmp / name}

    return make


def _instances(rows: list[str], gz: bool = False) -> Make:
    """An instances list of ``rows`` (placeholders ``{net}``... from the workspace, ``{tmp}`` the case's folder)
    in the case's folder, with the files it names."""

    def make(tmp: Path, ws: Workspace) -> dict[str, Path]:
        names = {**{k: str(v) for k, v in ws.paths.items()}, "tmp": str(tmp)}
        (tmp / "garbage.onnx").write_bytes(b"\x00\x01 not a protobuf")
        (tmp / "garbage.onnx.gz").write_bytes(b"not gzip at all")
        (tmp / "bad.vnnlib").write_text("(declare-const X_0 Real)\n(assert (<= X_0 oops))\n")
        text = "".join(r.format(**names) + "\n" for r in rows)
        path = tmp / ("list.csv.gz" if gz else "list.csv")
        path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
        return {"csv": path}

    return make


BENCH_OUT = ["--out", "{tmp}/out.csv", "--quiet"]
NOTHING = ("{tmp}/out.csv", "{tmp}/out")


def _rows(tmp: Path) -> list[dict[str, str]]:
    with open(tmp / "out.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _results(*expected: tuple[str, str]) -> Callable[[Path], None]:
    """The summary's rows are these (result, a fragment of the reason), in order, each with its result file."""

    def after(tmp: Path) -> None:
        rows = _rows(tmp)
        assert [r["result"] for r in rows] == [e[0] for e in expected], rows
        for row, (result, fragment) in zip(rows, expected, strict=True):
            assert fragment.lower() in row["reason"].lower(), (fragment, row)
            assert Path(row["result_file"]).read_text().splitlines()[0] == result
            assert Path(row["result_file"]).parent == tmp / "out"  # out.csv -> out/, not out-results/

    return after


def _names_keep_eps(*expected: tuple[str, str]) -> Callable[[Path], None]:
    """As :func:`_results`, and every result file's name keeps the eps of its VNN-LIB file's name."""

    def after(tmp: Path) -> None:
        _results(*expected)(tmp)
        for row in _rows(tmp):
            assert "eps_0.05" in Path(row["result_file"]).name, row

    return after


@dataclass(frozen=True)
class Case:
    fault: Fault
    after: Callable[[Path], None] | None = None  # checks on what a run that went on wrote

    def __str__(self) -> str:
        return self.fault.id


def bad(id: str, argv: list[str], fragments: list[str], **kw: object) -> Case:
    return Case(Fault(id, argv, fragments, **kw))  # type: ignore[arg-type]


def ran(id: str, argv: list[str], after: Callable[[Path], None] | None, **kw: object) -> Case:
    return Case(Fault(id, argv, exit_code=OK, **kw), after)  # type: ignore[arg-type]


def bench(id: str, text: str, fragments: list[str], **kw: object) -> Case:
    """``bench`` on an instances list that must be refused as a whole."""
    make = kw.pop("make", None) or _csv(text, **kw)  # type: ignore[arg-type]
    return bad(id, ["bench", "{csv}", *BENCH_OUT], fragments, make=make, not_written=NOTHING)


INSTANCES_LIST = [
    bad("list-missing", ["bench", "{tmp}/none.csv", *BENCH_OUT], ["none.csv"], not_written=NOTHING),
    bad("list-is-folder", ["bench", "{tmp}", *BENCH_OUT], ["folder"], not_written=NOTHING),
    bench("list-empty", "", ["no instances"]),
    bench("list-only-comments", "# onnx,vnnlib,timeout\n\n  \n", ["no instances"]),
    bench("list-two-fields", "nets/net.onnx,unsat.vnnlib\n", ["line 1", "expected onnx,vnnlib,timeout"]),
    bench("list-four-fields", "nets/net.onnx,unsat.vnnlib,20,x\n", ["line 1", "got 4 fields"]),
    bench("list-timeout-word", "nets/net.onnx,unsat.vnnlib,soon\n", ["'soon'", "not a number"]),
    bench("list-timeout-negative", "# c\nnets/net.onnx,unsat.vnnlib,-3\n", ["line 2", "positive"]),
    bench("list-timeout-zero", "nets/net.onnx,unsat.vnnlib,0\n", ["positive"]),
    bench("list-timeout-nan", "nets/net.onnx,unsat.vnnlib,nan\n", ["positive and finite"]),
    bench("list-timeout-inf", "nets/net.onnx,unsat.vnnlib,inf\n", ["positive and finite"]),
    bench("list-timeout-empty", "nets/net.onnx,unsat.vnnlib,\n", ["not a number"]),
    bench("list-empty-name", " ,unsat.vnnlib,20\n", ["empty file name"]),
    bench("list-nul-in-name", "nets/net\0.onnx,unsat.vnnlib,20\n", ["NUL"]),
    bench("list-not-utf8", "", ["UTF-8", ".gz"], raw=b"\xff\xfe\x00\x81 binary"),
    bench("list-gzip-but-named-csv", "", ["UTF-8"], raw=gzip.compress(b"a.onnx,b.vnnlib,1\n")),
    bench("list-gz-corrupt", "", ["gzip"], name="instances.csv.gz", raw=b"plain text, not gzip\n"),
    bench(
        "list-gz-truncated",
        "",
        ["gzip"],
        name="instances.csv.gz",
        raw=gzip.compress(b"nets/net.onnx,unsat.vnnlib,20\n" * 50)[:30],
    ),
    bench("list-gz-not-utf8", "", ["UTF-8"], name="instances.csv.gz", gz=True, raw=b"\xff\xfe\x81"),
    bench("list-gz-empty", "", ["no instances"], name="instances.csv.gz", gz=True),
    ran(
        "list-gz-valid",
        ["bench", "{csv}", *BENCH_OUT],
        _results(("unsat", ""), ("sat", "")),
        make=_instances(["{net},{unsat},20", "{net_gz},{sat},20"], gz=True),
    ),
    ran(
        "list-header-line-skipped",
        ["bench", "{csv}", *BENCH_OUT],
        _results(("unsat", "")),
        make=_instances(["onnx,vnnlib,timeout", "{net},{unsat},20"]),
    ),
]


def _relative(tmp: Path, ws: Workspace) -> dict[str, Path]:
    """A list in a sub-folder naming its files relative to itself, up and down (``../``)."""
    sub = tmp / "lists"
    (sub / "props").mkdir(parents=True)
    (sub / "props" / "p.vnnlib").write_bytes(ws.paths["unsat"].read_bytes())
    (tmp / "n.onnx").write_bytes(ws.paths["net"].read_bytes())
    (sub / "instances.csv").write_text(
        "../n.onnx,props/p.vnnlib,20\n./../n.onnx , props/../props/p.vnnlib , 20\n"
    )
    return {"csv": sub / "instances.csv"}


ONE_BAD_INSTANCE = [  # exit 0: the bad instance is its row, and the next one is still answered
    ran(
        "inst-onnx-missing",
        ["bench", "{csv}", *BENCH_OUT],
        _results(("error", "no such file"), ("sat", "")),
        make=_instances(["{tmp}/none.onnx,{unsat},20", "{net},{sat},20"]),
    ),
    ran(
        "inst-vnnlib-missing",
        ["bench", "{csv}", *BENCH_OUT],
        _results(("error", "none.vnnlib"), ("unsat", "")),
        make=_instances(["{net},{tmp}/none.vnnlib,20", "{net},{unsat},20"]),
    ),
    ran(
        "inst-onnx-corrupt",
        ["bench", "{csv}", *BENCH_OUT],
        _results(("error", "garbage.onnx"), ("unsat", "")),
        make=_instances(["{tmp}/garbage.onnx,{unsat},20", "{net},{unsat},20"]),
    ),
    ran(
        "inst-onnx-gz-corrupt",
        ["bench", "{csv}", *BENCH_OUT],
        _results(("error", "gzip"), ("unsat", "")),
        make=_instances(["{tmp}/garbage.onnx.gz,{unsat},20", "{net},{unsat},20"]),
    ),
    ran(
        "inst-vnnlib-malformed",
        ["bench", "{csv}", *BENCH_OUT],
        _results(("error", "bad.vnnlib"), ("unsat", "")),
        make=_instances(["{net},{tmp}/bad.vnnlib,20", "{net},{unsat},20"]),
    ),
    ran(
        "inst-onnx-name-too-long",
        ["bench", "{csv}", *BENCH_OUT],
        _results(("error", "too long"), ("unsat", "")),
        make=_instances([f"{{tmp}}/{LONG}.onnx,{{unsat}},20", "{net},{unsat},20"]),
    ),
    ran(
        "inst-nan-weights",
        ["bench", "{csv}", *BENCH_OUT],
        _results(("error", "nan"), ("unsat", "")),
        make=_instances(["{nan_net},{unsat},20", "{net},{unsat},20"]),
    ),
    ran(
        "inst-property-reads-other-outputs",
        ["bench", "{csv}", *BENCH_OUT],
        _results(("unknown", "outputs"), ("unsat", "")),
        make=_instances(["{net},{one_unsat},20", "{net},{unsat},20"]),
    ),
    ran(
        "inst-unsupported-operator",
        ["bench", "{csv}", *BENCH_OUT],
        _results(("unknown", "Sigmoid"), ("unsat", "")),
        make=_instances(["{sigmoid},{sig_prop},20", "{net},{unsat},20"]),
    ),
    ran(
        "inst-folder-as-onnx",
        ["bench", "{csv}", *BENCH_OUT],
        _results(("error", ""), ("unsat", "")),
        make=_instances(["{tmp},{unsat},20", "{net},{unsat},20"]),
    ),
    ran(
        "inst-one-output-network",
        ["bench", "{csv}", *BENCH_OUT],
        _results(("unsat", ""), ("sat", ""), ("unsat", "")),
        make=_instances(["{one},{one_unsat},20", "{one},{one_sat},20", "{one_sm},{sm_unsat},20"]),
    ),
    ran(
        "inst-relative-paths",
        ["bench", "{csv}", *BENCH_OUT],
        _results(("unsat", ""), ("unsat", "")),
        make=_relative,
    ),
    ran(
        "inst-result-names-keep-the-eps",
        ["bench", "{csv}", *BENCH_OUT],
        _names_keep_eps(("unsat", "")),
        make=combine(
            _copy("unsat", "pair_00001_eps_0.05.vnnlib"),
            _instances(["{net},{tmp}/pair_00001_eps_0.05.vnnlib,20"]),
        ),
    ),
    ran(
        "inst-gz-network-and-long-names",
        ["bench", "{csv}", *BENCH_OUT],
        _names_keep_eps(("unsat", "")),
        make=combine(
            _copy("unsat", f"{'p' * 200}_eps_0.05.vnnlib"),
            _instances([f"{{net_gz}},{{tmp}}/{'p' * 200}_eps_0.05.vnnlib,20"]),
        ),
    ),
]


def _summary(content: str | bytes | None) -> Make:
    """``{tmp}/out.csv`` holding ``content`` (None: no such file), and ``{csv}`` the workspace's suite."""

    def make(tmp: Path, ws: Workspace) -> dict[str, Path]:
        if content is not None:
            (tmp / "out.csv").write_bytes(content.encode() if isinstance(content, str) else content)
        return {"csv": ws.paths["suite"]}

    return make


def _own_summary(transform: Callable[[str], str]) -> Make:
    def make(tmp: Path, ws: Workspace) -> dict[str, Path]:
        (tmp / "out.csv").write_text(transform(ws.paths["summary"].read_text()))
        return {"csv": ws.paths["suite"]}

    return make


RESUME = ["bench", "{csv}", "--out", "{tmp}/out.csv", "--resume", "--quiet"]
HEADER = ",".join(SUMMARY_FIELDS) + "\n"


def _resumed(runs: int) -> Callable[[Path], None]:
    def after(tmp: Path) -> None:
        rows = _rows(tmp)
        assert [r["result"] for r in rows] == ["unsat", "sat"], rows
        assert len({(r["onnx"], r["vnnlib"], r["timeout"]) for r in rows}) == 2
        assert len(list((tmp / "out").glob("*.txt"))) == runs

    return after


OUTPUTS_AND_RESUME = [
    bad("out-dash", ["bench", "{suite}", "--out", "-"], ["file name"], not_written=["-", "--files"]),
    bad(
        "out-under-a-file",
        ["bench", "{suite}", "--out", "{file}/out.csv"],
        ["is a file"],
        make=_file("f.txt"),
        not_written=["{tmp}/out"],
    ),
    bad(
        "out-deep-under-a-file",
        ["bench", "{suite}", "--out", "{file}/a/b/out.csv"],
        ["is a file"],
        make=_file("f.txt"),
    ),
    bad(
        "out-name-too-long",
        ["bench", "{suite}", "--out", f"{{tmp}}/{LONG}.csv"],
        ["too long"],
        not_written=["{tmp}/out.csv"],  # (a name too long cannot be asked whether it exists)
    ),
    bad("out-folder-name-too-long", ["bench", "{suite}", "--out", f"{{tmp}}/{LONG}/out.csv"], ["too long"]),
    bad("out-is-a-folder", ["bench", "{suite}", "--out", "{tmp}"], ["directory"]),
    bad(
        "out-is-the-instances-list",
        ["bench", "{csv}", "--out", "{csv}"],
        ["instances file itself"],
        make=_instances(["{net},{unsat},20"]),
        unchanged=["{csv}"],
    ),
    bad(
        "results-dir-under-a-file",
        ["bench", "{suite}", *BENCH_OUT, "--results-dir", "{file}/res"],
        ["is a file"],
        make=_file("f.txt"),
        not_written=NOTHING,
    ),
    bad(
        "results-dir-is-a-file",
        ["bench", "{suite}", *BENCH_OUT, "--results-dir", "{file}"],
        ["is a file"],
        make=_file("f.txt"),
        not_written=NOTHING,
    ),
    bad(
        "results-dir-name-too-long",
        ["bench", "{suite}", *BENCH_OUT, "--results-dir", f"{{tmp}}/{LONG}"],
        ["too long"],
        not_written=NOTHING,
    ),
    bad(
        "timeout-cap-nan",
        ["bench", "{suite}", *BENCH_OUT, "--timeout-cap", "nan"],
        ["finite"],
        not_written=NOTHING,
    ),
    bad(
        "timeout-cap-inf",
        ["bench", "{suite}", *BENCH_OUT, "--timeout-cap", "inf"],
        ["finite"],
        not_written=NOTHING,
    ),
    bad(
        "timeout-cap-zero",
        ["bench", "{suite}", *BENCH_OUT, "--timeout-cap", "0"],
        ["timeout-cap"],
        not_written=NOTHING,
    ),
    bad(
        "resume-over-jsonl",
        RESUME,
        ["not a bench summary"],
        make=_summary('{"faithverify": 1}\n{"index": 0}\n'),
        unchanged=["{tmp}/out.csv"],
        not_written=["{tmp}/out"],
    ),
    bad(
        "resume-over-binary",
        RESUME,
        ["not a bench summary"],
        make=_summary(b"\xff\x00\x01\x02"),
        unchanged=["{tmp}/out.csv"],
        not_written=["{tmp}/out"],
    ),
    bad(
        "resume-over-other-suite",
        RESUME,
        ["line 2", "another suite"],
        make=_summary(HEADER + "0,/elsewhere/a.onnx,/elsewhere/b.vnnlib,20,unsat,1.0,crown,,r/0.txt\n"),
        unchanged=["{tmp}/out.csv"],
        not_written=["{tmp}/out"],
    ),
    bad(
        "resume-with-other-timeout-cap",
        [*RESUME, "--timeout-cap", "7"],
        ["--timeout-cap"],
        make=_own_summary(lambda t: t),
        unchanged=["{tmp}/out.csv"],
    ),
    bad(
        "resume-row-with-missing-fields",
        RESUME,
        ["line 2", "fields"],
        make=_summary(HEADER + "0,a,b\n"),
        unchanged=["{tmp}/out.csv"],
    ),
    bad(
        "resume-header-only-other-columns",
        RESUME,
        ["not a bench summary"],
        make=_summary("a,b,c\n1,2,3\n"),
        unchanged=["{tmp}/out.csv"],
    ),
    ran("resume-empty-file", RESUME, _resumed(2), make=_summary("")),
    ran("resume-own-summary-runs-nothing", RESUME, _resumed(0), make=_own_summary(lambda t: t)),
    ran("resume-last-row-cut-short", RESUME, _resumed(1), make=_own_summary(lambda t: t.rstrip("\n")[:-25])),
    ran("resume-missing-file-starts-fresh", RESUME, _resumed(2), make=_summary(None)),
]

VERIFY = ["verify-instance", "{net}", "{unsat}"]


def _result_file(outcome: str) -> Callable[[Path], None]:
    def after(tmp: Path) -> None:
        assert (tmp / "r.txt").read_text().splitlines()[0] == outcome

    return after


VERIFY_INSTANCE = [
    ran("vi-result-dash-is-stdout", [*VERIFY, "--result", "-"], None, not_written=["-"]),
    bad("vi-result-under-a-file", [*VERIFY, "--result", "{file}/r.txt"], ["is a file"], make=_file("f.txt")),
    bad("vi-result-name-too-long", [*VERIFY, "--result", f"{{tmp}}/{LONG}.txt"], ["too long"]),
    bad("vi-result-is-a-folder", [*VERIFY, "--result", "{tmp}"], ["directory"]),
    bad("vi-onnx-missing", ["verify-instance", "{tmp}/none.onnx", "{unsat}"], ["none.onnx"]),
    bad("vi-vnnlib-missing", ["verify-instance", "{net}", "{tmp}/none.vnnlib"], ["none.vnnlib"]),
    bad(
        "vi-onnx-corrupt",
        ["verify-instance", "{file}", "{unsat}", "--result", "{tmp}/r.txt"],
        ["bad.onnx"],
        make=_file("bad.onnx", b"\x00\x01 not a protobuf"),
        not_written=["{tmp}/r.txt"],
    ),
    bad(
        "vi-timeout-nan",
        [*VERIFY, "--timeout", "nan", "--result", "{tmp}/r.txt"],
        ["--timeout"],
        not_written=["{tmp}/r.txt"],
    ),
    bad("vi-timeout-inf", [*VERIFY, "--timeout", "inf"], ["--timeout"]),
    ran(
        "vi-one-output-network",
        ["verify-instance", "{one}", "{one_sat}", "--result", "{tmp}/r.txt"],
        _result_file("sat"),
    ),
    ran(
        "vi-unsupported-operator-is-unknown",
        ["verify-instance", "{sigmoid}", "{sig_prop}", "--result", "{tmp}/r.txt"],
        _result_file("unknown"),
    ),
]

EXPORT = ["export-vnn", "{net}", "{student}", "--data", "{data}", "--eps", "0.01"]

EXPORT_VNN = [
    bad(
        "ev-delta-nan",
        [*EXPORT, "--delta", "nan", "-o", "{tmp}/suite"],
        ["--delta", "finite"],
        not_written=["{tmp}/suite"],
    ),
    bad(
        "ev-delta-above-one",
        [*EXPORT, "--delta", "inf", "-o", "{tmp}/suite"],
        ["--delta"],
        not_written=["{tmp}/suite"],
    ),
    bad(
        "ev-delta-negative",
        [*EXPORT, "--delta", "-0.1", "-o", "{tmp}/suite"],
        ["--delta"],
        not_written=["{tmp}/suite"],
    ),
    bad(
        "ev-timeout-nan",
        [*EXPORT, "--delta", "0.2", "--timeout", "nan", "-o", "{tmp}/suite"],
        ["--timeout"],
        not_written=["{tmp}/suite"],
    ),
    bad(
        "ev-timeout-inf",
        [*EXPORT, "--delta", "0.2", "--timeout", "inf", "-o", "{tmp}/suite"],
        ["--timeout"],
        not_written=["{tmp}/suite"],
    ),
    bad(
        "ev-one-class-teacher",
        [
            "export-vnn",
            "{one}",
            "{one}",
            "--data",
            "{data}",
            "--eps",
            "0.01",
            "--delta",
            "0.2",
            "-o",
            "{tmp}/suite",
        ],
        ["one.onnx", "at least 2"],
        not_written=["{tmp}/suite"],
    ),
    bad(
        "ev-out-under-a-file",
        [*EXPORT, "--delta", "0.2", "-o", "{file}/suite"],
        ["is a file"],
        make=_file("f.txt"),
    ),
    bad("ev-out-name-too-long", [*EXPORT, "--delta", "0.2", "-o", f"{{tmp}}/{LONG}"], ["too long"]),
    bad(
        "certify-one-class-pair",
        ["certify", "{one}", "{one}", "--data", "{data}", "--eps", "0.01", "--quiet"],
        ["one.onnx", "at least 2"],
    ),
]

CASES = [*INSTANCES_LIST, *ONE_BAD_INSTANCE, *OUTPUTS_AND_RESUME, *VERIFY_INSTANCE, *EXPORT_VNN]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bench_fault(case: Case, vnn: Workspace, tmp_path: Path) -> None:
    result = check(case.fault, vnn, tmp_path)
    if case.fault.exit_code == BAD_INPUT:
        assert not (tmp_path / "out").exists() or case.fault.id.startswith("resume-"), result.output
    if case.after is not None:
        case.after(tmp_path)


def test_case_ids_are_unique() -> None:
    ids = [str(c) for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40
