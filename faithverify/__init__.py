"""faithverify: sound verification of teacher/student faithfulness for knowledge distillation."""

__version__ = "0.1.0"
