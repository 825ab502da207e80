# Two commands on a fresh machine: `make demo` and `make test`. Everything else is a helper target.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup demo test test-fast kernels data results bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0 torchvision==0.28.0
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $@

kernels: setup
	bash tools/build_kernels.sh

data:
	bash tools/get-data.sh

demo: setup
	$(PY) -m quadexport pipeline models/digits-demo.toml

test: setup data kernels
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

results: setup
	$(PY) tools/experiments.py all --budget small

clean:
	rm -rf build reports runs .pytest_cache
