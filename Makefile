# The two commands in the README's first section are `make studio` and `make test`.
#
# Everything installs into a virtual environment (the active one, else ./.venv, made on first use) from
# requirements.lock, the tested version of every package. torch is the one package the lock leaves to this
# step: the CPU build of TORCH_VERSION here; GPU users install a CUDA build of the same version into the
# environment first (see README), and it is kept.
VENV ?= $(or $(VIRTUAL_ENV),.venv)
PYTHON = $(VENV)/bin/python
PIP = $(PYTHON) -m pip
LOCK = requirements.lock
TORCH_VERSION ?= 2.13.0

.PHONY: install install-test studio test lint format bench lock lock-check upgrade-check upgrade image

$(PYTHON):
	python3 -m venv $(VENV)

install: $(PYTHON)
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -c $(LOCK) torch==$(TORCH_VERSION)
	$(PIP) install -c $(LOCK) -e .

install-test: $(PYTHON)
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -c $(LOCK) torch==$(TORCH_VERSION)
	$(PIP) install -c $(LOCK) -e ".[test]"
	# The UI tests drive Debian's Chromium (Playwright never downloads a browser here).
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; }

studio: install
	$(VENV)/bin/atelier serve

# Style, the layers' import contracts (pyproject.toml, [tool.importlinter]) and types.
lint:
	$(PYTHON) -m ruff check src tests bench tools
	$(PYTHON) -m ruff format --check src tests bench tools
	$(VENV)/bin/lint-imports
	$(PYTHON) -m mypy src/atelier

test: install-test lint
	$(PYTHON) -m pytest -q

format:
	$(PYTHON) -m ruff format src tests bench tools
	$(PYTHON) -m ruff check --fix src tests bench tools

bench: install-test
	$(PYTHON) bench/engine_vs_diffusers.py
	$(PYTHON) bench/prompt_encoding.py
	$(PYTHON) bench/train_vs_diffusers.py
	$(PYTHON) bench/service_vs_engine.py
	$(PYTHON) bench/studio_lanes.py

# Dependencies (tools/deps.py explains each step).
lock: $(PYTHON)
	$(PIP) install -q -c $(LOCK) uv packaging
	$(PYTHON) tools/deps.py lock

lock-check:
	$(PYTHON) tools/deps.py check

upgrade-check: install-test
	$(PYTHON) tools/deps.py upgrade-check

upgrade: install-test
	$(PYTHON) tools/deps.py upgrade-check --write

# The container image (Containerfile; docs/deploy.md), built with podman or docker, whichever is installed.
# TORCH_VARIANT picks the torch build: cpu, or a CUDA one such as cu128 (`make image TORCH_VARIANT=cu128`).
# IMAGE_FLAGS passes more to the build, e.g. --build-arg BASE_IMAGE=... or podman's --isolation=chroot.
IMAGE ?= atelier
TORCH_VARIANT ?= cpu
IMAGE_TAG ?= $(TORCH_VARIANT)
CONTAINER_ENGINE ?= $(shell command -v podman 2>/dev/null || command -v docker 2>/dev/null)
# Podman writes OCI images by default, which have no HEALTHCHECK; the Docker format keeps it.
PODMAN_FORMAT = $(if $(findstring podman,$(notdir $(CONTAINER_ENGINE))),--format docker)

image:
	@test -n "$(CONTAINER_ENGINE)" || { echo "make image: neither podman nor docker is installed; install one (apt-get install podman) or set CONTAINER_ENGINE" >&2; exit 1; }
	$(CONTAINER_ENGINE) build -f Containerfile --build-arg TORCH_VARIANT=$(TORCH_VARIANT) \
		--build-arg TORCH_VERSION=$(TORCH_VERSION) $(PODMAN_FORMAT) $(IMAGE_FLAGS) -t $(IMAGE):$(IMAGE_TAG) .
