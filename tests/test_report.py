"""`faithverify report` and `faithverify heatmap` on the shipped pair: the files a report holds, its numbers
against the raw records, and the heat map against onnxruntime run here on the two model files and against the
point's CROWN bound from `certify`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner, Result
from matplotlib.image import imread

from faithverify.attack import PGDConfig
from faithverify.cli import main
from faithverify.errors import ResultsFileError
from faithverify.heatmap import GapSlice, compute_gap_slice
from faithverify.pair import load_pair
from faithverify.report import load_series
from faithverify.results import format_table, read_results, summarize

FAST = ["--attack-steps", "10", "--restarts", "1", "--quiet", "--device", "cpu"]
EPS = (0.025, 0.05)
POINT = 1  # a point of the shipped sample with a visible gap at eps 0.05 (EmpLB about 0.45)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def results(
    shipped_pair_paths: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Two results files of `certify` on the first 10 sample points: plain, and with --delta verdicts."""
    teacher, student = shipped_pair_paths
    d = tmp_path_factory.mktemp("results")
    eps_args = [a for e in EPS for a in ("--eps", str(e))]
    plain, delta = d / "fd.jsonl", d / "fd-delta.jsonl"
    for out, extra in ((plain, []), (delta, ["--delta", "0.2", "--no-refine", "--no-robustness"])):
        result = invoke("certify", teacher, student, "--n", "10", *eps_args, *FAST, *extra, "--out", out)
        assert result.exit_code == 0, result.output
    return {"plain": plain, "delta": delta}


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] >= 200 and image.shape[1] >= 200, image.shape
    assert float(image[..., :3].std()) > 0.01, f"{path} is blank"


def test_report_writes_tables_plots_and_index(results: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = invoke("report", results["plain"], "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "histograms.png",
        "index.md",
        "scatter.png",
        "summary.csv",
        "summary.md",
    ]  # no verdicts.png: this run had no --delta
    for name in ("histograms.png", "scatter.png"):
        assert_png(out / name)
    index = (out / "index.md").read_text()
    for target in ("(histograms.png)", "(scatter.png)", "(summary.md)", "(summary.csv)"):
        assert target in index
    _, points = read_results(results["plain"])
    assert format_table(summarize(points)) in (out / "summary.md").read_text()


def test_summary_csv_equals_the_records(results: dict[str, Path], tmp_path: Path) -> None:
    """Means and counts in summary.csv, recomputed here from the raw JSON lines."""
    out = tmp_path / "report"
    assert invoke("report", results["plain"], results["delta"], "-o", out).exit_code == 0
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["results"], float(r["eps"])) for r in rows] == [
        (label, e) for label in ("fd", "fd-delta") for e in EPS
    ]
    for row in rows:
        path = results["plain"] if row["results"] == "fd" else results["delta"]
        records = [json.loads(line) for line in path.read_text().splitlines()[1:]]
        group = [r for r in records if r["eps"] == float(row["eps"])]
        assert int(row["n"]) == len(group) == 10
        for column, key in (("emp_lb", "emp_lb"), ("faith_ub", "faith_ub")):
            values = np.array([r[key] for r in group])
            assert float(row[f"{column}_mean"]) == pytest.approx(values.mean(), abs=1e-12)
            assert float(row[f"{column}_std"]) == pytest.approx(values.std(), abs=1e-12)
        crown = np.array([r["bounds"]["crown"] for r in group])
        assert float(row["ub_crown_mean"]) == pytest.approx(crown.mean(), abs=1e-12)


def test_several_files_share_panels_and_verdicts_are_drawn(results: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = invoke("report", results["plain"], results["delta"], "-o", out)
    assert result.exit_code == 0, result.output
    assert_png(out / "verdicts.png")
    summary = (out / "summary.md").read_text()
    assert "## fd\n" in summary and "## fd-delta\n" in summary
    assert "certified / violated / unknown" in summary  # the --delta file's table has its verdict columns
    assert "(verdicts.png)" in (out / "index.md").read_text()


def test_same_stems_get_distinct_labels(results: dict[str, Path], tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(results["plain"], tmp_path / folder / "r.jsonl")
    series = load_series([tmp_path / "a" / "r.jsonl", tmp_path / "b" / "r.jsonl"])
    assert [s.label for s in series] == ["a/r", "b/r"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read results file"),
        (
            b'{"kind": "header", "settings": {}}\nnot json at all\n{"kind": "point"}\n',
            "line 2: not a JSON record",
        ),
        (b'{"kind": "header", "settings": {}}\n', "holds no point records"),
        (b'{"kind": "point", "index": 3}\n', "malformed point record"),
    ],
)
def test_bad_results_files_give_one_line_and_exit_2(
    results: dict[str, Path], tmp_path: Path, content: bytes | None, fragment: str
) -> None:
    bad = tmp_path / "bad.jsonl"
    if content is not None:
        bad.write_bytes(content)
    out = tmp_path / "report"
    result = invoke("report", results["plain"], bad, "-o", out)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert fragment in result.output, result.output
    assert not out.exists()  # nothing half written


def test_load_series_raises_results_file_error_for_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ResultsFileError, match="is a directory"):
        load_series([tmp_path])


