# The two commands a new user runs: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
export WANDB_MODE ?= offline
export JSONARGPARSE_DEPRECATION_WARNINGS ?= off

.PHONY: install demo test test-fast lint format bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	# one resolver run; torch/torchvision pinned to the pair that lies on this kind of machine's disk
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1" -e .
	touch $(STAMP)

# test tools (pytest, pytest-xdist, ruff) and the launcher extra (submitit, which the tests use)
# only for the targets that need them
$(DEVSTAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,cluster]"
	touch $(DEVSTAMP)

install: $(DEVSTAMP)

demo: $(STAMP)
	$(BIN)/robustrep fit --config experiments/quickstart.yaml

test: $(DEVSTAMP)
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -n 2 --durations=10

test-fast: $(DEVSTAMP)
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -n 2 -m "not slow"

lint: $(DEVSTAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(DEVSTAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf runs .pytest_cache
