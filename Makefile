# tether: every target makes its own virtualenv; `make test` on a fresh machine is all the set-up.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The stand-in AgentScope Studio (tests/studio, Node): its npm dependencies, when node is
# here. Without node the tests that need it skip and say why.
STUDIO  := tests/studio
NPMSTAMP := $(STUDIO)/node_modules/.installed

.PHONY: all test check demo demo-agentscope bench verify diagram clean

all: check test

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NPMSTAMP): $(STUDIO)/package.json $(STUDIO)/package-lock.json
	@if command -v node >/dev/null && command -v npm >/dev/null; then \
		cd $(STUDIO) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else \
		echo "make: node/npm not found: the stand-in Studio tests will be skipped" >&2; \
	fi

test: $(STAMP) $(NPMSTAMP)
	$(BIN)/pytest -q

check: $(STAMP)
	$(BIN)/ruff check fsm adapters tests
	$(BIN)/mypy

diagram: $(STAMP)
	$(BIN)/tether diagram

demo: $(STAMP)
	$(BIN)/tether demo

demo-agentscope: $(STAMP) $(NPMSTAMP)
	$(BIN)/tether demo agentscope

bench: $(STAMP)
	$(BIN)/python -m tests.bench

verify: $(STAMP)
	@echo "make verify: the spin model of models/ is not built yet (a later issue); nothing was checked." >&2
	@exit 1

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis $(STUDIO)/node_modules
