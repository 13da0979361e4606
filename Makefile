# The two commands in the README's first section are `make studio` and `make test`.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
# CPU build of PyTorch first: an unpinned torch pulls several GB of CUDA packages. GPU users install a CUDA
# build of the same version before running make (see README), and pip keeps it.
TORCH_VERSION ?= 2.13.0

.PHONY: install install-test studio test lint format bench

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install -e .

install-test:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install -e ".[test]"
	# The UI tests drive Debian's Chromium (Playwright never downloads a browser here).
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; }

studio: install
	atelier serve

lint:
	$(PYTHON) -m ruff check src tests bench
	$(PYTHON) -m ruff format --check src tests bench

test: install-test lint
	$(PYTHON) -m pytest -q

format:
	$(PYTHON) -m ruff format src tests bench
	$(PYTHON) -m ruff check --fix src tests bench

bench: install-test
	$(PYTHON) bench/engine_vs_diffusers.py
	$(PYTHON) bench/prompt_encoding.py
	$(PYTHON) bench/train_vs_diffusers.py
	$(PYTHON) bench/service_vs_engine.py
