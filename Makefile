# Klieg developer entry points. Everything installs into ./.venv; nothing is needed by hand.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup browser demo test lint bench

# The console's browser tests drive Debian's Chromium (Playwright's own download does not work
# on these machines). Installed once, as root through apt-get; elsewhere those tests skip, saying why.
CHROMIUM := /usr/bin/chromium

$(BIN)/.installed: pyproject.toml sdk/pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e ./sdk -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; } || \
	  echo "chromium: apt-get could not install it; the console's browser tests will skip"; \
	else echo "chromium: not installed (needs root and apt-get); the console's browser tests will skip"; fi

browser: $(CHROMIUM)

demo: setup
	$(BIN)/klieg demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Two test processes (pytest-xdist), each whole test file in one of them: the suite mostly waits
# on real processes (gateways, workers, runners, Redis), so two overlap well on two cores.
TEST_PROCESSES ?= 2

test: lint browser
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist loadfile

bench: setup
	$(BIN)/python bench/overhead.py
