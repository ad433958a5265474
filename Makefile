# The two commands: `make run` and `make test`. Everything installs into .venv.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,kafka,ray,train

.PHONY: install run test bench bench-quick lint clean gpu-check pipeline browser

install: $(STAMP)

# Re-installs only when pyproject.toml changes (fast when nothing changed).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $(STAMP)

run: install
	OASST_BOOTSTRAP_API_KEY=$${OASST_BOOTSTRAP_API_KEY:-dev-key} \
	OASST_ROOT_TOKEN=$${OASST_ROOT_TOKEN:-dev-root-token} \
	$(BIN)/oasst serve

# Debian's chromium for the browser tests (report and console pages), installed once.
browser:
	.ci/install-chromium

# Lint first: a formatting or complexity slip fails fast, before the 5-minute suite.
test: install browser lint
	$(BIN)/python -m pytest -q

# Every benchmark under bench/; prints a table and writes var/bench/results.json.
bench: install
	$(BIN)/python bench/run.py

# The same on small sizes: about 8 minutes on a 2-core machine.
bench-quick: install
	$(BIN)/python bench/run.py --quick

# vLLM end to end on a CUDA machine (installs the gpu extra first).
gpu-check: install
	@command -v nvidia-smi >/dev/null || { echo "make gpu-check needs a CUDA machine (no nvidia-smi here)"; exit 1; }
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[gpu]"
	$(BIN)/python -m samplers.gpu_check

# The whole loop on tiny local models on CPU: seed, snapshot, sample, rank, snapshot, train.
# Its work stays in $OASST_DATA_DIR/pipeline (var/pipeline).
pipeline: install
	$(BIN)/python -m trainers.pipeline

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) var .pytest_cache
