# influencer-pipeline: every target sets up .venv itself (idempotent), so a fresh clone needs only Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export MEDIA_ROOT ?= $(CURDIR)/media
export WORK_DIR ?= $(CURDIR)/work
export OUTBOX_DIR ?= $(CURDIR)/outbox

.PHONY: demo test test-slow test-all dev studio lint format bench snapshot clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0   # the CPU wheel first, so nothing pulls the CUDA build
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: resources/dagster/dagster.local.yaml
	mkdir -p $(DAGSTER_HOME)
	cp $< $@

demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m influencer_pipeline.publishing.ledger
	$(BIN)/python -m influencer_pipeline.demo

# Tests come in two tiers (README.md, "Tests"): `make test` runs everything not marked `slow`, in a few minutes;
# `make test-slow` runs the tests that take minutes each (real `dagster dev`, daemons, celery, n8n, a simulated month);
# `make test-all` runs both in one go; CI (.ci/run) runs `test`, then `test-slow`. WORKERS=auto uses every core.
# --dist loadscope keeps a module's tests on one worker, so its module-scoped server starts once.
WORKERS ?= 2
PYTEST := $(BIN)/pytest -n $(WORKERS) --dist loadscope --durations=15

test: $(STAMP)
	$(PYTEST) -m "not slow"

test-slow: $(STAMP)
	$(PYTEST) -m slow

test-all: $(STAMP)
	$(PYTEST)

dev: export STUDIO_URL ?= http://127.0.0.1:3001/studio
dev: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m influencer_pipeline.publishing.ledger
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

# The studio (every persona's coming posts) beside `make dev`: the token-guarded webserver on port 3001, same
# instance. It only reads; its token (for GraphQL writes) is made up here and never shown.
studio: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	DAGSTER_GRAPHQL_TOKEN=$${DAGSTER_GRAPHQL_TOKEN:-$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))')} \
		$(BIN)/python -m influencer_pipeline.admin.webserver_auth -h 127.0.0.1 -p 3001 -w workspace.yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/comfy_queue.py
	$(BIN)/python bench/video.py
	$(BIN)/python bench/launch.py
	$(BIN)/python bench/due_tick.py

snapshot: $(STAMP)
	UPDATE_SNAPSHOTS=1 $(BIN)/pytest tests/defs/test_definitions.py

clean:
	rm -rf $(VENV) .dagster_home media bench/.cache
