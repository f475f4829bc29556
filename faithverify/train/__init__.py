"""Training of the shipped teacher/student pairs: architectures, PGD, losses, methods, the loop, ONNX export.

Typical use (``faithverify train-teacher`` and ``distill`` do this from a named recipe)::

    teacher = build("mnist-teacher")
    train(teacher, AdversarialTraining(PGDConfig(eps=0.2, step=0.05, steps=10)), train_set, test_set, cfg)
    student = build("mnist-student")
    train(student, FaithfulDistillation(teacher, PGDConfig(...)), train_set, test_set, cfg)
    export_onnx(student, (784,), "student-fd.onnx")
    check_onnx(student, "student-fd.onnx", input_shape=(784,))
"""

from faithverify.train.architectures import ARCHITECTURES, MLPSpec, build, build_mlp, get_spec
from faithverify.train.attacks import (
    PGDConfig,
    accuracy,
    pgd_cross_entropy,
    pgd_maximise,
    pgd_teacher_student_kl,
    robust_accuracy,
)
from faithverify.train.export import ExportCheckError, check_onnx, export_onnx
from faithverify.train.loop import TrainConfig, TrainResult, train
from faithverify.train.methods import AdversarialTraining, FaithfulDistillation, Method

__all__ = [
    "ARCHITECTURES",
    "AdversarialTraining",
    "ExportCheckError",
    "FaithfulDistillation",
    "MLPSpec",
    "Method",
    "PGDConfig",
    "TrainConfig",
    "TrainResult",
    "accuracy",
    "build",
    "build_mlp",
    "check_onnx",
    "export_onnx",
    "get_spec",
    "pgd_cross_entropy",
    "pgd_maximise",
    "pgd_teacher_student_kl",
    "robust_accuracy",
    "train",
]
