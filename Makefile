# `make bench` runs the benchmark on the embedded default data; `make test` runs the tests.
# Both create and fill .venv themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The torch builds that lie on this kind of machine's disk (see the project's README).
ifeq ($(shell uname -m),aarch64)
TORCH_PINS ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
endif

.PHONY: install test lint bench bench-quick tutorials clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e '.[test,tutorials,benchmark]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m captum_paths.benchmark

bench-quick: $(STAMP)
	$(BIN)/python -m captum_paths.benchmark --quick --out benchmark-results-quick --overwrite

tutorials: $(STAMP)
	$(BIN)/python tutorials/run_tutorials.py

clean:
	rm -rf $(VENV) build *.egg-info
