# Two commands do everything on a fresh machine (see README):
#   make demo   installs into .venv and certifies the shipped MNIST teacher/student pair
#   make test   installs into .venv and runs lint, format check, type check and the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where tests and benchmarks find MNIST / Fashion-MNIST / CIFAR-10 (tests that need them skip without it).
export FAITHVERIFY_DATA_ROOT ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)

.PHONY: install demo test lint typecheck pytest bench

$(BIN)/faithverify: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so nothing later pulls a CUDA build; then auto_LiRPA without its torch<1.13 pin.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps auto-lirpa==0.3
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/faithverify

install: $(BIN)/faithverify

demo: install
	$(BIN)/faithverify certify models/mnist/teacher.onnx models/mnist/student-fd.onnx \
		--eps 0.0154 --eps 0.0308 --eps 0.0616 --out out/demo.jsonl --resume

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest -q

test: lint typecheck pytest
