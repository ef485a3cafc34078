# Tasklight: `make run` (everything embedded, zero servers) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# The first Python >= 3.12 on the PATH, else under pyenv.
FIND_PYTHON := for candidate in python3.14 python3.13 python3.12 python3 \
	$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.*/bin/python 2>/dev/null | sort -V -r); do \
	  if command -v "$$candidate" >/dev/null 2>&1 && \
	     "$$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	    echo "$$candidate"; break; fi; done

# Test-only addresses: this machine's loopback services, unless set already.
TEST_ENV := \
	DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/tasklight} \
	CELERY_BROKER_URL=$${CELERY_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672//} \
	CHANNEL_LAYER_URL=$${CHANNEL_LAYER_URL:-redis://127.0.0.1:6379/0} \
	SECRET_KEY=test-only-secret-key-not-for-production HTTPS=0 DEBUG=0 \
	TASKLIGHT_QUEUE=$${TASKLIGHT_QUEUE:-tasklight-test} CHANNEL_LAYER_PREFIX=$${CHANNEL_LAYER_PREFIX:-tasklight-test} \
	SIGNUP_RATE_LIMIT=100000/hour

.PHONY: install install-dev run migrate test lint typecheck check screenshot clean

install: $(VENV)/.runtime

install-dev: $(VENV)/.dev

$(VENV)/bin/python:
	@python=$$($(FIND_PYTHON)); \
	if [ -z "$$python" ]; then echo "Tasklight needs Python >= 3.12 (on the PATH or under pyenv)." >&2; exit 1; fi; \
	echo "Creating $(VENV) with $$python"; "$$python" -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip

# The project itself too, editable and offline (setuptools comes from
# requirements.txt): that installs the `tasklight` console command.
$(VENV)/.runtime: requirements.txt pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install -qq --no-deps --no-build-isolation -e .
	@touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@

migrate: install
	$(PY) manage.py migrate_all --noinput

# The ASGI server and one worker together on $(PORT) (a PORT in .env wins,
# as honcho has it); Ctrl-C stops both. tasklight/make_run.py checks the
# port, refuses a second run on the same data directory and DEBUG pages on a
# HOST other than loopback, then migrates and starts honcho.
run: install
	@PORT='$(PORT)' exec $(PY) -m tasklight.make_run

test: install-dev
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install-dev
	$(TEST_ENV) $(VENV)/bin/mypy .

check: lint typecheck test

# Retakes docs/screenshot.png from the browser test.
screenshot: install-dev
	$(TEST_ENV) UPDATE_SCREENSHOT=1 $(PY) -m pytest tests/test_browser.py

# Benchmarks against the bare stack (docs/benchmarks.md), on this machine's
# PostgreSQL, RabbitMQ and Redis; BENCH_ARGS="--quick" for a smoke run.
# --commit-timestamps: the latency is measured from PostgreSQL's commit time,
# which may restart the local cluster (docs/benchmarks.md).
.PHONY: bench
bench: install-dev
	$(PY) -m bench.run --commit-timestamps $(BENCH_ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
