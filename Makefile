# Two commands for a newcomer: `make run` and `make test` (see README.md).
# Only Python 3.11+ is needed: both create .venv and install the pinned requirements first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: run test bench chaos lint venv services-stop clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

run: venv
	@bash scripts/run.sh

test: venv
	@bash scripts/test.sh

bench: venv
	@bash scripts/bench.sh

chaos: venv
	@bash scripts/chaos.sh

lint: venv
	@bash scripts/test.sh --lint-only

services-stop: venv
	@$(BIN)/python scripts/localservices.py stop --dir var/local

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
