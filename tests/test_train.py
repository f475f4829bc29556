"""Training package: losses against their formulas, PGD, the loop (incl. resume) and ONNX export.

Everything runs on small synthetic data, so the file needs no datasets and stays well under 30 s.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import Tensor, nn

from faithverify.data import Dataset
from faithverify.train import (
    ARCHITECTURES,
    AdversarialTraining,
    ExportCheckError,
    FaithfulDistillation,
    MLPSpec,
    TrainConfig,
    TrainingAttack,
    accuracy,
    build,
    build_mlp,
    check_onnx,
    export_onnx,
    get_spec,
    pgd_cross_entropy,
    pgd_teacher_student_kl,
    robust_accuracy,
    train,
)
from faithverify.train.attacks import project
from faithverify.train.losses import (
    cross_entropy,
    distillation_kl,
    faithful_distillation_loss,
    kl_teacher_student,
)
from faithverify.train.methods import _ramped

# --- Independent reference computations (float64 numpy, straight from the formulas) ---------------


def np_softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    e = np.exp(z / temperature - (z / temperature).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_kl(zt: np.ndarray, zs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    p, q = np_softmax(zt, temperature), np_softmax(zs, temperature)
    return (p * np.log(p / q)).sum(axis=1)


@pytest.fixture
def logits() -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    zt, zs, zt_adv, zs_adv = (torch.randn(5, 4, generator=g, dtype=torch.float64) * 3 for _ in range(4))
    y = torch.tensor([0, 3, 1, 2, 3])
    return zt, zs, zt_adv, zs_adv, y


# --- Losses ---------------------------------------------------------------------------------------


def test_cross_entropy_formula(logits: tuple[Tensor, ...]) -> None:
    z, y = logits[0], logits[4]
    expected = np.mean([-math.log(np_softmax(z.numpy())[n, int(y[n])]) for n in range(len(y))])
    assert float(cross_entropy(z, y)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kl_formula(logits: tuple[Tensor, ...], temperature: float) -> None:
    zt, zs = logits[0], logits[1]
    expected = np_kl(zt.numpy(), zs.numpy(), temperature)
    got = kl_teacher_student(zt, zs, temperature, reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    assert float(kl_teacher_student(zt, zs, temperature)) == pytest.approx(expected.mean(), rel=1e-10)
    assert float(kl_teacher_student(zt, zt)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        kl_teacher_student(zt, zs, reduction="sum")


def test_distillation_kl_scales_by_t_squared(logits: tuple[Tensor, ...]) -> None:
    zt, zs = logits[0], logits[1]
    expected = 16.0 * np_kl(zt.numpy(), zs.numpy(), 4.0).mean()
    assert float(distillation_kl(zt, zs, 4.0)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(("alpha", "temperature"), [(0.5, 1.0), (0.8, 3.0), (0.0, 2.0), (1.0, 1.0)])
def test_faithful_distillation_formula(logits: tuple[Tensor, ...], alpha: float, temperature: float) -> None:
    zt, zs, zt_adv, zs_adv, _ = (t.numpy() for t in logits)
    expected = (1 - alpha) * temperature**2 * np_kl(zt, zs, temperature).mean() + alpha * np_kl(
        zt_adv, zs_adv
    ).mean()
    got = faithful_distillation_loss(*logits[:4], alpha=alpha, temperature=temperature)
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_faithful_distillation_rejects_bad_alpha(logits: tuple[Tensor, ...]) -> None:
    with pytest.raises(ValueError, match="alpha"):
        faithful_distillation_loss(*logits[:4], alpha=1.5)


# --- PGD ------------------------------------------------------------------------------------------


def test_project_is_ball_intersected_with_domain() -> None:
    x0 = torch.tensor([[0.0, 0.5, 0.95]])
    x = torch.tensor([[-0.3, 0.9, 1.2]])
    torch.testing.assert_close(project(x, x0, 0.1, (0.0, 1.0)), torch.tensor([[0.0, 0.6, 1.0]]))


def random_pair(d: int = 12, c: int = 4) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(3)
    return build_mlp(MLPSpec(d, (16, 16), c)), build_mlp(MLPSpec(d, (8,), c))


def test_fd_inner_maximisation_increases_kl() -> None:
    teacher, student = random_pair()
    x0 = torch.rand(64, 12, generator=torch.Generator().manual_seed(1))
    cfg = TrainingAttack(eps=0.1, step=0.02, steps=20)
    x_adv = pgd_teacher_student_kl(teacher, student, x0, cfg, torch.Generator().manual_seed(2))
    assert (x_adv - x0).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    with torch.no_grad():
        kl_clean = kl_teacher_student(teacher(x0), student(x0), reduction="none")
        kl_adv = kl_teacher_student(teacher(x_adv), student(x_adv), reduction="none")
    assert kl_adv.mean() > 1.5 * kl_clean.mean()
    assert (kl_adv >= kl_clean - 1e-6).float().mean() > 0.9
    # Only the input was differentiated: the networks' parameters hold no gradient.
    assert all(p.grad is None for p in [*teacher.parameters(), *student.parameters()])


def test_pgd_cross_entropy_increases_loss() -> None:
    model, _ = random_pair()
    x0 = torch.rand(64, 12, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(5))
    cfg = TrainingAttack(eps=0.05, step=0.01, steps=10, random_start=False)
    x_adv = pgd_cross_entropy(model, x0, y, cfg)
    with torch.no_grad():
        assert cross_entropy(model(x_adv), y) > cross_entropy(model(x0), y)
    assert robust_accuracy(model, x0, y, 0.05) <= accuracy(model, x0, y)


def test_evaluation_attack_settings() -> None:
    cfg = TrainingAttack.evaluation(0.1)
    assert (cfg.eps, cfg.step, cfg.steps) == (0.1, pytest.approx(0.005), 50)


def test_card_and_certify_share_one_robustness() -> None:
    """A model card's robust accuracy and certify's robust flags are the same computation."""
    from faithverify.attack import input_box, robustness_attacks

    model, other = random_pair()
    x0 = torch.rand(64, 12, generator=torch.Generator().manual_seed(2))
    y = model(x0).argmax(1)
    y[::3] = (y[::3] + 1) % 4  # some points wrong at x0 already
    lower, upper = input_box(x0.numpy(), 0.1)
    flags = robustness_attacks(model, other, x0.numpy(), y.numpy(), lower, upper, 0.1, steps=50, seed=0)
    assert robust_accuracy(model, x0, y, 0.1, seed=0) == pytest.approx(flags.teacher_robust.mean())


def test_eps_warmup_ramps_linearly() -> None:
    attack = TrainingAttack(eps=0.2, step=0.05, steps=10)
    half = _ramped(attack, warmup=0.4, progress=0.2)
    assert (half.eps, half.step) == (pytest.approx(0.1), pytest.approx(0.025))
    assert _ramped(attack, warmup=0.4, progress=0.5) == attack
    assert _ramped(attack, warmup=0.0, progress=0.0) == attack


# --- Architectures --------------------------------------------------------------------------------


def test_named_architectures() -> None:
    widths = {
        name: [m.out_features for m in build(name) if isinstance(m, nn.Linear)] for name in ARCHITECTURES
    }
    # The paper's Appendix A.1-A.2 and Table 3, written out here from the paper, not from the code.
    assert widths["mnist-teacher"] == [30] * 6 + [10]
    assert widths["mnist-student"] == [20] * 4 + [10]
    assert widths["fashion-mnist-teacher"] == [64, 32, 32, 32, 32, 16, 10]
    assert widths["fashion-mnist-student"] == [30, 30, 30, 30, 10]
    assert isinstance(build("mnist-teacher")[0], nn.Linear) and build("mnist-teacher")[0].in_features == 784
    assert get_spec("mnist-student").input_shape == (784,)
    with pytest.raises(ValueError, match="known: cifar10-student, cifar10-teacher, fashion-mnist-student"):
        get_spec("resnet")
    # CIFAR-10: conv(k3, s2) -> maxpool 2 -> conv(k3, s2, pad 1) -> conv(k3, s1) -> 32 x 2 x 2 = 128 features.
    for name, channels, hidden in (
        ("cifar10-teacher", (8, 16, 32), [128, 64]),
        ("cifar10-student", (6, 16, 32), [64, 32]),
    ):
        net = build(name)
        convs = [m for m in net if isinstance(m, nn.Conv2d)]
        assert [m.out_channels for m in convs] == list(channels)
        assert [(m.kernel_size, m.stride, m.padding) for m in convs] == [
            ((3, 3), (2, 2), (0, 0)),
            ((3, 3), (2, 2), (1, 1)),
            ((3, 3), (1, 1), (0, 0)),
        ]
        assert sum(isinstance(m, nn.MaxPool2d) for m in net) == 1
        assert widths[name] == [*hidden, 10]
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
        assert next(m.in_features for m in net if isinstance(m, nn.Linear)) == 128


def test_a_folded_normalisation_is_the_same_function_on_pixels(tmp_path: Path) -> None:
    from faithverify.train.architectures import InputNormalisation, fold_normalisation, with_normalisation
    from faithverify.train.export import check_onnx, export_onnx

    torch.manual_seed(0)
    model = with_normalisation(build("mnist-student"), (0.1307, 0.3081))
    assert isinstance(model[0], InputNormalisation)
    folded = fold_normalisation(model)
    assert isinstance(folded[0], nn.Linear) and len(folded) == len(model) - 1
    x = torch.rand(64, 784)
    with torch.no_grad():
        expected = (model.double()(x.double())).float()
        model.float()
        assert torch.allclose(folded(x), expected, atol=1e-5)
    # the exported graph is the plain MLP (no Sub/Div), and it matches the normalised network under onnxruntime
    path = export_onnx(folded, (784,), tmp_path / "m.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Gemm" in ops and not ops & {"Sub", "Div"}
    assert check_onnx(model, path, input_shape=(784,)) < 1e-4
    assert fold_normalisation(build("mnist-student"))[0].in_features == 784  # nothing to fold: unchanged
    with pytest.raises(ValueError, match="std must be positive"):
        InputNormalisation(0.1, 0.0)


def test_a_normalisation_folds_into_an_unpadded_first_convolution() -> None:
    from faithverify.train.architectures import fold_normalisation, with_normalisation

    torch.manual_seed(1)
    model = with_normalisation(build("cifar10-teacher"), (0.4734, 0.2516)).eval()
    folded = fold_normalisation(model)
    assert isinstance(folded[0], nn.Conv2d) and len(folded) == len(model) - 1
    x = torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)
    padded = with_normalisation(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten()), (0.5, 0.25))
    with pytest.raises(ValueError, match="without padding"):
        fold_normalisation(padded)


# --- A short end-to-end run on separable synthetic data -------------------------------------------


def blobs(n: int, seed: int, d: int = 20, classes: int = 3) -> Dataset:
    """Class k: pixels of block k near 0.8, the rest near 0.2 (noise +-0.1), so a 0.1-ball never crosses classes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    x = 0.2 + rng.uniform(-0.1, 0.1, size=(n, d))
    block = d // classes
    for k in range(classes):
        x[y == k, k * block : (k + 1) * block] += 0.6
    return Dataset(x.astype(np.float32), y.astype(np.int64), name=f"blobs-{seed}")


