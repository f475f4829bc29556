"""``faithverify export-robustness``: one classifier's local robustness on labelled points as a VNN-COMP suite."""

from __future__ import annotations

from pathlib import Path

import click

from faithverify.cli_support import (
    data_options,
    domain_option,
    eps_list_option,
    output_option,
    reports_errors,
    timeout_option,
)


@click.command("export-robustness")
@click.argument("model", type=click.Path(path_type=Path))
@output_option(
    "Folder of the suite (created if missing; files of the same names are replaced).", kind="folder"
)
@eps_list_option("L-inf radius of the input box; repeat for several. One instance per point and eps.")
@data_options("Labelled points to export", count="Export only the first N points")
@domain_option("every box is clipped to it.")
@timeout_option("Seconds per instance, written in instances.csv.")
@reports_errors
def export_robustness(
    model: Path,
    output: Path,
    eps_list: tuple[float, ...],
    data_source: str | None,
    data_root: Path | None,
    split: str,
    count: int | None,
    start: int,
    domain: tuple[float, float],
    timeout: float,
) -> None:
    """Write MODEL's local robustness on labelled points as VNN-LIB 1.0 files with a VNN-COMP instances.csv.

    For every point x0 with label y and every eps the question is: does some x in [x0 - eps, x0 + eps] ∩ domain
    give another class a logit at least y's? `sat` is an adversarial example, `unsat` certifies the point.
    Points the model already misclassifies are exported too (their instances are `sat`).

    \b
    OUTPUT/instances.csv    onnx,vnnlib,timeout rows (VNN-COMP; paths relative to the CSV)
    OUTPUT/onnx/model.onnx  the logits model with a batch dimension of 1
    OUTPUT/vnnlib/          robust_<index>_eps_<eps>.vnnlib: unsafe iff some Y_j >= Y_y (j != y)

    \b
    Example:
      faithverify export-robustness T.onnx --data mnist --n 20 --eps 0.03 -o suite/
      faithverify bench suite/instances.csv --out results.csv
    """
    from faithverify.data import sample_beside, select_points
    from faithverify.paths import check_writable_dir
    from faithverify.vnn.robustness_export import INSTANCES, MODEL, export_robustness_suite, load_classifier

    check_writable_dir(output, "-o")
    source = sample_beside(model, data_source)
    classifier = load_classifier(model, domain=domain)
    points = select_points(
        source,
        classifier.input_shape,
        split=split,
        data_root=data_root,
        start=start,
        count=count,
        domain=domain,
        num_classes=classifier.num_classes,
    )
    suite = export_robustness_suite(
        classifier, points.x, points.labels, points.indices, eps_list, output, domain=domain, timeout=timeout
    )
    wrong = len(suite.misclassified)
    click.echo(
        f"wrote {len(suite.instances)} instances ({suite.n_points} points x {suite.n_eps} eps) to {output}/: "
        f"{output / INSTANCES} on {output / MODEL}; {wrong} of {suite.n_points} points misclassified at x0 "
        f"(their instances are sat)"
    )
