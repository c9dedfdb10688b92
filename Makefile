# The task runner's everyday commands. `make test` is what CI runs (.ci/run calls it).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAM_VENV := .tools/sam
SAM := $(SAM_VENV)/bin/sam
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $$HOME/.pyenv)
PY313 := $(PYENV_ROOT)/versions/3.13.0/bin
SAM_PATH := PATH=$(PY313):$$PATH
CHECKOV_VENV := .tools/checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov
SCHEMATHESIS_VENV := .tools/schemathesis
ENGINE_READY := .taskrunner/engine/.ready

.PHONY: help run reset demo bench venv engine images sam-cli sam-local sam-local-stop sam-local-ready checkov-cli schemathesis-cli test test-fast lint typecheck cfn-lint checkov schemathesis validate build events clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements-dev.txt layers/common/requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps --editable .
	touch $@

# run and demo use what the machine has: with a working container engine they build the offline task images first
# (once; a no-op takes a fraction of a second) and tasks run as containers; without one they say how to get it
# (`make engine images`, as root on Debian) and run tasks as host processes. They never install the engine.
run: venv ## start the whole system locally (API on :3000, AWS endpoint on :4566; state kept in .taskrunner/) until Ctrl-C
	-@$(BIN)/python -m taskrunner_local.images
	$(BIN)/taskrunner local up

reset: venv ## forget what the local stack kept in .taskrunner/ (tasks, records, schedules, logs, archive, ECR images)
	$(BIN)/taskrunner local reset

demo: venv ## one-command tour: a task that succeeds, one that fails, one cancelled; table and logs
	-@$(BIN)/python -m taskrunner_local.images
	$(BIN)/taskrunner local demo

bench: venv ## benchmark the local stack (latency, throughput, cold import) and print a table
	$(BIN)/python -m benchmarks

venv: $(VENV)/.installed ## create the virtual environment with pinned dependencies

# Each tool in its own environment, from its own pinned requirements-<tool>.txt: they pin libraries apart from ours.
.tools/%/.installed: requirements-%.txt
	$(PYTHON) -m venv .tools/$*
	.tools/$*/bin/pip install --quiet --upgrade pip
	.tools/$*/bin/pip install --quiet -r $<
	touch $@

# The container engine runs with the project's own configuration and image store, under .taskrunner/engine/.
$(ENGINE_READY): taskrunner_local/engine.py
	$(PYTHON) -m taskrunner_local.engine

engine: $(ENGINE_READY) ## install Podman (Debian packages, as root) and write the project's engine configuration

images: engine ## build the offline task images (busybox, Python 3.13) into the project's image store, once
	$(PYTHON) -m taskrunner_local.images

sam-cli: $(SAM_VENV)/.installed ## install SAM CLI in its own tool environment (it pins an older boto3)

# The real `sam local` (invoke, start-api, start-lambda): Podman's Docker API on .taskrunner/engine/docker-api/,
# the Lambda base image (pulled from public.ecr.aws where it answers, else built offline from Debian packages and
# awslambdaric) and one `sam build` for this host's architecture (redone only when its inputs change).
sam-local: venv engine sam-cli ## prepare the real `sam local`: Docker API socket, Lambda base image, sam build
	$(BIN)/python -m taskrunner_local.sam_local prepare

sam-local-stop: venv ## stop the Docker API service `make sam-local` started
	$(BIN)/python -m taskrunner_local.sam_local stop

# what `make test` needs of it: the image and the build (tests/e2e/test_sam_local.py runs its own Docker API)
sam-local-ready: venv engine images sam-cli
	$(BIN)/python -m taskrunner_local.sam_local prepare --no-service

checkov-cli: $(CHECKOV_VENV)/.installed ## install checkov in its own tool environment (its dependencies clash with ours)

# schemathesis runs on Python 3.13: its two workers parse source concurrently, which CPython before 3.13 cannot
# do safely (python/cpython#106905: "AST constructor recursion depth mismatch", a Runtime Error of the run)
$(SCHEMATHESIS_VENV)/.installed-py313: requirements-schemathesis.txt
	rm -rf $(SCHEMATHESIS_VENV)
	$(PY313)/python3 -m venv $(SCHEMATHESIS_VENV)
	$(SCHEMATHESIS_VENV)/bin/pip install --quiet --upgrade pip
	$(SCHEMATHESIS_VENV)/bin/pip install --quiet -r $<
	touch $@

schemathesis-cli: $(SCHEMATHESIS_VENV)/.installed-py313 ## install schemathesis in its own tool environment (Python 3.13; it pins its own hypothesis)

test: venv engine images sam-cli sam-local-ready checkov-cli schemathesis-cli ## run lint, type checks and every test (unit, integration, template, packaging)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 --dist loadgroup -p no:cacheprovider --ignore=tests/e2e
	$(BIN)/python -m pytest -p no:cacheprovider tests/e2e  # its own process: the local stack patches moto

test-fast: venv ## unit and integration tests only
	$(BIN)/python -m pytest tests/unit tests/integration -q

lint: venv ## ruff lint and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: venv ## mypy (strict, pydantic plugin) on the layer, the functions and the local stack
	$(BIN)/mypy

cfn-lint: venv ## cfn-lint on template.yaml
	$(BIN)/cfn-lint template.yaml

schemathesis: venv schemathesis-cli ## schemathesis on a fresh local stack's /openapi.json (SCHEMATHESIS_SEED=n replays a run)
	$(BIN)/python -m pytest -p no:cacheprovider tests/e2e/test_schemathesis.py -q -s

checkov: checkov-cli ## checkov security checks on template.yaml (tests/template/test_checkov.py asserts none fails)
	$(CHECKOV) -f template.yaml --framework cloudformation --skip-download --compact --quiet

validate: sam-cli ## sam validate --lint
	$(SAM_PATH) $(SAM) validate --lint

build: sam-cli ## sam build (pass ARCH=x86_64 to build for this host)
	$(SAM_PATH) $(SAM) build $(if $(ARCH),--parameter-overrides Architecture=$(ARCH))

events: venv ## regenerate the sample events in events/
	PYTHONPATH=layers/common $(BIN)/python -m tests.support.sample_events

clean:
	rm -rf .aws-sam .pytest_cache .mypy_cache .ruff_cache
