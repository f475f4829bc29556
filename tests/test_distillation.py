"""Distillation methods (SD, ARD, RSLAD, FD), recipes, and the train-teacher / distill commands.

Losses are checked against float64 numpy written straight from each paper's formula; the methods are checked for
who sees the perturbed input; a short real run on an MNIST slice goes through the CLI to ONNX files that load
back and match onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import Tensor, nn

from faithverify.cli import main
from faithverify.data import Dataset, load_dataset, save_npz_sample
from faithverify.onnx_io import load_model, run_onnxruntime
from faithverify.train import MLPSpec, TrainingAttack, build, build_mlp, get_spec
from faithverify.train.attacks import pgd_student_soft_label_kl
from faithverify.train.losses import ard_loss, kl_teacher_student, rslad_loss, standard_distillation_loss
from faithverify.train.methods import (
    AdversariallyRobustDistillation,
    FaithfulDistillation,
    RobustSoftLabelDistillation,
    StandardDistillation,
)
from faithverify.train.recipes import RECIPES, STUDENT_METHODS, get_recipe
from faithverify.train.run import ModelCard, card_paths
from tests.test_train import np_kl, np_softmax


@pytest.fixture
def logits() -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(7)
    zt, zs, zs_adv, _ = (torch.randn(6, 5, generator=g, dtype=torch.float64) * 3 for _ in range(4))
    y = torch.tensor([0, 4, 1, 2, 3, 3])
    return zt, zs, zs_adv, y, torch.zeros(())


def np_ce(z: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(-np.log(np_softmax(z)[np.arange(len(y)), y])))


@pytest.mark.parametrize(("alpha", "temperature"), [(0.9, 4.0), (0.0, 1.0), (1.0, 2.0), (0.3, 1.0)])
def test_standard_distillation_formula(logits: tuple[Tensor, ...], alpha: float, temperature: float) -> None:
    zt, zs, _, y, _ = logits
    expected = (1 - alpha) * np_ce(zs.numpy(), y.numpy()) + alpha * temperature**2 * np_kl(
        zt.numpy(), zs.numpy(), temperature
    ).mean()
    got = standard_distillation_loss(zs, zt, y, alpha, temperature)
    assert float(got) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(("alpha", "temperature"), [(0.9, 4.0), (1.0, 30.0), (0.5, 1.0)])
def test_ard_formula(logits: tuple[Tensor, ...], alpha: float, temperature: float) -> None:
    zt, zs, zs_adv, y, _ = logits
    # Goldblum et al., eq. 4: alpha T^2 KL(t(x)/T || s(x')/T) + (1 - alpha) CE(s(x), y).
    expected = alpha * temperature**2 * np_kl(zt.numpy(), zs_adv.numpy(), temperature).mean() + (
        1 - alpha
    ) * np_ce(zs.numpy(), y.numpy())
    got = ard_loss(zs_adv, zt, zs, y, alpha, temperature)
    assert float(got) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("weight", [5 / 6, 0.0, 1.0])
def test_rslad_formula(logits: tuple[Tensor, ...], weight: float) -> None:
    zt, zs, zs_adv, _, _ = logits
    # Zi et al., eq. 7: 5/6 KL(t(x) || s(x')) + 1/6 KL(t(x) || s(x)), no hard labels.
    expected = (
        weight * np_kl(zt.numpy(), zs_adv.numpy()).mean()
        + (1 - weight) * np_kl(zt.numpy(), zs.numpy()).mean()
    )
    assert float(rslad_loss(zs_adv, zt, zs, weight)) == pytest.approx(expected, rel=1e-10)


def test_losses_reject_weights_outside_zero_one(logits: tuple[Tensor, ...]) -> None:
    zt, zs, zs_adv, y, _ = logits
    with pytest.raises(ValueError, match="alpha"):
        standard_distillation_loss(zs, zt, y, 1.2, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        ard_loss(zs_adv, zt, zs, y, -0.1, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        rslad_loss(zs_adv, zt, zs, 2.0)


class RecordingTeacher(nn.Module):
    """A teacher that remembers every input it was called with."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x.detach().clone())
        return self.net(x)


