# smf_sweep — the two commands of the README:
#   make run    # install, then the whole smoke sweep on the embedded world (CPU, minutes)
#   make test   # install, then lint (ruff) and the whole test suite (unit + integration tiers)
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# A CPU build of torch (its wheel lies on the build machines' disk). A bare `torch` requirement would
# pull a multi-GB CUDA build; machines with a GPU keep the torch they have.
TORCH_CPU ?= torch==2.13.0
STAMP := .cache/install-$(shell (cat pyproject.toml cluster/constraints.txt; $(PYTHON) --version) | sha256sum | cut -c1-12)

.PHONY: install run test test-fast bench clean gpu-wheels

# The stamp says this pyproject was installed; the check after it says the editable install is still
# this checkout's (another checkout's `pip install -e` takes the package over: subprocess tests then
# import that one, or none).
install: $(STAMP)
	@cd / && $(PYTHON) -c "import smf_sweep, sys; sys.exit(not smf_sweep.__file__.startswith('$(CURDIR)/'))" 2>/dev/null \
		|| $(PIP) install -q --no-deps -e '$(CURDIR)'
$(STAMP): pyproject.toml cluster/constraints.txt
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_CPU)
	$(PIP) install -q -c cluster/constraints.txt -e '.[dev]'
	mkdir -p .cache && rm -f .cache/install-* && touch $(STAMP)

run: install
	$(PYTHON) -m smf_sweep.tune search_spaces/smoke.yaml

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest

test-fast: install
	$(PYTHON) -m pytest -m "not slow"

bench: install
	$(PYTHON) bench/memory_cpu.py

clean:
	rm -rf .cache runs

# What the one-GPU machine lacks and `python -m smf_sweep.rehearse` needs, as cp312 wheels in .whl/
# (ignored; carried with the device call, bench/README.md): deepspeed (a source tarball: its pure
# Python wheel is built here, ops build JIT there), datasets and the dependencies the H200 image
# lacks (typing-extensions: pydantic-core needs ≥ 4.14.1). Versions as tested here. Also a copy
# of the GPU benchmark's anchor. About 6 MB (a device call carries at most 64 MiB).
GPU_WHEELS ?= datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 hjson==3.1.0 \
	pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 \
	typing-extensions==4.16.0
GPU_SDISTS ?= deepspeed==0.19.8
gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)
	$(PIP) wheel -q --no-deps --no-build-isolation -w .whl $(GPU_SDISTS)
	! ls .whl/*.whl | sed 's,.*/,,; s,-[0-9].*,,' | sort | uniq -d | grep .   # one version of each
	cp ../shared/bench/gpu_anchor.py .whl/ 2>/dev/null || echo "no ../shared/bench/gpu_anchor.py: the benchmark's anchor is not carried"
	du -sh .whl
