# Everything runs in .venv/ at the repository root. `make env` is idempotent: the stamp file
# records a finished install and is refreshed only when pyproject.toml or the installer change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.orchestrator-installed
TORCH := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: env demo test test-all lint bench clean-env

env: $(STAMP)

$(STAMP): pyproject.toml orchestrator/install/d2wheel.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m orchestrator.install.d2wheel --python $(BIN)/python --cache $(VENV)/.cache/detectron2
	$(BIN)/python -m pip install -q -e '.[dev,team]'
	touch $(STAMP)

demo: env
	$(BIN)/orchestrator submit jobs/demo.yaml

test: env
	$(BIN)/python -X faulthandler -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: env
	$(BIN)/python -X faulthandler -m pytest $(PYTEST_ARGS)

lint: env
	$(BIN)/ruff check orchestrator tests bench
	$(BIN)/mypy

bench: env
	$(BIN)/python bench/overhead.py

clean-env:
	rm -rf $(VENV)
