# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install test demo clean

install: $(VENV)/.installed

# torch first, pinned: its CPU wheel is on disk here, and an unpinned torch would pull a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	touch $@

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) -m ctxjax.demo

clean:
	rm -rf $(VENV) build *.egg-info
