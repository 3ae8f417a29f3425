# Conveniences; the README's two commands work without make.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-quick lint bench

$(PY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'

demo: $(PY)
	$(VENV)/bin/dpproxy demo

test: $(PY)
	$(PY) -m pytest

test-quick: $(PY)
	$(PY) -m pytest -m "not slow" -x -q

lint: $(PY)
	$(PY) -m ruff check .

# SmartNoise SQL pins an older OpenDP than dpproxy, so it gets its own virtualenv,
# used only by the accuracy benchmark.
SNVENV := .venv-smartnoise

$(SNVENV)/bin/python:
	python3 -m venv $(SNVENV)
	$(SNVENV)/bin/pip install -q smartnoise-sql psycopg2-binary

# Every benchmark, each printing ratios against direct PostgreSQL from the same run.
bench: $(PY) $(SNVENV)/bin/python
	$(PY) -m tests.bench.pushdown
	$(PY) -m tests.bench.throughput
	$(PY) -m tests.bench.latency
	$(PY) -m tests.bench.memory
	$(PY) -m tests.bench.ledger
	$(PY) -m tests.bench.accuracy --smartnoise-python $(SNVENV)/bin/python
