# Klieg developer entry points. Everything installs into ./.venv; nothing is needed by hand.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench

$(BIN)/.installed: pyproject.toml sdk/pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e ./sdk -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/klieg demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: setup
	$(BIN)/python bench/overhead.py
