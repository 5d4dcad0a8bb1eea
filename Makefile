# glucobridge: `make demo` runs the main job on embedded defaults; `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup static demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Third-party browser assets come from registries at build time (plotly's bundled file, htmx from npm).
static: $(STAMP)
	$(BIN)/python scripts/build_static.py

demo: $(STAMP) static
	$(BIN)/python -m app.demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check engine bff app tests bench scripts migrations

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) static
	$(BIN)/pytest

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache .hypothesis