SPEC = MLPSpec(20, (16, 16), 3)
# One thread: these nets are tiny, and a second thread only waits (or, on a busy machine, spins for seconds).
FAST = TrainConfig(epochs=6, batch_size=32, lr=0.05, seed=0, num_threads=1)


def test_short_training_run_teacher_then_fd_student_then_export(tmp_path: Path) -> None:
    train_set, test_set = blobs(1200, seed=0), blobs(300, seed=1)
    x_test, y_test = torch.from_numpy(test_set.x), torch.from_numpy(test_set.y)
    attack = TrainingAttack(eps=0.1, step=0.025, steps=5)

    torch.manual_seed(0)
    teacher = build_mlp(SPEC)
    before = accuracy(teacher, x_test, y_test)
    result = train(teacher, AdversarialTraining(attack), train_set, test_set, FAST, progress_bar=False)
    assert len(result.history) == FAST.epochs and 1 <= result.best_epoch <= FAST.epochs  # 6 x 38 = 228 steps
    assert result.best_test_accuracy == accuracy(teacher, x_test, y_test) > max(0.95, before + 0.3)
    assert robust_accuracy(teacher, x_test, y_test, 0.1) > 0.9

    student = build_mlp(MLPSpec(20, (8,), 3))
    train(student, FaithfulDistillation(teacher, attack), train_set, test_set, FAST, progress_bar=False)
    assert accuracy(student, x_test, y_test) > 0.95
    assert all(not p.requires_grad for p in teacher.parameters())

    path = export_onnx(student, SPEC.input_shape, tmp_path / "student.onnx", metadata={"arch": "tiny"})
    assert check_onnx(student, path, inputs=test_set.x) <= 1e-5
    assert check_onnx(student, path, input_shape=SPEC.input_shape, n=7) <= 1e-5
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert proto.graph.input[0].name == "x" and dims[0].dim_param and dims[1].dim_value == 20
    assert {p.key: p.value for p in proto.metadata_props} == {"arch": "tiny"}
    assert [n.op_type for n in proto.graph.node] == ["Gemm", "Relu", "Gemm"]

    with torch.no_grad():
        student[0].bias += 1.0  # the file no longer matches the module
    with pytest.raises(ExportCheckError, match="differs"):
        check_onnx(student, path, inputs=test_set.x)


