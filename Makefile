# zerotune: `make run` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-all lint format bench transfer finetune-demo sweep lr-find clean

help:  ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)  ## Create .venv (if missing) and install zerotune with dev extras; reruns when pyproject.toml changes

run: $(STAMP)  ## Run the default experiment (digits, offline); pass more with ARGS="NAME --trainer.max_epochs 3"
	$(PY) -m experiments.run $(ARGS)

# Two test processes, one per core: most tests wait on launcher subprocesses or run one thread each.
PYTEST := $(PY) -m pytest -q -n 2 --dist worksteal

test: $(STAMP)  ## Run the test suite (fast tests and the e2e browser tests when a browser is present)
	$(PYTEST) $(ARGS)

test-all: $(STAMP)  ## Run every test, slow ones included
	$(PYTEST) -m "not gpu" $(ARGS)

lint: $(STAMP)  ## ruff check and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)  ## Apply ruff fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(STAMP)  ## Throughput benchmark against plain PyTorch loops (writes docs/benchmark.md)
	$(PY) -m experiments.bench $(ARGS)

transfer: $(STAMP)  ## Offline transfer demo: digits 0-4 -> 5-9 from a few images per class, fine-tuned vs from scratch
	$(PY) -m experiments.transfer $(ARGS)

finetune-demo: $(STAMP)  ## Pre-train a GPT on the standard library, fine-tune it on the held-out email package (full, partial, LoRA vs scratch)
	$(PY) -m experiments.finetune_demo $(ARGS)

sweep: $(STAMP)  ## Hyperparameter study of an experiment (default digits_cnn, 20 TPE trials); e.g. ARGS="digits_cnn --workers 2"
	$(PY) -m experiments.sweep $(ARGS)

lr-find: $(STAMP)  ## Learning-rate range test: suggested rate, plot and the command that trains at it; e.g. ARGS="mnist_cnn"
	$(PY) -m experiments.lr_find $(ARGS)

clean:  ## Remove runs/, caches and the virtual environment
	rm -rf runs .pytest_cache .ruff_cache $(VENV)
