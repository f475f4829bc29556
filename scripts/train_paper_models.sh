#!/usr/bin/env bash
# Train every shipped model with the paper's recipes: for each dataset a PGD-trained teacher and four students
# (SD, ARD, RSLAD, FD), each written with its card to $MODELS_DIR/<dataset>/ (default models/). Checkpoints go
# to runs/, so rerunning resumes an interrupted run and only reloads finished ones. On 2 CPU cores: about
# 15 minutes per MNIST or Fashion-MNIST model, hours per CIFAR-10 model (128 epochs).
#
#   FAITHVERIFY_DATA_ROOT=../shared/data THREADS=1 scripts/train_paper_models.sh [dataset ...]
set -euo pipefail
cd "$(dirname "$0")/.."
models_dir="${MODELS_DIR:-models}"
threads="${THREADS:-2}"
datasets=("${@:-mnist fashion-mnist cifar10}")
for dataset in ${datasets[*]}; do
    dir="$models_dir/$dataset"
    mkdir -p "$dir"
    faithverify train-teacher --data "$dataset" -o "$dir/teacher.onnx" --threads "$threads" --quiet
    for method in fd sd ard rslad; do
        faithverify distill --method "$method" --teacher "$dir/teacher.onnx" --data "$dataset" \
            -o "$dir/student-$method.onnx" --threads "$threads" --quiet
    done
done
