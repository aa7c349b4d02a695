# The two commands a new user runs: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline
export JSONARGPARSE_DEPRECATION_WARNINGS ?= off

.PHONY: install demo test test-fast lint format bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	# one resolver run; torch/torchvision pinned to the pair that lies on this kind of machine's disk
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1" -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/robustrep fit --config experiments/quickstart.yaml

test: $(STAMP)
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -n 2 --durations=10

test-fast: $(STAMP)
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -n 2 -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf runs .pytest_cache
