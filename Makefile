# `make test` and `make demo` work from a fresh clone: they build .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo benchmark clean gui-deps

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned: the CPU build on this machine's disk. Unpinned, pip would fetch CUDA wheels; on a
# machine whose pip has no CPU wheel at hand (PyPI's Linux torch is the CUDA build), pass
# TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH_INDEX ?=
# sam2 last: Meta's SAM2, the oracle of tests/test_meta_parity.py (test-only; PyPI has only its source),
# built against our torch, without its CUDA extension, and --no-deps (PyPI's torchvision breaks beside
# a CPU torch); what its model code imports is in the `oracle` extra.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e ".[dev,napari,gui-test,oracle]"
	SAM2_BUILD_CUDA=0 $(BIN)/pip install --quiet --no-deps --no-build-isolation sam2==1.1.0
	touch $(STAMP)

install: $(STAMP)

# The napari widget tests need an X screen with OpenGL (Qt's offscreen platform has no GL for napari's
# canvas): pytest-xvfb starts Xvfb, installed here from Debian's packages when missing (as root).
XVFB_PACKAGES := xvfb libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
	libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0 libxcb-cursor0 libxcb-xkb1 \
	libfontconfig1 libdbus-1-3
gui-deps:
	@command -v Xvfb >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq $(XVFB_PACKAGES) >/dev/null; } \
		|| { echo "make: install Xvfb for the GUI tests: apt-get install $(XVFB_PACKAGES)"; exit 1; }

# mypy runs on the second core while pytest runs (many tests use one torch thread), which keeps the
# whole target well inside CI's 10 minutes on 2 cores. Its report follows pytest's, either failing fails
# the target, and an interrupted run stops it too (a background job of sh ignores Ctrl-C).
test: $(STAMP) gui-deps
	$(BIN)/ruff check .
	log=$$(mktemp); $(BIN)/mypy > $$log 2>&1 & mypy=$$!; trap 'kill $$mypy 2>/dev/null; rm -f $$log; exit 130' INT TERM; \
	$(BIN)/python -m pytest -q; tests=$$?; \
	wait $$mypy; types=$$?; cat $$log; rm -f $$log; \
	echo "make test: pytest exit $$tests, mypy exit $$types"; [ $$tests -eq 0 ] && [ $$types -eq 0 ]

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

demo: $(STAMP)
	$(BIN)/sam4em demo --out demo_out

benchmark: $(STAMP)
	$(BIN)/sam4em benchmark --profile quick --out benchmark_out

clean:
	rm -rf $(VENV) demo_out benchmark_out .pytest_cache .ruff_cache
