# hyperclip_jax: `make demo` trains the embedded default on CPU, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo
# Tests see 8 fake CPU devices (set in tests/conftest.py) and reuse compiled programs across runs.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache

.PHONY: demo test golden bench clean

$(VENV)/.installed: requirements.txt requirements-test.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

.venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/hyperclip-train --config configs/demo.py --workdir $(WORKDIR)

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 -q tests

bench: $(VENV)/.installed
	$(PY) bench/train_step.py

clean:
	rm -rf $(VENV) .jax_cache runs
