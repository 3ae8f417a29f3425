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
