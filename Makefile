# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
VENV_TF := .venv-tf

.PHONY: install install-tf lint test demo clean

install: $(VENV)/.installed

# torch first, pinned: its CPU wheel is on disk here, and an unpinned torch would pull a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	touch $@

# A second venv with TensorFlow (the `tf` extra) for tfds' tf.data path, run by tests/test_data_tfdata.py.
# The main venv stays without TensorFlow, so the rest of the suite reads tfds as a user without it does.
# No torch: ctxjax.data does not need it. pytest: the test file runs there as a script, and imports it.
install-tf: $(VENV_TF)/.installed

$(VENV_TF)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_TF)
	$(VENV_TF)/bin/pip install -q tensorflow-cpu==2.21.0 -e '.[tf]' pytest
	touch $@

# ruff over the whole repository (the rules and line length are in pyproject.toml); CI runs it before the tests.
lint: install
	$(VENV)/bin/ruff check .

test: install install-tf
	$(PY) -m pytest $(PYTEST_ARGS)

DEMO_DIR ?= runs/demo

# Train (or resume) the demo, which evaluates the model at every stage end (passkey, multikey, fixed-target
# perplexity at 1x, 2x and 4x its original length) and exports it; check that the PyTorch export computes the
# same logits at and past the original length; print the before/after-extension table (DEMO_DIR/summary.md).
demo: install
	$(PY) train.py --config configs/demo.py --workdir $(DEMO_DIR)
	$(PY) -m ctxjax.cli check-logits $(DEMO_DIR)/hf --workdir $(DEMO_DIR) --lengths 128,1024 --atol 1e-4
	@echo
	$(PY) -m ctxjax.cli extension-table $(DEMO_DIR)
	@echo
	@echo "demo finished:"
	@echo "  before/after table: $(DEMO_DIR)/summary.md"
	@echo "  Hugging Face model: $(DEMO_DIR)/hf  (transformers.AutoModelForCausalLM.from_pretrained)"
	@echo "  evaluations:        $(DEMO_DIR)/eval/step_N/summary.md (every stage end) and their PNG plots"
	@echo "  metrics:            $(DEMO_DIR)/metrics.jsonl, TensorBoard logs in $(DEMO_DIR)/tensorboard"
	@echo "  checkpoints:        $(DEMO_DIR)/checkpoints (re-running 'make demo' resumes or re-exports)"

clean:
	rm -rf $(VENV) $(VENV_TF) build *.egg-info
