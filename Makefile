# Two entry points: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HUB036 := .venv-hub036
OPENAI1 := .venv-openai1
LITELLM := .venv-litellm
S3RVER := tests/s3rver
DATA_DIR ?= ./var/demo
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: demo test lint typecheck contracts pytest services bench bench-vetting bench-ratelimit bench-inference bench-litellm bench-audit bench-fingerprint clean worker beat

demo: $(VENV)/.runtime
	$(BIN)/airlock demo --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR)

test: $(VENV)/.dev $(HUB036)/.installed $(OPENAI1)/.installed $(S3RVER)/node_modules/.installed services lint typecheck contracts pytest

$(VENV)/.runtime: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(VENV)/.runtime $@

# huggingface_hub 0.36 (the line transformers 4.x pins) lives in its own venv for the e2e tests.
$(HUB036)/.installed:
	test -d $(HUB036) || $(PYTHON) -m venv $(HUB036)
	$(HUB036)/bin/pip install --quiet 'huggingface_hub==0.36.*'
	touch $@

# The last 1.x openai SDK (1.109) lives in its own venv for the inference e2e tests; .venv has 3.x.
$(OPENAI1)/.installed:
	test -d $(OPENAI1) || $(PYTHON) -m venv $(OPENAI1)
	$(OPENAI1)/bin/pip install --quiet 'openai==1.109.*'
	touch $@

# s3rver checks presigned signatures and expiry (moto does not): the storage tests run it.
$(S3RVER)/node_modules/.installed: $(S3RVER)/package.json $(S3RVER)/package-lock.json
	@command -v npm >/dev/null || { echo "make test needs Node.js and npm: the storage tests run s3rver, a Node S3 server (install Node 20+)"; exit 1; }
	npm ci --prefix $(S3RVER) --no-audit --no-fund --loglevel=error
	touch $@

services:
	@$(BIN)/python scripts/check_services.py

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy

contracts:
	$(BIN)/lint-imports

# One worker per CPU; a module's tests stay on one worker (module-scoped servers and worlds).
# The schemathesis run goes alone: it makes its tests per API operation at run time, and under
# xdist it collapses into one test that checks no operation at all.
pytest:
	$(BIN)/python -m pytest -q -n auto --dist loadscope --ignore=tests/api/test_openapi.py
	$(BIN)/python -m pytest -q tests/api/test_openapi.py

# A Celery worker and beat with the AIRLOCK_* settings (AIRLOCK_BROKER_URL set). The tests
# start their own worker processes; nothing here runs behind them.
worker: $(VENV)/.runtime
	$(BIN)/airlock worker

beat: $(VENV)/.runtime
	$(BIN)/airlock beat

bench: $(VENV)/.dev
	$(BIN)/python bench/resolve.py

# Vetting of a generated 1.5 GiB safetensors file against sha256sum (about 1 minute, 1.5 GiB
# of temporary disk); the Redis limiter against PING, and its exactness races (needs Redis).
bench-vetting: $(VENV)/.dev
	$(BIN)/python bench/vetting.py

bench-ratelimit: $(VENV)/.dev
	$(BIN)/python bench/ratelimit.py

bench-inference: $(VENV)/.dev $(LITELLM)/.installed
	$(BIN)/python bench/inference.py

# Audit appends by 8 writer processes, chained against plain inserts, and the offline verifier
# (needs PostgreSQL; a throwaway database; about 40 s).
bench-audit: $(VENV)/.dev
	$(BIN)/python bench/audit.py

# Marking a 256 MiB bf16 file against a plain copy, peak memory, and what tracing survives over
# 20 grants (about 30 s; temporary files only).
bench-fingerprint: $(VENV)/.dev
	$(BIN)/python bench/fingerprint.py

# LiteLLM's proxy, the inference benchmark's comparison, in its own venv: never a project
# dependency. 1.108.7 is the newest whose [proxy] extra resolves from PyPI here (the extras
# packages that 1.109+ pin are not published there).
bench-litellm: $(LITELLM)/.installed

$(LITELLM)/.installed:
	test -d $(LITELLM) || $(PYTHON) -m venv $(LITELLM)
	$(LITELLM)/bin/pip install --quiet 'litellm[proxy]==1.108.7'
	touch $@

clean:
	rm -rf $(VENV) $(HUB036) $(OPENAI1) $(LITELLM) var .pytest_cache .mypy_cache .ruff_cache
