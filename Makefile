# Two commands on a fresh machine: `make demo` and `make test`. Everything else is a helper target.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup demo test test-fast kernels cpp data results bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0 torchvision==0.28.0
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $@

kernels: setup
	bash tools/build_kernels.sh

# The C++ onnxruntime client (examples/cpp): says why and skips where cmake or a C++ compiler is missing (no
# prerequisite: the script fetches the headers through tools/build_kernels.sh when they are missing).
cpp:
	bash tools/build_cpp_client.sh --if-possible

data:
	bash tools/get-data.sh

demo: setup
	$(PY) -m quadexport pipeline models/digits-demo.toml

test: setup data kernels cpp
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

results: setup
	$(PY) tools/experiments.py all --budget small

clean:
	rm -rf build reports runs .pytest_cache
