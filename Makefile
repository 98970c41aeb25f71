# fpt_monai developer commands. `make demo` and `make test` are the two a new user needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo clean

venv: $(STAMP)

# The constraints file pins the torch/torchvision pair known to work here; pyproject.toml keeps ranges.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check fpt_monai tests scripts
	$(VENV)/bin/ruff format --check fpt_monai tests scripts

demo: venv
	@echo "The full offline demo (preload, train, evaluate, infer through the MONAI bundle) lands with the bundle."
	@echo "For now: FPT and FPT+ on the offline ViT-S/14 DINOv2 weights."
	$(PY) scripts/network_demo.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
