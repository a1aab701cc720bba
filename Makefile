# smf_sweep — the two commands of the README:
#   make run    # install, then the whole smoke sweep on the embedded world (CPU, minutes)
#   make test   # install, then the whole test suite (unit + integration tiers)
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# A CPU build of torch (its wheel lies on the build machines' disk). A bare `torch` requirement would
# pull a multi-GB CUDA build; machines with a GPU keep the torch they have.
TORCH_CPU ?= torch==2.13.0
STAMP := .cache/install-$(shell (cat pyproject.toml; $(PYTHON) --version) | sha256sum | cut -c1-12)

.PHONY: install run test test-fast bench clean

install: $(STAMP)
$(STAMP): pyproject.toml
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_CPU)
	$(PIP) install -q -e '.[dev]'
	mkdir -p .cache && rm -f .cache/install-* && touch $(STAMP)

run: install
	$(PYTHON) -m smf_sweep.tune search_spaces/smoke.yaml

test: install
	$(PYTHON) -m pytest

test-fast: install
	$(PYTHON) -m pytest -m "not slow"

bench: install
	$(PYTHON) bench/memory_cpu.py

clean:
	rm -rf .cache runs
