# Two set-up commands: `make demo` and `make test`. Both create/refresh the virtualenv themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MST := $(VENV)/bin/mst
STAMP := $(VENV)/.installed
FMNIST_ROOT ?= /usr/share/datasets/fashion-mnist
DEMO_OUT ?= runs/demo
export PYTHONUNBUFFERED := 1

.PHONY: install data demo test test-fast bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

data:
	@bash scripts/get_fashion_mnist.sh "$(FMNIST_ROOT)"

demo: install data
	@bash scripts/demo.sh "$(DEMO_OUT)" "$(FMNIST_ROOT)"

test: install data
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) benchmarks/step_time.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
