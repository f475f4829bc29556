"""Training of the shipped teacher/student pairs: architectures, PGD, losses, methods, the loop, ONNX export.

Typical use (``faithverify train-teacher`` and ``distill`` do this from a named recipe)::

    teacher = build("mnist-teacher")
    train(teacher, AdversarialTraining(TrainingAttack(eps=0.2, step=0.05, steps=10)), train_set, test_set, cfg)
    student = build("mnist-student")
    train(student, FaithfulDistillation(teacher, TrainingAttack(...)), train_set, test_set, cfg)
    export_onnx(student, (784,), "student-fd.onnx")
    check_onnx(student, "student-fd.onnx", input_shape=(784,))
"""

import importlib
from typing import Any

# Where each public name lives; modules load on first use, so that importing a torch-free part (the recipes, for
# the command line) does not load torch.
_WHERE = {
    "ARCHITECTURES": "architectures", "MLPSpec": "architectures", "build": "architectures",
    "build_mlp": "architectures", "get_spec": "architectures",
    "TrainingAttack": "attacks", "accuracy": "attacks", "pgd_cross_entropy": "attacks", "pgd_maximise": "attacks",
    "pgd_teacher_student_kl": "attacks", "robust_accuracy": "attacks",
    "ExportCheckError": "export", "check_onnx": "export", "export_onnx": "export",
    "TrainConfig": "loop", "TrainResult": "loop", "train": "loop",
    "AdversarialTraining": "methods", "FaithfulDistillation": "methods", "Method": "methods",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'faithverify.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"faithverify.train.{_WHERE[name]}"), name)


__all__ = [
    "ARCHITECTURES",
    "AdversarialTraining",
    "ExportCheckError",
    "FaithfulDistillation",
    "MLPSpec",
    "Method",
    "TrainConfig",
    "TrainResult",
    "TrainingAttack",
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
