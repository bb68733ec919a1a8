# The README's two commands: `make demo` and `make test`. Each does all the set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.polyfuse-installed

.PHONY: install browser test lint demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned, so that no dependency can pull another (CUDA) build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium + its WebDriver from Debian, for the tests that render the playground and the report in
# a real browser (selenium drives them). Skipped when both are already on PATH.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		($(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium chromium-driver)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: lint browser
	$(BIN)/pytest -q

demo: install
	bash examples/demo.sh

bench: install
	$(BIN)/python bench/data_pipeline.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
