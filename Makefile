# hyperclip_jax: `make demo` trains the embedded default on CPU, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo
# `make test` lints (ruff.toml) first. Tests see 8 fake CPU devices (set in tests/conftest.py) and reuse
# compiled programs across runs.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache

.PHONY: demo test golden bench bench-peer clean tflite test-tflite timm-parity

$(VENV)/.installed: requirements.txt requirements-test.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

.venv: $(VENV)/.installed

# Trains, then exports a static classifier for the demo colour task and classifies a few held-out images.
demo: $(VENV)/.installed
	$(VENV)/bin/hyperclip-train --config configs/demo.py --workdir $(WORKDIR)
	$(VENV)/bin/hyperclip-data demo --task colour --n 6 --size 64 --out $(WORKDIR)/demo_images
	$(VENV)/bin/hyperclip-export --workdir $(WORKDIR) --classes demo:colour --out $(WORKDIR)/export_colour
	$(VENV)/bin/hyperclip-predict --model $(WORKDIR)/export_colour --top-k 3 $(WORKDIR)/demo_images/*.png
	@echo "true classes: $$(cut -f2 $(WORKDIR)/demo_images/captions.txt | tr '\n' ' ')"

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q --durations=40 tests --ignore=tests/tflite

# Reference outputs for tests/models/test_timm_parity.py, from timm in its own venv (torch never enters .venv).
GOLDEN_VENV := .venv-golden
GOLDEN_PINS := torch==2.14.1 torchvision==0.29.1 timm==1.0.29 numpy==2.4.6

$(GOLDEN_VENV)/.installed:
	$(PYTHON) -m venv $(GOLDEN_VENV)
	$(GOLDEN_VENV)/bin/pip install -q $(GOLDEN_PINS)
	touch $@

golden: $(GOLDEN_VENV)/.installed
	$(GOLDEN_VENV)/bin/python tests/models/make_golden.py

# hyperclip-export --format tflite: TensorFlow's converter and the LiteRT interpreter in their own venv (TensorFlow
# never enters .venv); the export runs them there as a subprocess (--tflite-python $(TFLITE_VENV)/bin/python).
# jax, jaxlib and numpy as in requirements.txt: the converter deserializes our jax.export artifact.
TFLITE_VENV := .venv-tflite
TFLITE_PINS := tensorflow-cpu==2.21.0 ai-edge-litert==2.3.0 jax==0.10.2 jaxlib==0.10.2 numpy==2.4.6

$(TFLITE_VENV)/.installed:
	$(PYTHON) -m venv $(TFLITE_VENV)
	$(TFLITE_VENV)/bin/pip install -q $(TFLITE_PINS)
	touch $@

tflite: $(TFLITE_VENV)/.installed

# tests/tflite (left out of `make test`): classifier.tflite in LiteRT against the jax artifact's logits.
test-tflite: $(VENV)/.installed $(TFLITE_VENV)/.installed
	HYPERCLIP_TFLITE_PYTHON=$(CURDIR)/$(TFLITE_VENV)/bin/python $(PY) -m pytest -q tests/tflite
# hyperclip-export --format timm through timm.create_model (tests/export/timm_parity.py): the export side runs
# in .venv, the timm side in .venv-golden as a subprocess (torch never enters .venv).
timm-parity: $(VENV)/.installed $(GOLDEN_VENV)/.installed
	HYPERCLIP_TIMM_PYTHON=$(CURDIR)/$(GOLDEN_VENV)/bin/python $(PY) -m pytest -q -s tests/export/timm_parity.py

# Our train step vs the open_clip-style PyTorch step, interleaved in one run; the torch side runs in its own venv
# as a subprocess (bench/peer_torch.py). open_clip_torch is optional there: the peer falls back to torch + timm.
PEER_VENV := .venv-peer
PEER_PINS := $(GOLDEN_PINS) open_clip_torch==3.3.0

$(PEER_VENV)/.installed:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q $(PEER_PINS)
	touch $@

bench-peer: $(VENV)/.installed $(PEER_VENV)/.installed
	$(PY) bench/vs_open_clip.py --peer-python $(PEER_VENV)/bin/python --plot docs/benchmarks.png

# Does HyperCLIP help? The pre-registered study (docs/results.md): siglip, hyperclip and the token / linear /
# conv controls at two encoder widths, 3 seeds, paired analysis; <= 120 min on 2 cores (estimate). Writes
# $(OUT)/results.md, results.json, results.png, throughput.json; the runs' workdirs go to runs/reproduce.
OUT ?= docs
.PHONY: reproduce
reproduce: $(VENV)/.installed
	REPRODUCE_COMMAND="make reproduce OUT=$(OUT)" $(PY) bench/studies/reproduce.py --out $(OUT) --runs runs/reproduce

bench: $(VENV)/.installed
	$(PY) bench/train_step.py
	$(PY) bench/export.py $(if $(wildcard $(TFLITE_VENV)/.installed),--tflite-python $(TFLITE_VENV)/bin/python)

clean:
	rm -rf $(VENV) .jax_cache runs
