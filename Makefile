# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create or refresh .venv; re-running is fast when pyproject.toml has not changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU build of torch, pinned and installed first, so nothing pulls the CUDA wheels.
TORCH  := torch==2.13.0
# For a GPU, a CUDA build from PyTorch's index instead: `make install TORCH_INDEX=https://download.pytorch.org/whl/cu128`
# (the index's last part, cu128, is the build's local version: torch==2.13.0+cu128).
TORCH_INDEX ?=
ifneq ($(strip $(TORCH_INDEX)),)
TORCH  := torch==2.13.0+$(notdir $(patsubst %/,%,$(strip $(TORCH_INDEX))))
TORCH_FROM := --index-url $(strip $(TORCH_INDEX))
endif
TORCH_SPEC := $(VENV)/.torch

.PHONY: FORCE install demo lint test test-fast bench bench-quick bench-learn clean

install: $(STAMP)

$(STAMP): pyproject.toml $(TORCH_SPEC)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_FROM) $(TORCH)
	$(PY) -m pip install -q -e ".[dev,tdmpc2,video,tensorboard,parquet,wandb]" $(TORCH)
	@touch $(STAMP)

# Rewritten only when the torch requirement changes (a TORCH_INDEX given or dropped), which re-runs the install.
$(TORCH_SPEC): FORCE
	@mkdir -p $(VENV)
	@echo '$(TORCH_FROM) $(TORCH)' | cmp -s - $@ || echo '$(TORCH_FROM) $(TORCH)' > $@

FORCE:

demo: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash scripts/demo.sh

# ruff lint and format (pyproject.toml [tool.ruff]) and mypy ([tool.mypy]); `make test` and `make test-fast` run it first.
lint: $(STAMP)
	$(PY) -m ruff check pwm_core registry pwmctl tests benchmarks && $(PY) -m ruff format --check pwm_core registry pwmctl tests benchmarks \
		&& $(PY) -m mypy pwm_core registry

# The suite runs on one pytest worker per core, at most 4 (pytest-xdist; most tests wait on subprocesses, env steps
# and imports, not on matmuls): about 4.5 minutes on 2 cores instead of 10.5 on one. TEST_WORKERS=0 runs it in-process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

test: lint
	$(PYTEST)

test-fast: lint
	$(PYTEST) -m "not slow"

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
