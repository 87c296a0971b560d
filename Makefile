# perf_analytics: every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NATIVE := $(VENV)/.native

.PHONY: setup browser demo test test-fast lint typecheck bench server-stop clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The native extension (native/, Rust through maturin): the raw BSON decoder and the
# loader's line encoder, rebuilt when any of its sources changes; a few minutes on 2 cores
# the first time. Without it extraction still works, on pymongoarrow, at about 10x the CPU,
# and loading on Arrow at 3.4-4x, so set-up insists on it.
$(NATIVE): $(STAMP) native/Cargo.toml native/Cargo.lock native/pyproject.toml $(wildcard native/src/*.rs)
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) to build native/"; exit 1; }
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pip install --quiet --no-build-isolation ./native
	touch $(NATIVE)

# The embedded server: mongod if on PATH, else FerretDB built once into ~/.cache/perf_analytics.
setup: $(STAMP) $(NATIVE)
	@command -v mongod >/dev/null || $(BIN)/perf-analytics localdb install

demo: setup
	$(BIN)/python pipelines/demo.py

# The report tests open pages in a headless Chromium: Debian's package, installed once
# (as root, or through sudo) when no Chromium is on PATH; a no-op when one is.
BROWSERS := chromium chromium-browser google-chrome
SUDO     := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@for b in $(BROWSERS); do command -v $$b >/dev/null && exit 0; done; \
	  echo "installing Debian's chromium for the report tests"; \
	  $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium

test: setup browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# While working: everything but the tests marked slow (the demo, the notebooks, subprocess
# kills, whole-pipeline runs over generated fleets, reference computations, the report in a
# browser, the documented examples), with the ten slowest named so a new slow test shows.
# CI runs `make test`, the whole suite.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" -n 2 --durations=10 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# Long on FerretDB (an hour or more); each script also takes options for a quick look.
bench: setup
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_extract.py
	$(BIN)/python bench/bench_rollups.py
	$(BIN)/python bench/eval_anomalies.py

server-stop: $(STAMP)
	$(BIN)/perf-analytics localdb stop

clean:
	rm -rf $(VENV) data/localdb data/lake .pytest_cache native/target