def test_resume_after_interruption_gives_the_same_weights(tmp_path: Path) -> None:
    train_set, test_set = blobs(200, seed=0), blobs(100, seed=1)
    cfg = dataclasses.replace(FAST, epochs=3)
    method = AdversarialTraining(TrainingAttack(eps=0.1, step=0.025, steps=3))

    torch.manual_seed(0)
    reference = build_mlp(SPEC)
    train(reference, method, train_set, test_set, cfg, progress_bar=False)

    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)

    @dataclasses.dataclass
    class DiesInEpoch2:
        """The same method, but the run is killed a few steps into epoch 2 (after epoch 1's checkpoint)."""

        calls: int = 0

        def __call__(
            self, model: nn.Module, x: Tensor, y: Tensor, progress: float, g: torch.Generator
        ) -> Tensor:
            self.calls += 1
            if self.calls > steps_per_epoch + 2:
                raise KeyboardInterrupt
            return method(model, x, y, progress, g)

        def describe(self) -> dict[str, object]:
            return method.describe()

    ckpt = tmp_path / "run.pt.ckpt"
    torch.manual_seed(0)
    model = build_mlp(SPEC)
    with pytest.raises(KeyboardInterrupt):
        train(model, DiesInEpoch2(), train_set, test_set, cfg, checkpoint=ckpt, progress_bar=False)
    assert torch.load(ckpt, weights_only=False)["epoch"] == 1

    torch.manual_seed(123)  # resuming must not depend on the caller's RNG or initial weights
    resumed = build_mlp(SPEC)
    result = train(resumed, method, train_set, test_set, cfg, checkpoint=ckpt, progress_bar=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    with pytest.raises(ValueError, match="written with config"):
        train(build_mlp(SPEC), method, train_set, test_set, dataclasses.replace(cfg, lr=0.1), checkpoint=ckpt)
    other = AdversarialTraining(TrainingAttack(eps=0.2, step=0.05, steps=3))
    with pytest.raises(ValueError, match="written with config"):
        train(build_mlp(SPEC), other, train_set, test_set, cfg, checkpoint=ckpt)


def test_best_epoch_selection_respects_select_from_epoch() -> None:
    train_set, test_set = blobs(200, seed=0), blobs(100, seed=1)
    cfg = dataclasses.replace(FAST, epochs=3, select_from_epoch=3)
    torch.manual_seed(0)
    result = train(
        build_mlp(SPEC),
        AdversarialTraining(TrainingAttack(0.0, 0.0, 0)),
        train_set,
        test_set,
        cfg,
        progress_bar=False,
    )
    assert result.best_epoch == 3


def test_early_stopping_with_patience_and_a_rerun_only_reloads(tmp_path: Path) -> None:
    train_set, test_set = blobs(200, seed=0), blobs(100, seed=1)
    # lr 0: the test accuracy never improves after epoch 1, so patience 2 ends the run after epoch 3.
    cfg = dataclasses.replace(FAST, epochs=10, lr=0.0, patience=2)
    method = AdversarialTraining(TrainingAttack(0.0, 0.0, 0))
    torch.manual_seed(0)
    result = train(
        build_mlp(SPEC), method, train_set, test_set, cfg, checkpoint=tmp_path / "c.ckpt", progress_bar=False
    )
    assert result.best_epoch == 1 and len(result.history) == 3
    again = train(
        build_mlp(SPEC), method, train_set, test_set, cfg, checkpoint=tmp_path / "c.ckpt", progress_bar=False
    )
    assert len(again.history) == 3 and again.best_epoch == 1
    # Without patience the same run goes the full length.
    full = train(
        build_mlp(SPEC),
        method,
        train_set,
        test_set,
        dataclasses.replace(cfg, patience=None),
        progress_bar=False,
    )
    assert len(full.history) == 10


def test_a_snapshot_exports_an_unfinished_run_without_training(tmp_path: Path) -> None:
    """An interrupted run's checkpoint can be exported as it stands (the CIFAR-10 models ship that way while
    their runs go on); the result says it is unfinished, and a later run resumes where it stopped."""
    train_set, test_set = blobs(200, seed=0), blobs(100, seed=1)
    cfg = dataclasses.replace(FAST, epochs=4)
    calls = {"n": 0}
    inner = AdversarialTraining(TrainingAttack(0.0, 0.0, 0))

    def interrupted(*args: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 2 * 7:  # 7 batches of 32 per epoch: stop inside the third epoch
            raise KeyboardInterrupt
        return inner(*args)  # type: ignore[arg-type]

    method = type("Interrupted", (), {"__call__": staticmethod(interrupted), "describe": inner.describe})()
    ckpt = tmp_path / "c.ckpt"
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train(build_mlp(SPEC), method, train_set, test_set, cfg, checkpoint=ckpt, progress_bar=False)
    model = build_mlp(SPEC)
    snap = train(model, inner, train_set, test_set, cfg, checkpoint=ckpt, progress_bar=False, snapshot=True)
    assert snap.epochs_done == 2 and not snap.finished and 1 <= snap.best_epoch <= 2
    assert (
        accuracy(model, torch.from_numpy(test_set.x), torch.from_numpy(test_set.y)) == snap.best_test_accuracy
    )
    rest = train(build_mlp(SPEC), inner, train_set, test_set, cfg, checkpoint=ckpt, progress_bar=False)
    assert rest.epochs_done == 4 and rest.finished
    with pytest.raises(ValueError, match="no checkpoint"):
        train(
            build_mlp(SPEC), inner, train_set, test_set, cfg, checkpoint=tmp_path / "none.ckpt", snapshot=True
        )
