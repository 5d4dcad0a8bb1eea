# glucobridge: `make demo` runs the main job on embedded defaults; `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
KERNELS := $(VENV)/.kernels
LOCK   := requirements.lock

.PHONY: setup static demo test lint typecheck unit bench lock audit clean

# Every Python package comes from the lock, each checked against its SHA-256 (pip --require-hashes); the project
# itself is installed without dependencies and without a build environment (setuptools and wheel are locked too).
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP) $(KERNELS)

# The engine's compiled loops, compiled once here (numba's cache, engine/__pycache__) rather than at the first
# outcome of every process; again whenever the engine's code changes.
$(KERNELS): $(STAMP) $(wildcard engine/*.py)
	$(BIN)/python -c "from engine.kernels import warm; warm()"
	touch $(KERNELS)

# After changing pyproject.toml's dependencies: resolve again, with hashes (needs PyPI). Commit the result.
lock:
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	printf 'setuptools>=68\nwheel\n' | $(BIN)/uv pip compile pyproject.toml - --extra dev --universal \
		--generate-hashes --python-version 3.11 --quiet -o $(LOCK)

# Installed = locked, no unhashed pin, no yanked release, and known vulnerabilities (exit 3: could not be checked).
audit: $(STAMP)
	$(BIN)/python scripts/audit_deps.py

# Third-party browser assets come from registries at build time (plotly's bundled file, htmx from npm): npm is
# needed (Debian: apt-get install npm). We found no PyPI package that installs htmx's own release file.
static: $(STAMP)
	@command -v npm >/dev/null 2>&1 || { echo "make static: npm is needed for htmx (Debian: apt-get install npm)" >&2; exit 2; }
	$(BIN)/python scripts/build_static.py

# Ports, var/ and more: make demo DEMO_ARGS="--app-port 8100 --ehr-port 8181" (python -m app.demo --help). One demo
# per checkout at a time (var/demo.lock); SIGTERM or Ctrl-C stops every process it started. Run directly (no shell
# in between), so make's SIGTERM reaches the demo.
demo: $(STAMP) $(KERNELS) static
	$(BIN)/python -m app.demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check engine bff app tests bench scripts migrations

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite on TEST_WORKERS processes (pytest-xdist; a file's tests and the web tests' demo stack each stay on one
# worker), then the tests marked serial on their own (with GLUCOBRIDGE_PG_RESTART=1 they restart PostgreSQL).
# Both parts always run; either failing fails the target. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
unit: $(STAMP) $(KERNELS) static
	@status=0; \
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup -m "not serial" --durations=25 $(PYTEST_ARGS) || status=$$?; \
	$(BIN)/pytest -m serial --durations=5 $(PYTEST_ARGS) || status=$$((status ? status : $$?)); \
	exit $$status

test: lint typecheck unit

bench: $(STAMP) $(KERNELS)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache .hypothesis
