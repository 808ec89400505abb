# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench bench-scale clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[demo,test,ray]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/actdb --store demo-store demo

TEST_WORKERS ?= 2  # pytest-xdist workers; each module runs whole in one (tests/conftest.py)
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)  # everything but the end-to-end tests marked slow (subprocesses, Ray, real models)
	$(PYTEST) -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/query.py
	$(BIN)/python bench/classes.py
	$(BIN)/python bench/listing.py
	$(BIN)/python bench/differentiation.py
	$(BIN)/pip install --quiet -e ".[bench]" && $(BIN)/python bench/optimize.py
	$(BIN)/python bench/analytics.py
	$(BIN)/python bench/report.py

bench-scale: $(STAMP)  # ImageNet-size stores (~16 GiB under $$ACTDB_BENCH_CACHE or /tmp/actdb-scale), ~40 min
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) demo-store