# --- heat map --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gap_slice(shipped_pair_paths: tuple[Path, Path]) -> GapSlice:
    pair = load_pair(*shipped_pair_paths)
    x0 = np.load(shipped_pair_paths[0].parent / "sample.npz")["x"][POINT]
    return compute_gap_slice(
        pair, x0, 0.05, index=POINT, resolution=21, pgd=PGDConfig(steps=20, restarts=1), seed=3
    )


def independent_gap(paths: tuple[Path, Path], x: np.ndarray) -> np.ndarray:
    """``||softmax(teacher(x)) - softmax(student(x))||_inf`` from the two model files, without the paired graph."""
    probs = []
    for path in paths:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (z,) = session.run(None, {session.get_inputs()[0].name: x.reshape(len(x), -1).astype(np.float32)})
        e = np.exp(z.astype(np.float64) - z.max(axis=1, keepdims=True))
        probs.append(e / e.sum(axis=1, keepdims=True))
    return np.abs(probs[0] - probs[1]).max(axis=1)


def test_heatmap_grid_matches_onnxruntime(gap_slice: GapSlice, shipped_pair_paths: tuple[Path, Path]) -> None:
    s = gap_slice
    x0 = s.x0.astype(np.float64)
    rng = np.random.default_rng(0)
    cells = [(s.centre, s.centre), (0, 0), (20, 20), (0, 20), *map(tuple, rng.integers(0, 21, (5, 2)))]
    xs = []
    for k, col in cells:
        a, b = s.offsets[col], s.offsets[k]  # rows are b, columns a
        x = x0 + a * s.u + b * s.v
        x = np.clip(x, np.maximum(x0 - s.eps, 0.0), np.minimum(x0 + s.eps, 1.0)).astype(np.float32)
        assert np.abs(x - x0).max() <= s.eps + 1e-6  # inside the ball
        xs.append(x)
    expected = independent_gap(shipped_pair_paths, np.stack(xs))
    got = np.array([s.gap[k, col] for k, col in cells])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_heatmap_is_centred_on_x0_and_follows_the_witness(
    gap_slice: GapSlice, shipped_pair_paths: tuple[Path, Path]
) -> None:
    s = gap_slice
    c = s.centre
    assert s.offsets[c] == 0.0 and s.offsets[0] == -s.eps and s.offsets[-1] == s.eps
    np.testing.assert_array_equal(s.point(0.0, 0.0), s.x0)
    assert s.gap[c, c] == pytest.approx(independent_gap(shipped_pair_paths, s.x0[None])[0], abs=1e-5)
    # auto directions: u is the sign of the witness's displacement, v a sign vector orthogonal to it
    np.testing.assert_array_equal(s.u, np.sign(s.witness.astype(np.float64) - s.x0))
    assert set(np.unique(s.v)) == {-1.0, 1.0}
    assert abs(float(s.u.reshape(-1) @ s.v.reshape(-1))) <= 1.0
    assert s.emp_lb == pytest.approx(independent_gap(shipped_pair_paths, s.witness[None])[0], abs=1e-5)
    assert s.gap.max() > s.gap[c, c]  # along the witness's direction the gap grows


def test_heatmap_stays_under_the_points_crown_bound(gap_slice: GapSlice, results: dict[str, Path]) -> None:
    """Soundness: every grid point is in the ball, so the map's maximum is at most the point's FaithUB that
    `certify` computed with CROWN (and the slice's own CROWN bound is that same number)."""
    _, points = read_results(results["plain"])
    (record,) = [p for p in points if p.index == POINT and p.eps == 0.05]
    crown = record.bounds["crown"]
    assert gap_slice.gap.max() <= crown
    assert gap_slice.faith_ub == pytest.approx(crown, abs=1e-9)
    assert gap_slice.emp_lb <= crown


def test_heatmap_command_writes_a_png(shipped_pair_paths: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "maps" / "gap.png"
    args = ["--index", str(POINT), "--eps", "0.05", "--resolution", "11", "--attack-steps", "5"]
    result = invoke("heatmap", *shipped_pair_paths, *args, "--dims", "300,400", "-o", out)
    assert result.exit_code == 0, result.output
    assert "EmpLB" in result.output and "CROWN FaithUB" in result.output
    assert_png(out)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--index", "200", "--eps", "0.05"], "past the end of the data"),
        (["--index", "0", "--eps", "0.05", "--resolution", "10"], "must be odd"),
        (["--index", "0", "--eps", "0.05", "--dims", "3,3"], "two different coordinates"),
        (["--index", "0", "--eps", "0.05", "--dims", "0,784"], "out of range"),
    ],
)
def test_heatmap_bad_input_exits_2(
    shipped_pair_paths: tuple[Path, Path], tmp_path: Path, extra: list[str], fragment: str
) -> None:
    result = invoke("heatmap", *shipped_pair_paths, *extra, "-o", tmp_path / "gap.png")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and fragment in result.output, result.output
    assert not (tmp_path / "gap.png").exists()


def test_heatmap_without_data_or_sample_exits_2(
    shipped_pair_paths: tuple[Path, Path], tmp_path: Path
) -> None:
    teacher = tmp_path / "teacher.onnx"  # a folder without sample.npz
    shutil.copy(shipped_pair_paths[0], teacher)
    result = invoke(
        "heatmap", teacher, shipped_pair_paths[1], "--index", "0", "--eps", "0.05", "-o", tmp_path / "g.png"
    )
    assert result.exit_code == 2 and "no sample.npz beside" in result.output, result.output
