# fpt_monai developer commands. `make demo` and `make test` are the two a new user needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo export gpu-check clean

venv: $(STAMP)

# The constraints file pins the torch/torchvision pair known to work here; pyproject.toml keeps ranges.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,export,deploy]"
	touch $(STAMP)

# The suite in parallel processes (at most 4, one per core), each with one torch thread and passive OpenMP waits:
# threads of two processes spinning on the same cores made single steps up to 30x slower (docs/operations.md).
TEST_WORKERS ?= auto
test: venv
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n $(TEST_WORKERS) --maxprocesses 4 --durations 10

lint: venv
	$(VENV)/bin/ruff check fpt_monai tests scripts
	$(VENV)/bin/ruff format --check fpt_monai tests scripts

DEMO_DATA := outputs/demo_data
DEMO_BUNDLE := outputs/demo_bundle
DEMO_CONFIGS := 'bundle/configs/train.yaml','bundle/configs/demo.yaml'

# The main job on offline demo data: generate images, preload, train, evaluate, infer (MLflow-tracked); evaluation
# and inference take every model setting from the trained bundle (models/model_config.json).
# holoscan (the Deploy SDK, imported by `import monai`) asks for a 32 MB stack and MONAI notes at each command that
# bundle configs run code (these are the repository's own): both settled once here (docs/operations.md, "Warnings")
DEMO_ENV := ulimit -s 32768 2>/dev/null; export PYTHONWARNINGS="ignore:parsing config_file:UserWarning";
demo: venv
	$(PY) -m fpt_monai.data.demo $(DEMO_DATA) --per-class 24 --size 512
	$(DEMO_ENV) $(PY) -m monai.bundle run training --config_file "[$(DEMO_CONFIGS)]" --bundle_root $(DEMO_BUNDLE) --tracking mlflow
	$(DEMO_ENV) $(PY) -m monai.bundle run --config_file "['bundle/configs/train.yaml','bundle/configs/evaluate.yaml']" \
		--bundle_root $(DEMO_BUNDLE) --tracking mlflow
	$(DEMO_ENV) $(PY) -m monai.bundle run --config_file bundle/configs/inference.yaml \
		--bundle_root $(DEMO_BUNDLE) --dataset_dir $(DEMO_DATA)/images/test
	$(PY) scripts/run_summary.py $(DEMO_BUNDLE)

# TorchScript (+ heatmap explainer) and ONNX exports of a trained bundle (the demo's by default; BUNDLE=path/to/bundle
# for any other), rebuilt from its record and checked against PyTorch; every setting comes from the bundle itself
BUNDLE ?= $(DEMO_BUNDLE)
export: venv
	test -f $(BUNDLE)/models/model.pt || test "$(BUNDLE)" != "$(DEMO_BUNDLE)" || $(MAKE) demo
	$(PY) scripts/export_bundle.py --bundle-root $(BUNDLE)

# Every speed and memory claim measured on this machine's GPU (under 10 minutes): outputs/check/check_report.{json,md}
gpu-check: venv
	$(DEMO_ENV) $(PY) -m fpt_monai.check --device cuda --out-dir outputs/check

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache outputs
