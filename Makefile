# The two commands of the README: `make demo` and `make test`.
# TORCH_SPEC picks the torch build; the default is this machine kind's CPU wheel.
# On a CUDA machine: make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.synthpair-installed
CHROMIUM_STAMP := $(VENV)/.chromium-checked

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

# Headless Chromium for the report browser test (pytest -m browser): only for `make test` (the demo does
# not need it); optional, root + apt only, never fatal — without it that one test is skipped.
$(CHROMIUM_STAMP): | $(STAMP)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) \
	  || echo "chromium not installed: browser test will be skipped"; \
	else command -v chromium >/dev/null 2>&1 || echo "chromium not installed (needs root + apt): browser test will be skipped"; fi
	touch $(CHROMIUM_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/synthpair demo --out runs/demo

test: $(STAMP) $(CHROMIUM_STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/sampling.py

clean:
	rm -rf $(VENV) runs
