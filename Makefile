# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create or refresh .venv; re-running is fast when pyproject.toml has not changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU build of torch, pinned and installed first, so nothing pulls the CUDA wheels.
TORCH  := torch==2.13.0

.PHONY: install demo lint test test-fast bench bench-quick bench-learn clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,tdmpc2,video,tensorboard]" $(TORCH)
	@touch $(STAMP)

demo: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash scripts/demo.sh

# ruff (pyproject.toml [tool.ruff]) and mypy ([tool.mypy]); `make test` and `make test-fast` run it first.
lint: $(STAMP)
	$(PY) -m ruff check pwm_core registry pwmctl tests benchmarks && $(PY) -m mypy pwm_core registry

test: lint
	$(PY) -m pytest -q

test-fast: lint
	$(PY) -m pytest -q -m "not slow"

# Every benchmark (CPU, and the GPU too when CUDA is present), then docs/benchmarks.md from benchmarks/results.jsonl.
bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# The same with smoke settings (smallest sizes, 2 timed iterations): checks that everything runs.
bench-quick: $(STAMP)
	$(PY) benchmarks/run_all.py --quick

# The learning benchmark (P1 + P2 through the public commands, ~2 h on 2 cores; resumable), then docs/learning.md.
bench-learn: $(STAMP)
	$(PY) benchmarks/bench_learning.py

clean:
	rm -rf $(VENV) .pytest_cache
