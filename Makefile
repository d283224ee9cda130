# The two commands a newcomer runs: `make demo` and `make test`. Each sets itself up first.
PY := .venv/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= disabled
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-fast bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m saekit demo --out runs/demo

test: setup
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

bench: setup
	.venv/bin/pip install -q -e ".[bench]"
	$(PY) bench/cache_throughput.py
	$(PY) bench/store_throughput.py
	$(PY) bench/train_throughput.py

clean:
	rm -rf runs .pytest_cache
