"""``faithverify recipes | train-teacher | distill``: train the models that ``certify`` verifies.

Each command starts from a named recipe (``faithverify recipes`` lists them) and overrides the fields given on
the command line, so that the defaults are the settings of the shipped models.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import click

from faithverify.cli_support import FiniteFloatRange, compose, output_option, quiet_option, reports_errors
from faithverify.data import KNOWN_DATASETS
from faithverify.train.recipes import RECIPES, STUDENT_METHODS, TEACHER, Recipe, get_recipe


def _recipe(name: str | None, data: str, method: str, overrides: dict[str, Any]) -> Recipe:
    """The named recipe (default ``<data>/<method>`` for a known dataset) with the given fields replaced."""
    if name is None:
        if data not in KNOWN_DATASETS:
            raise click.UsageError(
                f"--data {data} is not one of {', '.join(KNOWN_DATASETS)}: name the recipe to start from with "
                "--recipe (see `faithverify recipes`)"
            )
        name = f"{data}/{method}"
    try:
        recipe = get_recipe(name)
        if recipe.method != method:
            raise click.UsageError(f"recipe {name} trains with method {recipe.method}, not {method}")
        return recipe.with_overrides(**overrides)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _command_line() -> str:
    """The command as the user could retype it: the options that were given, in canonical form."""
    ctx = click.get_current_context()
    words = ["faithverify", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if not isinstance(param, click.Option) or value is None:
            continue
        if ctx.get_parameter_source(param.name or "") is click.core.ParameterSource.DEFAULT:
            continue
        flag = max(param.opts, key=len)
        if param.is_flag:
            words += [flag] if value else []
        else:
            words += [flag, shlex.quote(str(value))]
    return " ".join(words)


def _training_options(func: Any) -> Any:
    """Options shared by train-teacher and distill (each overrides one recipe field when given)."""
    options = [
        click.option("--recipe", default=None, help="Start from this recipe (default: <data>/<method>)."),
        click.option("--arch", default=None, help="Architecture (default: the recipe's)."),
        click.option("--epochs", type=click.IntRange(min=1), default=None, help="Number of epochs."),
        click.option(
            "--adv-eps",
            type=FiniteFloatRange(min=0),
            default=None,
            help="Training radius (L-inf), in the recipe's units (`faithverify recipes`).",
        ),
        click.option("--pgd-steps", type=click.IntRange(min=1), default=None, help="PGD steps in training."),
        click.option(
            "--lr", type=FiniteFloatRange(min=0, min_open=True), default=None, help="Learning rate."
        ),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size."),
        click.option("--seed", type=int, default=None, help="Seed of initialisation, order and attacks."),
        click.option(
            "--patience",
            type=click.IntRange(min=1),
            default=None,
            help="Stop after this many epochs without a better clean test accuracy (default: run every epoch).",
        ),
        click.option(
            "--data-root",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Holds mnist/, fashion-mnist/, cifar10/ (default: $FAITHVERIFY_DATA_ROOT).",
        ),
        click.option(
            "--checkpoint-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=Path("runs"),
            show_default=True,
            help="Per-epoch state; rerunning the same command resumes from it.",
        ),
        click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True),
        click.option(
            "--snapshot",
            is_flag=True,
            help="Export the best state of this run's checkpoint as it stands, without training further (to "
            "ship an unfinished run; its card says how many epochs it had).",
        ),
        quiet_option("No progress bars."),
        output_option("ONNX file.", kind="file"),
    ]
    return compose(*options)(func)


def _train(recipe: Recipe, output: Path, teacher: Path | None, opts: dict[str, Any]) -> None:
    from faithverify.train.run import card_eps_text, card_paths, train_recipe

    if teacher is not None:  # the teacher before the data: a wrong path is named before any data is sought
        from faithverify.onnx_io import load_model

        load_model(teacher)

    data = opts["data"]
    card = train_recipe(
        recipe,
        output,
        teacher_path=teacher,
        data_root=opts["data_root"],
        data=data if data not in KNOWN_DATASETS else None,
        checkpoint_dir=opts["checkpoint_dir"],
        progress=not opts["quiet"],
        threads=opts["threads"],
        command=_command_line(),
        snapshot=opts["snapshot"],
    )
    robust = ", ".join(
        f"{100 * v:.2f}% at eps {card_eps_text(e, recipe)}" for e, v in card.robust_accuracy.items()
    )
    click.echo(
        f"wrote {output} and {card_paths(output)[1].name}: clean accuracy {100 * card.clean_accuracy:.2f}%"
        + (f", PGD-50 robust {robust}" if robust else "")
        + (
            f", agreement with the teacher {100 * card.teacher_agreement:.2f}%"
            if card.teacher_agreement is not None
            else ""
        )
    )


def _overrides(opts: dict[str, Any]) -> dict[str, Any]:
    return {
        "arch": opts["arch"],
        "epochs": opts["epochs"],
        "adv_eps": opts["adv_eps"],
        # A new radius takes the default step eps / 4 (a recipe's fixed step belongs to its own eps).
        "pgd_step": opts["adv_eps"] / 4 if opts["adv_eps"] is not None else None,
        "pgd_steps": opts["pgd_steps"],
        "lr": opts["lr"],
        "batch_size": opts["batch_size"],
        "seed": opts["seed"],
        "patience": opts["patience"],
    }


@click.command("recipes")
@click.option("--json", "as_json", is_flag=True, help="Print every field of every recipe as JSON.")
def recipes(as_json: bool) -> None:
    """List the named training recipes (the settings of the shipped models)."""
    import json

    if as_json:
        click.echo(json.dumps({name: asdict(r) for name, r in RECIPES.items()}, indent=2))
        return
    for name, r in RECIPES.items():
        origin = f"deviates: {r.deviation}" if r.deviation else "paper"
        click.echo(f"{name:22} {r.arch:22} {r.epochs:3d} epochs  [{origin}]  {r.describe_method()}")
    click.echo(
        f"\nFields (override on the command line or see --json): {', '.join(f.name for f in fields(Recipe))}"
    )


@click.command("train-teacher")
@click.option("--data", default="mnist", show_default=True, help="Dataset name, directory or .npz.")
@_training_options
@reports_errors
def train_teacher(**opts: Any) -> None:
    """Train a robust teacher by PGD adversarial training and export it as ONNX with a model card.

    Example: faithverify train-teacher --data mnist --adv-eps 0.2 -o teacher.onnx
    """
    recipe = _recipe(opts["recipe"], opts["data"], TEACHER, _overrides(opts))
    _train(recipe, opts["output"], None, opts)


@click.command("distill")
@click.option("--method", type=click.Choice(STUDENT_METHODS), required=True, help="Distillation method.")
@click.option(
    "--teacher", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Teacher ONNX file."
)
@click.option("--data", default="mnist", show_default=True, help="Dataset name, directory or .npz.")
@click.option("--alpha", type=FiniteFloatRange(0, 1), default=None, help="Weight of the distillation term.")
@click.option("--temperature", type=FiniteFloatRange(min=0, min_open=True), default=None, help="Softmax T.")
@_training_options
@reports_errors
def distill(**opts: Any) -> None:
    """Distil a student from an ONNX teacher (sd, ard, rslad or fd) and export it with a model card.

    Example: faithverify distill --method fd --teacher teacher.onnx --data mnist -o student-fd.onnx
    """
    overrides = {**_overrides(opts), "alpha": opts["alpha"], "temperature": opts["temperature"]}
    recipe = _recipe(opts["recipe"], opts["data"], opts["method"], overrides)
    _train(recipe, opts["output"], opts["teacher"], opts)
