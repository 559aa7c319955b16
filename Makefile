# `make test` and `make demo` work from a fresh clone: they build .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo benchmark clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned: the CPU build on this machine's disk. Unpinned, pip would fetch CUDA wheels.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/sam4em demo --out demo_out

benchmark: $(STAMP)
	$(BIN)/sam4em benchmark --profile quick --out benchmark_out

clean:
	rm -rf $(VENV) demo_out benchmark_out .pytest_cache .ruff_cache
