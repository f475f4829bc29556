#!/usr/bin/env bash
# Train every shipped model: for MNIST, Fashion-MNIST and CIFAR-10 a PGD-trained teacher and four students
# (SD, ARD, RSLAD, FD), each written to models/<dataset>/ with its card. Checkpoints go to runs/, so rerunning
# resumes an interrupted run and only reloads finished ones. About 2 hours on 2 CPU cores, most of it CIFAR-10.
#
#   FAITHVERIFY_DATA_ROOT=../shared/data scripts/train_paper_models.sh [dataset ...]
set -euo pipefail
cd "$(dirname "$0")/.."
datasets=("${@:-cifar10 mnist fashion-mnist}")
for dataset in ${datasets[*]}; do
    dir="models/$dataset"
    mkdir -p "$dir"
    faithverify train-teacher --data "$dataset" -o "$dir/teacher.onnx" --quiet
    for method in sd ard rslad fd; do
        faithverify distill --method "$method" --teacher "$dir/teacher.onnx" --data "$dataset" \
            -o "$dir/student-$method.onnx" --quiet
    done
done
