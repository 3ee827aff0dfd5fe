# faas: build, test and run recipes. `make help` lists them.
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTHON  ?= python3

.DEFAULT_GOAL := help
.PHONY: help install engine runtimes test-deps images stack-images dev up down test unit lint docs bench bench-swarm clean
# One recipe at a time: they share one engine and apt's lock, and stack-images
# packs the prometheus that test-deps installs.
.NOTPARALLEL:

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv and install faas with its dev tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

engine: ## Start (and on Debian, install) the Docker engine if none answers
	scripts/engine.sh

runtimes: engine ## Install crun and gVisor (runsc) and register them with the engine (root)
	scripts/runtimes.sh

test-deps: ## Install the Debian packages the tests use (prometheus, skopeo, registry...; root)
	scripts/test-deps.sh

images: engine ## Build the base and example images (offline when no registry)
	scripts/images.sh

stack-images: engine install images ## Build the compose and Swarm stacks' images (Traefik, manager, nats, socket proxy)
	scripts/compose-images.sh

dev: install images ## Run the platform on this host (faas up, gateway reloads on change)
	$(BIN)/faas up --reload

up: stack-images ## Run the platform in containers (docker compose up -d); prints URL and token
	scripts/compose.sh up

down: ## Stop the containerised platform (functions, network and admin token stay)
	scripts/compose.sh down

test: install test-deps runtimes images stack-images ## Set up everything the suite needs, then run it all
	$(BIN)/pytest

unit: install ## Run only the tests that need no engine
	$(BIN)/pytest tests/unit

lint: install ## ruff and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

docs: install ## Regenerate docs/configuration.md and docs/cli.md from the code
	$(BIN)/python -m faas.docgen

bench: install images ## Measure deploy, invoke, cold-start, scaling and warm-path figures (prints tables)
	bench/deps.sh
	$(BIN)/python bench/run.py

bench-swarm: install test-deps images ## Cold start, warm latency and scale-up on a 3-node Swarm vs Docker (root)
	$(BIN)/python bench/swarm.py

clean: ## Remove the containers, networks, volumes, images and egress rules faas created
	-docker ps -aq --filter label=faas.namespace | xargs -r docker rm -f
	-docker ps -aq --filter label=faas.stack | xargs -r docker rm -f
	-docker network ls -q --filter label=faas.namespace | xargs -r docker network rm
	-docker volume ls -q --filter label=faas.namespace | xargs -r docker volume rm
	-docker images -q --filter label=faas.image | xargs -r docker rmi -f
	-$(BIN)/python -m tests.swarm.cluster down-stale
	-iptables -S 2>/dev/null | grep -o 'comment faas-[a-z0-9-]*' | sort -u | sed 's/comment faas-//' \
		| xargs -r -I{} env FAAS_NAMESPACE={} $(BIN)/python -m faas.egress_guard remove