def _nets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(5)
    return build_mlp(MLPSpec(12, (16, 16), 4)), build_mlp(MLPSpec(12, (8,), 4))


ATTACK = TrainingAttack(eps=0.1, step=0.02, steps=5)


@pytest.mark.parametrize(
    ("make", "teacher_sees_perturbed"),
    [
        (lambda t: StandardDistillation(t), False),
        (lambda t: AdversariallyRobustDistillation(t, ATTACK), False),
        (lambda t: RobustSoftLabelDistillation(t, ATTACK), False),
        (lambda t: FaithfulDistillation(t, ATTACK), True),
    ],
    ids=["sd", "ard", "rslad", "fd"],
)
def test_who_sees_the_perturbed_input(make: object, teacher_sees_perturbed: bool) -> None:
    net, student = _nets()
    teacher = RecordingTeacher(net)
    method = make(teacher)  # type: ignore[operator]
    x = torch.rand(16, 12, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(1))
    loss = method(student, x, y, 1.0, torch.Generator().manual_seed(2))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    perturbed = [not torch.equal(inp, x) for inp in teacher.inputs]
    # ARD and RSLAD keep the teacher at the clean x; FD moves both networks to the same x'.
    assert any(perturbed) == teacher_sees_perturbed


def test_rslad_inner_maximisation_increases_kl() -> None:
    teacher, student = _nets()
    x0 = torch.rand(64, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = teacher(x0)
    x_adv = pgd_student_soft_label_kl(
        student, target, x0, TrainingAttack(eps=0.1, step=0.02, steps=20), torch.Generator().manual_seed(2)
    )
    assert (x_adv - x0).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        clean = kl_teacher_student(target, student(x0), reduction="none")
        adv = kl_teacher_student(target, student(x_adv), reduction="none")
        noise = torch.rand(x0.shape, generator=torch.Generator().manual_seed(3)) * 0.2 - 0.1
        random = kl_teacher_student(target, student((x0 + noise).clamp(0, 1)), reduction="none")
    assert adv.mean() > 1.1 * clean.mean() and adv.mean() > 1.1 * random.mean()
    assert (adv >= clean).float().mean() > 0.9


# --- Recipes ---------------------------------------------------------------------------------------


def test_every_dataset_has_a_teacher_and_four_students() -> None:
    for dataset in ("mnist", "fashion-mnist", "cifar10"):
        teacher = get_recipe(f"{dataset}/teacher")
        assert teacher.is_teacher and teacher.adv_eps > 0
        for method in STUDENT_METHODS:
            student = get_recipe(f"{dataset}/{method}")
            assert student.dataset == dataset and not student.is_teacher
            assert student.adv_eps == (0.0 if method == "sd" else teacher.adv_eps)
            # The student fits the teacher's input and is smaller.
            assert get_spec(student.arch).input_shape == get_spec(teacher.arch).input_shape
            n_student = sum(p.numel() for p in build(student.arch).parameters())
            n_teacher = sum(p.numel() for p in build(teacher.arch).parameters())
            assert n_student < n_teacher


def test_recipe_methods_build_and_overrides_change_the_fingerprint() -> None:
    teacher, _ = _nets()
    for name, recipe in RECIPES.items():
        method = recipe.build_method(None if recipe.is_teacher else teacher)
        assert method.describe()["method"], name
    fd = get_recipe("mnist/fd")
    assert fd.with_overrides(epochs=None) == fd
    assert fd.with_overrides(epochs=3).fingerprint() != fd.fingerprint()
    with pytest.raises(ValueError, match="unknown recipe fields: colour"):
        fd.with_overrides(colour="red")
    with pytest.raises(ValueError, match="needs a teacher"):
        fd.build_method(None)
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("mnist/magic")


def test_cli_lists_recipes() -> None:
    result = CliRunner().invoke(main, ["recipes", "--json"])
    assert result.exit_code == 0
    listed = json.loads(result.output)
    assert set(listed) == set(RECIPES) and listed["cifar10/fd"]["arch"] == "cifar10-student"


def test_cli_refuses_unknown_data_without_a_recipe(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["train-teacher", "--data", str(tmp_path / "x.npz"), "-o", "t.onnx"])
    assert result.exit_code == 2 and "--recipe" in result.output


# --- A short real run through the CLI -------------------------------------------------------------


def _mnist_slice(data_root: Path, path: Path, n: int) -> Path:
    train = load_dataset("mnist", "train", data_root=data_root)
    save_npz_sample(Dataset(train.x[:n].reshape(n, -1), train.y[:n], "mnist-train-slice"), path, n)
    return path


def test_short_cli_run_teacher_then_rslad_student(data_root: Path, tmp_path: Path) -> None:
    data = str(_mnist_slice(data_root, tmp_path / "slice.npz", 3000))
    common = ["--data", data, "--epochs", "8", "--pgd-steps", "2", "--adv-eps", "0.05", "--threads", "1"]
    common += ["--quiet"]
    common += ["--checkpoint-dir", str(tmp_path / "runs")]
    teacher = tmp_path / "teacher.onnx"
    result = CliRunner().invoke(
        main, ["train-teacher", "--recipe", "mnist/teacher", *common, "-o", str(teacher)]
    )
    assert result.exit_code == 0, result.output
    student = tmp_path / "student.onnx"
    args = ["distill", "--method", "rslad", "--recipe", "mnist/rslad", "--teacher", str(teacher), *common]
    result = CliRunner().invoke(main, [*args, "-o", str(student)])
    assert result.exit_code == 0, result.output

    sample = load_dataset(data)
    chance = 0.1
    for path in (teacher, student):
        loaded = load_model(path)  # checks torch against onnxruntime
        assert loaded.max_abs_diff < 1e-4 and loaded.input_shape == (784,)
        card = ModelCard.read(card_paths(path)[0])
        predictions = run_onnxruntime(path, sample.x).argmax(1)
        # The card's accuracy is this file's accuracy on the test data, and training learned something.
        assert card.clean_accuracy == pytest.approx(float((predictions == sample.y).mean()), abs=1e-9)
        assert card.clean_accuracy > chance + 0.4
        assert card_paths(path)[1].read_text().startswith(f"# `{path.name}`")
    card = ModelCard.read(card_paths(student)[0])
    assert card.recipe["method"] == "rslad" and card.recipe["epochs"] == 8 and card.teacher == "teacher.onnx"
    assert card.teacher_agreement is not None and card.teacher_agreement > 0.6
    assert card.command.startswith("faithverify distill --method rslad") and "--epochs 8" in card.command

    # Rerunning the same command reloads the finished checkpoint instead of training again.
    before = student.read_bytes()
    result = CliRunner().invoke(main, [*args, "-o", str(student)])
    assert result.exit_code == 0 and student.read_bytes() == before


def test_distill_refuses_a_teacher_with_another_input_size(tmp_path: Path, data_root: Path) -> None:
    from tests.conftest import export_onnx, random_mlp

    teacher = export_onnx(random_mlp(0, [20, 8, 10]), torch.zeros(1, 20), tmp_path / "t.onnx")
    data = str(_mnist_slice(data_root, tmp_path / "slice.npz", 100))
    args = ["distill", "--method", "sd", "--recipe", "mnist/sd", "--teacher", str(teacher), "--data", data]
    result = CliRunner().invoke(main, [*args, "--epochs", "1", "--quiet", "-o", str(tmp_path / "s.onnx")])
    assert result.exit_code == 2 and "same number of values" in result.output
