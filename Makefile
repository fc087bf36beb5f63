# tether: every target makes its own virtualenv; `make test` on a fresh machine is all the set-up.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: all test check demo bench verify diagram clean

all: check test

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

check: $(STAMP)
	$(BIN)/ruff check fsm adapters tests models
	$(BIN)/mypy

diagram: $(STAMP)
	$(BIN)/tether diagram

demo: $(STAMP)
	$(BIN)/tether demo

bench: $(STAMP)
	$(BIN)/python -m tests.bench

# Model-check with spin: the default lifecycle (with its seeded bugs and the session
# protocol) and the two example specs; needs `spin` and `gcc` (apt-get install -y spin gcc).
verify: $(STAMP)
	$(BIN)/tether verify fsm.spec:DEFAULT_SPEC fsm.examples.authenticating:AUTH_SPEC \
	    fsm.examples.paused:PAUSED_SPEC

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
