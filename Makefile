# labelloop developer entry points. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch lies on this kind of machine's disk; with a GPU, pip's default (CUDA) build is used.
# Elsewhere, PyPI's Linux torch is the CUDA build: TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 'torch' || echo 'torch==2.13.0')
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: venv ls-venv demo up test test-fast lint bench-labels bench-encode bench-score bench-cycle bench-reconcile bench-refresh bench-ray bench-pool-add clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,bench,ray,onnx]"
	touch $(STAMP)

ls-venv: venv
	$(PY) deploy/ls_local.py ensure-venv

demo: venv ls-venv
	$(PY) deploy/demo.py

up: venv ls-venv
	$(PY) deploy/demo.py --live $(if $(PORT),--port $(PORT))

test: venv ls-venv
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: venv
	LABELLOOP_SKIP_INTEGRATION=1 $(PY) -m pytest -q -m "not integration"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --check-untyped-defs --ignore-missing-imports tests

bench-ray: venv
	$(PY) bench/ray_backend.py

bench-labels: venv
	$(PY) bench/label_efficiency.py

bench-encode: venv
	$(PY) bench/encode.py

bench-score: venv
	$(PY) bench/score.py

bench-cycle: venv ls-venv
	$(PY) bench/cycle.py

bench-pool-add: venv
	$(PY) bench/pool_add.py

bench-reconcile: venv ls-venv
	$(PY) bench/reconcile.py

bench-refresh: venv ls-venv
	$(PY) bench/refresh.py

clean:
	rm -rf $(VENV) .labelloop demo-run bench/out
